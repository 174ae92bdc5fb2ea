"""SPADE networks: the official parameter counts, shapes at 64/128/256, the SPADE formula by hand, bad arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from synthseg.networks.spade import (
    ConvEncoder,
    MultiscaleDiscriminator,
    NLayerDiscriminator,
    SPADEGenerator,
)
from synthseg.networks.spade_layers import SPADE, SPADEResnetBlock
from synthseg.networks.sync_norm import SyncBatchNorm2d


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def one_hot(batch: int, classes: int, size: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (batch, size, size), generator=gen)
    return F.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_parameter_counts_equal_the_official_networks():
    # Paper's options: 7 labels, no instance map, 1 output channel, 256x256, ngf = ndf = 64.
    assert count(SPADEGenerator(label_nc=7, output_nc=1, ngf=64, image_size=256)) == 92_178_241
    assert count(MultiscaleDiscriminator(label_nc=7, output_nc=1, num_D=2, ndf=64, n_layers=4)) == 5_537_922


def test_discriminator_count_by_hand():
    # One PatchGAN on 8 input channels: first conv has a bias, the spectral+instance convs have none, the
    # prediction conv has one.
    expected = (8 * 64 * 16 + 64) + 64 * 128 * 16 + 128 * 256 * 16 + 256 * 512 * 16 + (512 * 16 + 1)
    assert count(NLayerDiscriminator(input_nc=8)) == expected


# size -> spatial size of each discriminator's five outputs (conv k4 p2: s2, s2, s2, s1, s1; D1 sees size/2)
DISCRIMINATOR_SIZES = {
    64: ([33, 17, 9, 10, 11], [17, 9, 5, 6, 7]),
    128: ([65, 33, 17, 18, 19], [33, 17, 9, 10, 11]),
    256: ([129, 65, 33, 34, 35], [65, 33, 17, 18, 19]),
}


@pytest.mark.parametrize("size", [64, 128, 256])
def test_full_width_shapes(size):
    # Full-width networks on the meta device: shapes without the compute.
    with torch.device("meta"):
        gen = SPADEGenerator(image_size=size)
        disc = MultiscaleDiscriminator()
        fake = gen(torch.zeros(2, 7, size, size))
        outputs = disc(torch.cat([torch.zeros(2, 7, size, size), fake], dim=1))
    assert fake.shape == (2, 1, size, size)
    widths = [64, 128, 256, 512, 1]
    for d_index, sizes in enumerate(DISCRIMINATOR_SIZES[size]):
        assert [tuple(f.shape) for f in outputs[d_index]] == [
            (2, w, s, s) for w, s in zip(widths, sizes, strict=True)
        ]


@pytest.mark.parametrize(
    "kwargs, size",
    [
        ({"ngf": 4}, 64),
        ({"ngf": 4}, 128),
        ({"ngf": 2, "num_upsampling_layers": 6}, 64),
        ({"ngf": 2, "num_upsampling_layers": 7}, 128),
        ({"ngf": 4, "param_free_norm": "instance", "spectral": False}, 64),
        ({"ngf": 4, "use_vae": True, "z_dim": 8}, 32),
    ],
)
def test_generator_output_in_tanh_range(kwargs, size):
    torch.manual_seed(0)
    gen = SPADEGenerator(label_nc=7, output_nc=1, image_size=size, hidden_channels=8, **kwargs)
    fake = gen(one_hot(2, 7, size))
    assert fake.shape == (2, 1, size, size)
    assert fake.abs().max() <= 1.0
    assert fake.std() > 0  # not a constant image


def test_generator_follows_the_label_map():
    torch.manual_seed(0)
    gen = SPADEGenerator(image_size=32, ngf=4, hidden_channels=8).eval()
    label = one_hot(1, 7, 32)
    changed = label.clone()
    changed[:, :, :8, :8] = 0
    changed[:, 3, :8, :8] = 1
    assert not torch.equal(gen(label), gen(changed))


INVALID = [
    (SPADEGenerator, {"image_size": 100}),  # not divisible by 32
    (SPADEGenerator, {"num_upsampling_layers": 4}),
    (SPADEGenerator, {"ngf": 0}),
    (SPADEGenerator, {"param_free_norm": "group"}),
    (SPADE, {"norm_nc": 4, "label_nc": 7, "kernel_size": 2}),
    (SPADEResnetBlock, {"fin": 0, "fout": 4, "label_nc": 7}),
    (NLayerDiscriminator, {"n_layers": 0}),
    (MultiscaleDiscriminator, {"num_D": 0}),
    (ConvEncoder, {"z_dim": 0}),
    (SyncBatchNorm2d, {"num_features": 0}),
]


@pytest.mark.parametrize("cls, kwargs", INVALID)
def test_impossible_arguments_raise(cls, kwargs):
    with pytest.raises(ValueError):
        cls(**kwargs)


def test_generator_rejects_wrong_label_shape():
    gen = SPADEGenerator(image_size=32, ngf=2, hidden_channels=4)
    with pytest.raises(ValueError, match="label map"):
        gen(one_hot(1, 7, 64))
    with pytest.raises(ValueError, match="label map"):
        gen(one_hot(1, 4, 32))


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_spade_formula_by_hand(norm):
    # x = [1, 3] on one channel: mean 2, variance 1, so norm(x) = [-1, 1] for batch and instance norm alike.
    spade = SPADE(norm_nc=1, label_nc=2, hidden_channels=1, kernel_size=1, param_free_norm=norm)
    with torch.no_grad():
        spade.mlp_shared[0].weight.copy_(torch.tensor([2.0, -1.0]).view(1, 2, 1, 1))
        spade.mlp_shared[0].bias.zero_()
        spade.mlp_gamma.weight.fill_(0.5)
        spade.mlp_gamma.bias.fill_(0.1)
        spade.mlp_beta.weight.fill_(-1.0)
        spade.mlp_beta.bias.fill_(0.3)
    x = torch.tensor([1.0, 3.0]).view(1, 1, 1, 2)
    # Label at twice the resolution: nearest resizing keeps columns 0 and 2, i.e. classes 0 and 1.
    label = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]).view(1, 2, 1, 4)
    # hidden = relu(2*l0 - l1) = [2, 0]; gamma = 0.5*h + 0.1 = [1.1, 0.1]; beta = -h + 0.3 = [-1.7, 0.3]
    # out = norm * (1 + gamma) + beta = [-1 * 2.1 - 1.7, 1 * 1.1 + 0.3] = [-3.8, 1.4]
    out = spade(x, label)
    torch.testing.assert_close(out.view(-1), torch.tensor([-3.8, 1.4]), atol=1e-4, rtol=0)


def test_resnet_block_shortcut_only_when_widths_differ():
    same = SPADEResnetBlock(8, 8, label_nc=3, hidden_channels=4)
    diff = SPADEResnetBlock(8, 4, label_nc=3, hidden_channels=4)
    assert not hasattr(same, "conv_s")
    assert diff.conv_s.bias is None
    out = diff(torch.randn(2, 8, 6, 6), one_hot(2, 3, 12))
    assert out.shape == (2, 4, 6, 6)
    # Spectral norm on the block convs, not on the SPADE convs.
    assert hasattr(diff.conv_0, "weight_orig") and hasattr(diff.conv_s, "weight_orig")
    assert not hasattr(diff.norm_0.mlp_gamma, "weight_orig")


def test_xavier_init_gain():
    torch.manual_seed(0)
    disc = NLayerDiscriminator(input_nc=8, ndf=64)
    weight = disc.model[0][0].weight  # plain conv, 8 -> 64, k4
    fan_in, fan_out = 8 * 16, 64 * 16
    expected_std = 0.02 * (2.0 / (fan_in + fan_out)) ** 0.5
    assert abs(weight.std().item() - expected_std) / expected_std < 0.1
    assert torch.count_nonzero(disc.model[0][0].bias) == 0


def test_multiscale_second_discriminator_sees_pooled_input():
    torch.manual_seed(0)
    disc = MultiscaleDiscriminator(label_nc=3, output_nc=1, ndf=4).eval()  # eval: spectral norm's u stays put
    x = torch.randn(1, 4, 32, 32)
    pooled = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    torch.testing.assert_close(disc(x)[1][-1], disc.discriminators[1](pooled)[-1])


def test_encoder_shapes():
    enc = ConvEncoder(input_nc=1, ndf=2, z_dim=8, image_size=64)
    mu, logvar = enc(torch.randn(2, 1, 64, 64))
    assert mu.shape == logvar.shape == (2, 8)
