"""PGAN fused scaling (official ``fused_scale=True``): the default, same parameters, same function, fewer FLOPs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from synthseg.losses.wgan import WGANGPLoss
from synthseg.networks.pgan import (
    PGANDiscriminator,
    PGANGenerator,
    conv_downscale_kernel,
    upscale_conv_kernel,
)

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
def test_fused_and_unfused_agree_on_outputs_and_gradients(resolution, alpha):
    torch.manual_seed(1)
    fused_g, fused_d = _pair(True)
    plain_g, plain_d = _pair(False)
    plain_g.load_state_dict(fused_g.state_dict())
    plain_d.load_state_dict(fused_d.state_dict())
    # Non-zero biases, so their place (before or after the pooling) matters.
    with torch.no_grad():
        for net in (fused_g, fused_d, plain_g, plain_d):
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))
    z = torch.randn(4, 16)
    reals = torch.randn(4, 1, resolution, resolution)
    mixing = torch.rand(4, 1, 1, 1)
    results = []
    # One critic input for both critics: the two generators' fakes differ in rounding (~1e-6), and the
    # penalty's input gradient jumps where a LeakyReLU input crosses 0, so inputs that differ only in rounding
    # can differ in the penalty by percent (seen on an AVX2 CPU: 5.04 against 4.97).
    shared_fakes = fused_g(z, resolution, alpha).detach()
    for gen, disc in ((fused_g, fused_d), (plain_g, plain_d)):
        fakes = gen(z, resolution, alpha)
        # The critic's loss with its gradient penalty (double backward) and the generator's loss.
        critic = lambda x, d=disc: d(x, alpha)  # noqa: E731
        d_loss = WGANGPLoss().discriminator(critic, reals, shared_fakes, mixing)["loss"]
        g_loss = -disc(fakes, alpha).mean()
        (d_loss + g_loss).backward()
        grads = {f"g.{n}": p.grad for n, p in gen.named_parameters() if p.grad is not None}
        grads |= {f"d.{n}": p.grad for n, p in disc.named_parameters() if p.grad is not None}
        results.append((fakes.detach(), d_loss.detach(), grads))
    (fakes_a, loss_a, grads_a), (fakes_b, loss_b, grads_b) = results
    torch.testing.assert_close(fakes_a, fakes_b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-4, atol=1e-5)
    assert grads_a.keys() == grads_b.keys()
    assert f"g.blocks.b{resolution}.conv0.weight" in grads_a
    assert f"d.blocks.b{resolution}.conv1.weight" in grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-4, msg=name)


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
