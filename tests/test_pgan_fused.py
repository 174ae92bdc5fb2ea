"""PGAN fused scaling (official ``fused_scale=True``): the default, same parameters, fewer FLOPs; the same
function in the generator, and in the discriminator the official fused block, which differs from the official
unfused one (pooling before or after bias and activation)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.networks.pgan_layers import conv_downscale_kernel, upscale_conv_kernel

pytestmark = pytest.mark.usefixtures("single_thread")

SMALL = dict(resolution=32, channels=1, fmap_base=128, fmap_max=16)


def _pair(fused: bool) -> tuple[PGANGenerator, PGANDiscriminator]:
    gen = PGANGenerator(latent_dim=16, fused_scale=fused, **SMALL)
    return gen, PGANDiscriminator(fused_scale=fused, **SMALL)


def test_fused_is_the_default_and_recorded():
    gen, disc = PGANGenerator(resolution=8), PGANDiscriminator(resolution=8)
    assert gen.init_args["fused_scale"] is True and disc.init_args["fused_scale"] is True
    assert gen.blocks["b8"].fused_scale and disc.blocks["b8"].fused_scale
    assert PGANGenerator(**{**gen.init_args, "fused_scale": False}).blocks["b8"].fused_scale is False


def test_kernels_equal_the_separate_operations_on_random_weights():
    torch.manual_seed(0)
    weight = torch.randn(5, 3, 3, 3)
    x = torch.randn(2, 3, 6, 7)  # not square: orientation errors in either axis show
    up = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    fused_up = F.conv_transpose2d(x, upscale_conv_kernel(weight), stride=2, padding=1)
    torch.testing.assert_close(fused_up, up, rtol=1e-5, atol=1e-5)
    # Without the flip the transposed conv computes another function (the kernel is not symmetric).
    unflipped = F.conv_transpose2d(x, upscale_conv_kernel(weight.flip(-2, -1)), stride=2, padding=1)
    assert not torch.allclose(unflipped, up, atol=1e-3)
    x = torch.randn(2, 3, 12, 14)
    down = F.avg_pool2d(F.conv2d(x, weight, padding=1), 2)
    fused_down = F.conv2d(x, conv_downscale_kernel(weight), stride=2, padding=1)
    torch.testing.assert_close(fused_down, down, rtol=1e-5, atol=1e-5)


def test_kernels_under_autocast_are_summed_in_the_weights_dtype():
    weight = torch.randn(4, 3, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        kernel = conv_downscale_kernel(weight)
    assert kernel.dtype == torch.float32
    torch.testing.assert_close(kernel, conv_downscale_kernel(weight))


def test_same_parameters_and_state_dict_keys_either_way():
    for fused in (True, False):
        gen = PGANGenerator(resolution=256, channels=1, fused_scale=fused)
        disc = PGANDiscriminator(resolution=256, channels=1, fused_scale=fused)
        assert sum(p.numel() for p in gen.parameters()) == 23_039_303
        assert sum(p.numel() for p in disc.parameters()) == 23_047_361
    fused_gen, plain_gen = _pair(True)[0], _pair(False)[0]
    assert list(fused_gen.state_dict()) == list(plain_gen.state_dict())
    # An unfused state dict loads strictly into a fused network (existing checkpoints).
    fused_gen.load_state_dict(plain_gen.state_dict(), strict=True)


@pytest.mark.parametrize("resolution", [8, 16, 32])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
def test_fused_and_unfused_generators_agree_on_outputs_and_gradients(resolution, alpha):
    torch.manual_seed(1)
    fused_g, plain_g = _pair(True)[0], _pair(False)[0]
    plain_g.load_state_dict(fused_g.state_dict())
    with torch.no_grad():  # non-zero biases
        for gen in (fused_g, plain_g):
            for name, p in gen.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))
    z = torch.randn(4, 16)
    projection = torch.randn(4, 1, resolution, resolution)
    results = []
    for gen in (fused_g, plain_g):
        fakes = gen(z, resolution, alpha)
        (fakes * projection).sum().backward()
        results.append((fakes.detach(), {n: p.grad for n, p in gen.named_parameters() if p.grad is not None}))
    (fakes_a, grads_a), (fakes_b, grads_b) = results
    torch.testing.assert_close(fakes_a, fakes_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys() and f"blocks.b{resolution}.conv0.weight" in grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-4, msg=name)


def _lrelu(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, 0.2 * x)


def test_unfused_discriminator_block_is_the_official_d_paper_block():
    """Official ``D_paper`` with ``fused_scale=False``: Conv0, bias, act; Conv1, bias, act; then downscale2d."""
    torch.manual_seed(0)
    disc = PGANDiscriminator(fused_scale=False, **SMALL)
    block = disc.blocks["b16"]
    with torch.no_grad():
        for p in (block.conv0.bias, block.bias):
            p.copy_(torch.linspace(-0.5, 0.5, p.numel()))
    x = torch.randn(2, 16, 16, 16)
    w0, w1 = block.conv0.weight * block.conv0.scale, block.conv1.weight * block.conv1.scale
    h = torch.zeros(2, 16, 16, 16)
    padded = F.pad(x, (1, 1, 1, 1))
    for i in range(3):  # the 3x3 'same' convolutions as sums of shifted products, by hand
        for j in range(3):
            h += torch.einsum("oc,nchw->nohw", w0[:, :, i, j], padded[:, :, i : i + 16, j : j + 16])
    h = _lrelu(h + block.conv0.bias.reshape(1, -1, 1, 1))
    out = torch.zeros(2, w1.shape[0], 16, 16)
    padded = F.pad(h, (1, 1, 1, 1))
    for i in range(3):
        for j in range(3):
            out += torch.einsum("oc,nchw->nohw", w1[:, :, i, j], padded[:, :, i : i + 16, j : j + 16])
    out = _lrelu(out + block.bias.reshape(1, -1, 1, 1))
    expected = out.reshape(2, -1, 8, 2, 8, 2).mean(dim=(3, 5))  # 2x2 box filter, stride 2
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)
    # The fused block pools inside the conv, before bias and activation: another function.
    fused = PGANDiscriminator(fused_scale=True, **SMALL).blocks["b16"]
    fused.load_state_dict(block.state_dict())
    assert (fused(x) - expected).abs().max() > 1e-2


def test_fused_conv0_up_weight_is_the_official_kernel_flipped():
    """The official ``upscale2d_conv2d`` (TensorFlow): weight [k, k, in, out] -> [k, k, out, in], zero-padded,
    summed over its four one-pixel shifts, used by ``conv2d_transpose`` (stride 2, 'SAME') as it is. Ours
    computes conv2d(up2(x), W): an official kernel flipped in both spatial axes is our weight."""
    torch.manual_seed(0)
    official = torch.randn(3, 3, 4, 5)  # [kernel, kernel, in, out]
    x = torch.randn(2, 4, 6, 7)
    w = official.permute(0, 1, 3, 2)  # [k, k, out, in]
    w = F.pad(w.permute(2, 3, 0, 1), (1, 1, 1, 1)).permute(2, 3, 0, 1)  # pad the two kernel axes
    w = w[1:, 1:] + w[:-1, 1:] + w[1:, :-1] + w[:-1, :-1]  # [4, 4, out, in]
    # TensorFlow's conv2d_transpose filter [h, w, out, in] is torch's conv_transpose2d weight (in, out, h, w).
    expected = F.conv_transpose2d(x, w.permute(3, 2, 0, 1), stride=2, padding=1)
    ours = official.permute(3, 2, 0, 1).flip(-2, -1)  # (out, in, 3, 3), flipped
    torch.testing.assert_close(
        F.conv_transpose2d(x, upscale_conv_kernel(ours), stride=2, padding=1), expected
    )
    torch.testing.assert_close(F.conv2d(F.interpolate(x, scale_factor=2.0), ours, padding=1), expected)
    unflipped = official.permute(3, 2, 0, 1)
    assert not torch.allclose(F.conv2d(F.interpolate(x, scale_factor=2.0), unflipped, padding=1), expected)


def _conv_flops(net: torch.nn.Module, *args) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(*args)
    # Convolutions only: building the 4x4 kernels is a small matmul of the weights, not of the images.
    counts = counter.get_flop_counts()["Global"]
    return sum(v for op, v in counts.items() if "conv" in str(op))


def test_fused_saves_20_of_36_multiply_adds_in_every_scaled_conv():
    fused_g, fused_d = _pair(True)
    plain_g, plain_d = _pair(False)
    z, x = torch.randn(2, 16), torch.randn(2, 1, 32, 32)
    saved_g = saved_d = 0
    for r in (8, 16, 32):
        cout_g, cin_g = plain_g.blocks[f"b{r}"].conv0.weight.shape[:2]
        cout_d, cin_d = plain_d.blocks[f"b{r}"].conv1.weight.shape[:2]
        # Per channel pair: 3x3 on the r x r grid (9 r^2 multiply-adds) versus 4x4 on the r/2 grid (4 r^2);
        # 2 images, 2 FLOPs per multiply-add.
        saved_g += 2 * 2 * cin_g * cout_g * (9 * r * r - 4 * r * r)
        saved_d += 2 * 2 * cin_d * cout_d * (9 * r * r - 4 * r * r)
    assert _conv_flops(plain_g, z) - _conv_flops(fused_g, z) == saved_g
    assert _conv_flops(plain_d, x) - _conv_flops(fused_d, x) == saved_d
