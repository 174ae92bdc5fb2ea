"""The faster faithful PGAN and SPADE steps compute what the previous implementations computed.

Each new path is compared with a reference written here, as the code stood before (0.2.0): PGAN's critic with
``F.conv2d`` on ``weight * scale`` and the fused 4x4 kernels built from the scaled weights, SPADE's layers
each resizing the label map and running their own shared, gamma and beta convs, spectral norm dividing the
weight. Outputs, the WGAN-GP loss (its double backward included), every gradient and the updated buffers
agree to float32 rounding; parameters and state-dict keys are the same.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.spectral_norm import SpectralNorm

from synthseg.losses.wgan import WGANGPLoss
from synthseg.networks import conv_grad, pgan_layers
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.networks.pgan_layers import pixel_norm
from synthseg.networks.spade import MultiscaleDiscriminator, SPADEGenerator
from synthseg.networks.spade_layers import SPADE, SPADEResnetBlock, SpectralConv2d

pytestmark = pytest.mark.usefixtures("single_thread")


def assert_near(
    actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "", floor: float = 1e-12
) -> None:
    """Equal to rounding as a whole: ||actual - expected|| <= rel * ||expected|| + floor (sums of many terms in
    another order differ elementwise by more where an element is small)."""
    error, scale = (actual - expected).norm().item(), expected.norm().item()
    assert error <= rel * scale + floor, f"{name}: relative error {error / max(scale, 1e-30):.2e} > {rel}"


# ------------------------------------------------------------------------------ conv_grad.conv2d
@pytest.mark.parametrize(
    "stride, padding, kernel, size", [(1, 1, 3, 7), (2, 1, 4, 8), (2, 1, 4, 9), (1, 0, 1, 5)]
)
def test_conv2d_matches_torch_to_the_second_order(stride, padding, kernel, size):
    torch.manual_seed(0)
    x = torch.randn(3, 4, size, size + 1, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, kernel, kernel, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, dtype=torch.float64, requires_grad=True)

    def conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return conv_grad.conv2d(x, w, b, stride, padding)

    assert torch.autograd.gradcheck(conv, (x, w, b))
    assert torch.autograd.gradgradcheck(conv, (x, w, b))
    torch.testing.assert_close(conv(x, w, b), F.conv2d(x, w, b, stride, padding))


def test_no_weight_gradients_gives_the_input_gradient_alone():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    reference = torch.autograd.grad(F.conv2d(x, w, b, 1, 1).square().sum(), x)[0]
    calls = []
    real_apply = conv_grad._WeightGrad.apply
    conv_grad._WeightGrad.apply = lambda *a: calls.append(1) or real_apply(*a)  # type: ignore[method-assign]
    try:
        with conv_grad.no_weight_gradients():
            grad = torch.autograd.grad(conv_grad.conv2d(x, w, b, 1, 1).square().sum(), x)[0]
        assert not calls
        torch.autograd.grad(conv_grad.conv2d(x, w, b, 1, 1).square().sum(), (x, w))
        assert calls  # outside the context the weight gradient is computed again
    finally:
        conv_grad._WeightGrad.apply = real_apply  # type: ignore[method-assign]
    torch.testing.assert_close(grad, reference)


# ------------------------------------------------------------------------------------- PGAN
SMALL = dict(resolution=32, channels=1, fmap_base=128, fmap_max=16)


def _conv(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, layer.weight * layer.scale, layer.bias, padding=layer.padding)


def _linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight * layer.scale, layer.bias)


def reference_critic(d: PGANDiscriminator, x: torch.Tensor, alpha: float) -> torch.Tensor:
    """0.2.0's fused critic: weights scaled before every conv; the 4x4 kernel is conv 3x3 then 2x2 pooling."""

    def from_rgb(h: torch.Tensor, r: int) -> torch.Tensor:
        return F.leaky_relu(_conv(d.from_rgb[f"b{r}"], h), 0.2)

    def block(r: int, h: torch.Tensor) -> torch.Tensor:
        b = d.blocks[f"b{r}"]
        h = F.leaky_relu(_conv(b.conv0, h), 0.2)
        h = F.avg_pool2d(F.conv2d(h, b.conv1.weight * b.conv1.scale, padding=1), 2)
        return F.leaky_relu(h + b.bias.reshape(1, -1, 1, 1), 0.2)

    r = x.shape[-1]
    h = from_rgb(x, r)
    h = block(r, h)
    if alpha < 1:
        h = from_rgb(F.avg_pool2d(x, 2), r // 2) * (1 - alpha) + h * alpha
    for res in reversed(d.resolutions[1:]):
        if res < r:
            h = block(res, h)
    out = d.blocks["b4"]
    h = F.leaky_relu(_conv(out.conv, out.mbstd(h)), 0.2)
    h = F.leaky_relu(_linear(out.dense0, h.flatten(1)), 0.2)
    return _linear(out.dense1, h)


def reference_generator(g: PGANGenerator, z: torch.Tensor, r: int) -> torch.Tensor:
    """The generator's function written with separate operations (nearest x2, then conv 3x3)."""
    first = g.blocks["b4"]
    x = F.linear(pixel_norm(z), first.dense.weight * first.dense.scale).reshape(-1, first.channels, 4, 4)
    x = pixel_norm(F.leaky_relu(x + first.bias.reshape(1, -1, 1, 1), 0.2))
    x = pixel_norm(F.leaky_relu(_conv(first.conv, x), 0.2))
    for res in g.resolutions[1:]:
        if res > r:
            break
        b = g.blocks[f"b{res}"]
        x = pixel_norm(F.leaky_relu(_conv(b.conv0, F.interpolate(x, scale_factor=2.0)), 0.2))
        x = pixel_norm(F.leaky_relu(_conv(b.conv1, x), 0.2))
    return _conv(g.to_rgb[f"b{r}"], x)


def _with_biases(*nets: nn.Module) -> None:
    with torch.no_grad():
        for net in nets:
            for name, p in net.named_parameters():
                if name.endswith("bias"):
                    p.copy_(torch.linspace(-0.5, 0.5, p.numel()).reshape(p.shape))


@pytest.mark.parametrize("resolution, alpha", [(8, 1.0), (16, 0.4), (32, 1.0)])
@pytest.mark.parametrize("conv_grad_everywhere", [False, True])
def test_pgan_critic_step_equals_the_previous_implementation(
    resolution, alpha, conv_grad_everywhere, monkeypatch: pytest.MonkeyPatch
):
    if conv_grad_everywhere:  # by default only maps of 32x32 and more take conv_grad's backward
        monkeypatch.setattr(pgan_layers, "CONV_GRAD_MIN_PIXELS", 0)
    torch.manual_seed(1)
    d = PGANDiscriminator(**SMALL)
    g = PGANGenerator(latent_dim=16, **SMALL)
    _with_biases(d, g)
    reference_d = copy.deepcopy(d)
    reals = torch.randn(4, 1, resolution, resolution)
    fakes = torch.randn(4, 1, resolution, resolution)
    mixing = torch.rand(4, 1, 1, 1)
    results = []
    for critic, net in (
        (lambda x: d(x, alpha), d),
        (lambda x: reference_critic(reference_d, x, alpha), reference_d),
    ):
        terms = WGANGPLoss().discriminator(critic, reals, fakes, mixing)
        terms["loss"].backward()
        results.append((terms, {n: p.grad for n, p in net.named_parameters() if p.grad is not None}))
    (new, new_grads), (old, old_grads) = results
    for key in ("loss", "D_real", "D_fake", "gradient_penalty", "grad_norm"):
        torch.testing.assert_close(new[key], old[key], rtol=1e-4, atol=1e-5, msg=key)
    assert new_grads.keys() == old_grads.keys() and f"blocks.b{resolution}.conv1.weight" in new_grads
    for name in new_grads:
        assert_near(new_grads[name], old_grads[name], 1e-4, name)
    # The generator's step: its output, its backward, and the gradients through the frozen critic (both
    # critics on one generator output: a LeakyReLU input that rounding moves across 0 changes a gradient).
    z = torch.randn(4, 16)
    out = g(z, resolution)
    expected = reference_generator(g, z, resolution)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    d.requires_grad_(False)
    reference_d.requires_grad_(False)
    grads = []
    for loss in (
        (out * reals).sum(),
        (expected * reals).sum(),
        -d(out, alpha).mean(),
        -reference_critic(reference_d, out, alpha).mean(),
    ):
        g.zero_grad()
        loss.backward(retain_graph=True)
        grads.append({n: p.grad.clone() for n, p in g.named_parameters() if p.grad is not None})
    for new_grads, old_grads in (grads[:2], grads[2:]):
        assert new_grads.keys() == old_grads.keys()
        for name, grad in new_grads.items():
            assert_near(grad, old_grads[name], 1e-5, name)


def test_pgan_parameters_and_state_dict_keys_are_unchanged():
    d, g = PGANDiscriminator(resolution=16), PGANGenerator(resolution=16)
    assert [k for k in d.state_dict() if k.startswith("blocks.b16")] == [
        "blocks.b16.bias",
        "blocks.b16.conv0.weight",
        "blocks.b16.conv0.bias",
        "blocks.b16.conv1.weight",
    ]
    assert [k for k in g.state_dict() if k.startswith("blocks.b16")] == [
        "blocks.b16.conv0.weight",
        "blocks.b16.conv0.bias",
        "blocks.b16.conv1.weight",
        "blocks.b16.conv1.bias",
    ]


# ------------------------------------------------------------------------------------- SPADE
def _torch_spectral_norm(net: nn.Module) -> nn.Module:
    """A copy whose spectral-norm convs are plain ``nn.Conv2d`` with torch's own hook (weight / sigma)."""
    net = copy.deepcopy(net)
    for module in net.modules():
        if isinstance(module, SpectralConv2d):
            module.__class__ = nn.Conv2d
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    hook.__class__ = SpectralNorm
    return net


def reference_spade(norm: SPADE, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    normalized = norm.param_free_norm(x)
    hidden = norm.mlp_shared(F.interpolate(label, size=x.shape[2:], mode="nearest"))
    return normalized * (1 + norm.mlp_gamma(hidden)) + norm.mlp_beta(hidden)


def reference_block(block: SPADEResnetBlock, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    shortcut = block.conv_s(reference_spade(block.norm_s, x, label)) if block.learned_shortcut else x
    dx = block.conv_0(F.leaky_relu(reference_spade(block.norm_0, x, label), 0.2))
    dx = block.conv_1(F.leaky_relu(reference_spade(block.norm_1, dx, label), 0.2))
    return shortcut + dx


def reference_generator_spade(gen: SPADEGenerator, label: torch.Tensor) -> torch.Tensor:
    up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
    x = gen.fc(F.interpolate(label, size=(gen.start_size, gen.start_size), mode="nearest"))
    x = up(reference_block(gen.head_0, x, label))
    x = reference_block(gen.G_middle_0, x, label)
    x = up(reference_block(gen.G_middle_1, x, label))
    for name in ("up_0", "up_1", "up_2"):
        x = up(reference_block(getattr(gen, name), x, label))
    x = reference_block(gen.up_3, x, label)
    return torch.tanh(gen.conv_img(F.leaky_relu(x, 0.2)))


def _one_hot(batch: int, size: int, classes: int = 7) -> torch.Tensor:
    labels = torch.randint(0, classes, (batch, size, size), generator=torch.Generator().manual_seed(3))
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("train", [True, False])
def test_spade_generator_equals_the_previous_implementation(train):
    torch.manual_seed(0)
    # ngf 16: the 256-channel convs at 2x2 and 4x4 have outputs smaller than their weights (sigma on the output).
    gen = SPADEGenerator(label_nc=7, output_nc=1, ngf=16, image_size=64, hidden_channels=16).train(train)
    with torch.no_grad():  # buffers that are not at their initial values
        for name, buffer in gen.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.linspace(-0.1, 0.1, buffer.numel()))
    gen64, reference64 = copy.deepcopy(gen).double(), _torch_spectral_norm(gen).double()
    reference = _torch_spectral_norm(gen)
    label = _one_hot(2, 64)
    out = gen(label)
    torch.testing.assert_close(out, reference_generator_spade(reference, label), rtol=1e-4, atol=1e-5)
    assert gen.head_0.conv_0.weight_sigma is not None  # the output-side division was taken
    # Gradients in float64: batch norm over 2x2 maps and conv biases before it (zero gradient, all rounding)
    # leave float32 no digits to compare; in float64 the two agree to 1e-9.
    gen, reference, label = gen64, reference64, label.double()
    out, expected = gen(label), reference_generator_spade(reference, label)
    projection = torch.randn_like(out)
    (out * projection).sum().backward()
    (expected * projection).sum().backward()
    for name, p in gen.named_parameters():
        assert_near(p.grad, reference.get_parameter(name).grad, 1e-9, name, floor=1e-10)
    ours, theirs = gen.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs)
    for key in ours:  # running statistics, power-iteration vectors, weights
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-9, atol=1e-12, msg=key)


