"""PGAN generator and discriminator: official parameter counts, shapes at every stage, fade-in, layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.networks.pgan_layers import (
    EqualizedConv2d,
    EqualizedLinear,
    MinibatchStdDev,
    num_features,
    pixel_norm,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def test_official_parameter_counts_at_256_one_channel():
    assert count(PGANGenerator(resolution=256, channels=1)) == 23_039_303
    assert count(PGANDiscriminator(resolution=256, channels=1)) == 23_047_361


def test_num_features_follows_official_formula():
    # nf(s) = min(8192 / 2^s, 512): 512 up to stage 4, then halving.
    assert [num_features(s) for s in range(1, 8)] == [512, 512, 512, 512, 256, 128, 64]


def _hand_count_generator(resolution: int, channels: int, latent: int, base: int, fmax: int) -> int:
    def nf(s: int) -> int:
        return max(1, min(base // 2**s, fmax))

    total = latent * nf(1) * 16 + nf(1)  # dense (no bias) + per-channel bias
    total += nf(1) * nf(1) * 9 + nf(1)  # 4x4 conv
    total += nf(1) * channels + channels  # toRGB 4
    for r in range(3, int(math.log2(resolution)) + 1):
        cin, cout = nf(r - 2), nf(r - 1)
        total += cin * cout * 9 + cout + cout * cout * 9 + cout + cout * channels + channels
    return total


def _hand_count_discriminator(resolution: int, channels: int, base: int, fmax: int) -> int:
    def nf(s: int) -> int:
        return max(1, min(base // 2**s, fmax))

    total = channels * nf(1) + nf(1)  # fromRGB 4
    total += (nf(1) + 1) * nf(1) * 9 + nf(1)  # conv after minibatch stddev
    total += nf(1) * 16 * nf(0) + nf(0) + nf(0) + 1  # dense0, dense1
    for r in range(3, int(math.log2(resolution)) + 1):
        c, cout = nf(r - 1), nf(r - 2)
        total += channels * c + c + c * c * 9 + c + c * cout * 9 + cout
    return total


@pytest.mark.parametrize(
    "resolution, channels, latent, base, fmax",
    [(256, 1, 512, 8192, 512), (64, 3, 32, 256, 32), (8, 2, 16, 64, 16), (1024, 1, 512, 8192, 512)],
)
def test_parameter_counts_match_hand_count(resolution, channels, latent, base, fmax):
    gen = PGANGenerator(resolution, channels, latent, base, fmax)
    disc = PGANDiscriminator(resolution, channels, base, fmax)
    assert count(gen) == _hand_count_generator(resolution, channels, latent, base, fmax)
    assert count(disc) == _hand_count_discriminator(resolution, channels, base, fmax)


@pytest.fixture(scope="module")
def small_pair() -> tuple[PGANGenerator, PGANDiscriminator]:
    torch.manual_seed(0)
    return (
        PGANGenerator(resolution=64, channels=1, latent_dim=32, fmap_base=256, fmap_max=32),
        PGANDiscriminator(resolution=64, channels=1, fmap_base=256, fmap_max=32),
    )


@pytest.mark.parametrize("resolution", [4, 8, 16, 32, 64])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_shapes_at_every_stage_and_alpha(small_pair, resolution, alpha):
    gen, disc = small_pair
    z = torch.randn(8, 32)
    with torch.no_grad():
        images = gen(z, resolution, alpha)
        scores = disc(images, alpha)
    assert images.shape == (8, 1, resolution, resolution)
    assert scores.shape == (8, 1)
    assert torch.isfinite(images).all() and torch.isfinite(scores).all()


def test_default_resolution_is_the_target(small_pair):
    gen, _ = small_pair
    assert gen(torch.randn(2, 32)).shape == (2, 1, 64, 64)


def test_generator_fade_in_blends_upsampled_previous_stage(small_pair):
    gen, _ = small_pair
    z = torch.randn(4, 32)
    with torch.no_grad():
        low = gen(z, 16, 1.0)
        high = gen(z, 32, 1.0)
        half = gen(z, 32, 0.25)
        start = gen(z, 32, 0.0)
    upsampled = low.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(start, upsampled)
    torch.testing.assert_close(half, upsampled + 0.25 * (high - upsampled))


def test_discriminator_fade_in_at_alpha_zero_equals_previous_stage_on_pooled_input(small_pair):
    _, disc = small_pair
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        faded = disc(x, 0.0)
        low = disc(torch.nn.functional.avg_pool2d(x, 2), 1.0)
        full = disc(x, 1.0)
    torch.testing.assert_close(faded, low)
    assert not torch.allclose(full, low)


def test_generator_output_depends_on_latent_and_backpropagates(small_pair):
    gen, disc = small_pair
    z = torch.randn(4, 32)
    images = gen(z, 8, 0.5)
    assert not torch.allclose(images[0], images[1])
    disc(images, 0.5).sum().backward()
    assert gen.blocks["b8"].conv0.weight.grad is not None
    assert gen.blocks["b16"].conv0.weight.grad is None  # stages above the current one are unused
    gen.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: PGANGenerator(resolution=4),
        lambda: PGANGenerator(resolution=96),
        lambda: PGANGenerator(resolution=2048),
        lambda: PGANGenerator(channels=0),
        lambda: PGANDiscriminator(resolution=100),
        lambda: PGANDiscriminator(mbstd_group_size=0),
        lambda: EqualizedConv2d(1, 1, 2),
        lambda: EqualizedLinear(0, 1),
        lambda: MinibatchStdDev(0),
    ],
)
def test_impossible_arguments_raise(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize(
    "call",
    [
        lambda g, d: g(torch.randn(2, 32), 128),  # above the target
        lambda g, d: g(torch.randn(2, 32), 12),  # not a stage
        lambda g, d: g(torch.randn(2, 32), 8, 1.5),  # alpha out of range
        lambda g, d: g(torch.randn(2, 31)),  # wrong latent size
        lambda g, d: d(torch.randn(2, 1, 12, 12)),
        lambda g, d: d(torch.randn(2, 2, 8, 8)),
        lambda g, d: d(torch.randn(2, 1, 8, 8), -0.1),
    ],
)
def test_bad_calls_raise(small_pair, call):
    with pytest.raises(ValueError):
        call(*small_pair)


def test_pixel_norm_gives_unit_mean_square():
    x = torch.randn(3, 16, 4, 4) * 7
    y = pixel_norm(x)
    torch.testing.assert_close(y.square().mean(dim=1), torch.ones(3, 4, 4), rtol=1e-4, atol=1e-4)


def test_equalized_layers_scale_weights_at_run_time():
    conv = EqualizedConv2d(4, 2, 3)
    assert conv.scale == pytest.approx(math.sqrt(2) / math.sqrt(4 * 9))
    x = torch.randn(1, 4, 5, 5)
    expected = torch.nn.functional.conv2d(x, conv.weight * conv.scale, conv.bias, padding=1)
    torch.testing.assert_close(conv(x), expected)
    dense = EqualizedLinear(8, 3, gain=1.0)
    assert dense.scale == pytest.approx(1 / math.sqrt(8))
    # Stored weights are N(0, 1): their spread does not depend on fan-in.
    assert 0.8 < EqualizedConv2d(512, 512, 3).weight.std().item() < 1.2


def test_minibatch_stddev_hand_computed():
    # 4 samples, 1 channel, 1 pixel; group 2: samples (0, 2) and (1, 3) form the two groups.
    x = torch.tensor([0.0, 10.0, 2.0, 10.0]).reshape(4, 1, 1, 1)
    out = MinibatchStdDev(group_size=2)(x)
    assert out.shape == (4, 2, 1, 1)
    # group (0, 2): std of {0, 2} = 1; group (1, 3): std 0 (+1e-8 inside the sqrt).
    torch.testing.assert_close(out[:, 1].flatten(), torch.tensor([1.0, 1e-4, 1.0, 1e-4]), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[:, 0], x[:, 0])


def test_minibatch_stddev_handles_batches_not_divisible_by_group():
    out = MinibatchStdDev(4)(torch.randn(6, 3, 4, 4))  # group lowered to 3
    assert out.shape == (6, 4, 4, 4)
    assert MinibatchStdDev(4)(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)


def test_init_args_rebuild_the_same_architecture(small_pair):
    gen, disc = small_pair
    assert count(PGANGenerator(**gen.init_args)) == count(gen)
    assert count(PGANDiscriminator(**disc.init_args)) == count(disc)