def test_spade_discriminator_equals_torch_spectral_norm():
    torch.manual_seed(0)
    disc = MultiscaleDiscriminator(label_nc=7, output_nc=1, ndf=8)
    reference = _torch_spectral_norm(disc)
    x = torch.randn(2, 8, 64, 64)
    for ours, theirs in zip(disc(x), reference(x), strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_norm_s_keeps_its_own_statistics_when_they_were_set_apart():
    torch.manual_seed(0)
    block = SPADEResnetBlock(8, 4, label_nc=3, hidden_channels=4)
    with torch.no_grad():
        block.norm_s.param_free_norm.running_mean.fill_(0.5)  # no longer norm_0's
    reference = _torch_spectral_norm(block)
    x, label = torch.randn(2, 8, 6, 6), _one_hot(2, 6, classes=3)
    block.eval(), reference.eval()
    torch.testing.assert_close(block(x, label), reference_block(reference, x, label), rtol=1e-4, atol=1e-5)
    block.train(), reference.train()
    torch.testing.assert_close(block(x, label), reference_block(reference, x, label), rtol=1e-4, atol=1e-5)
    for key, value in block.state_dict().items():
        torch.testing.assert_close(value, reference.state_dict()[key], msg=key)
    assert not torch.equal(
        block.norm_s.param_free_norm.running_mean, block.norm_0.param_free_norm.running_mean
    )


def test_spade_parameters_and_state_dict_keys_are_unchanged():
    block = SPADEResnetBlock(8, 4, label_nc=3, hidden_channels=4)
    assert sum(p.numel() for p in block.parameters()) == (
        8 * 4 * 9
        + 4
        + 4 * 4 * 9
        + 4
        + 8 * 4  # conv_0, conv_1, conv_s (no bias)
        + 3 * (3 * 4 * 9 + 4)  # three shared convs
        + 2 * (4 * 8 * 9 + 8)
        + 2 * (4 * 4 * 9 + 4)
        + 2 * (4 * 8 * 9 + 8)  # gamma/beta of norm_0, norm_1, norm_s
    )
    keys = list(block.state_dict())
    for key in (
        "conv_0.weight_orig",
        "conv_0.weight_u",
        "conv_0.weight_v",
        "norm_0.mlp_shared.0.weight",
        "norm_0.mlp_gamma.weight",
        "norm_0.mlp_beta.bias",
        "norm_s.param_free_norm.running_var",
    ):
        assert key in keys
    assert not any("sigma" in key for key in keys)
