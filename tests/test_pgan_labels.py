"""PGAN's label encodings and slice conditioning (docs/masks.md): one-hot outputs and reals, the remedies against
an entropy-reading critic, the position-conditional networks, and 0.2.0 snapshots and checkpoints reading as
``index`` / ``none``."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import CheckpointError, check_checkpoint_fits, load_network, safe_load
from synthseg.data.labels import class_fractions, labels_to_onehot, net_to_labels
from synthseg.data.manifest import read_manifest
from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator
from synthseg.networks.position import uniform_positions_from_latents

pytestmark = pytest.mark.usefixtures("single_thread")
FIXTURES = Path(__file__).parent / "fixtures" / "v0_2_0" / "pgan"  # tests/fixtures/v0_2_0/README.md
SMALL = dict(resolution=16, fmap_base=32, fmap_max=8)


def _count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# (label_encoding, condition, critic's condition_style) -> parameters of G and D at 256x256, official widths.
PARAMETER_COUNTS = [
    ("index", "none", "projection", 23_039_303, 23_047_361),  # the official networks
    ("onehot", "none", "projection", 23_054_321, 23_062_337),
    ("index", "slice", "projection", 23_302_823, 23_315_137),
    ("index", "slice", "concat", 23_302_823, 23_065_121),
    ("onehot", "slice", "projection", 23_317_841, 23_330_113),
    ("onehot", "slice", "concat", 23_317_841, 23_080_097),
]


@pytest.fixture(scope="module")
def official() -> dict[str, dict[str, torch.Size]]:
    return {
        "G": {k: v.shape for k, v in PGANGenerator().state_dict().items()},
        "D": {k: v.shape for k, v in PGANDiscriminator().state_dict().items()},
    }


@pytest.mark.parametrize("encoding, condition, style, g_count, d_count", PARAMETER_COUNTS)
def test_parameter_counts_of_every_variant(encoding, condition, style, g_count, d_count, official):
    g = PGANGenerator(label_encoding=encoding, condition=condition)
    d = PGANDiscriminator(label_encoding=encoding, condition=condition, condition_style=style)
    assert (_count(g), _count(d)) == (g_count, d_count)
    # Which layers differ from the official networks: one-hot widens only toRGB/fromRGB (1 -> 7 channels);
    # the position adds its embedding and widens the generator's first dense layer (the critic's with concat).
    for net, name, rgb, dense in (
        (g, "G", "to_rgb.", "blocks.b4.dense."),
        (d, "D", "from_rgb.", "blocks.b4.dense0."),
    ):
        own, base = {k: v.shape for k, v in net.state_dict().items()}, official[name]
        changed = {k for k in base if own[k] != base[k]}
        added = {k.split(".")[0] for k in set(own) - set(base)}
        assert {k for k in changed if k.startswith(rgb)} == (
            {k for k in base if k.startswith(rgb) and (name == "G" or k.endswith("weight"))}
            if encoding == "onehot"
            else set()
        )
        widened = condition == "slice" and (name == "G" or style == "concat")
        assert {k for k in changed if not k.startswith(rgb)} == ({dense + "weight"} if widened else set())
        assert added == ({"position_embedding"} if condition == "slice" else set())
    if encoding == "onehot" and condition == "none":
        nf = [512] * 4 + [256, 128, 64]  # toRGB of 4..256 (generator) / fromRGB (discriminator)
        assert g_count - 23_039_303 == sum(6 * c + 6 for c in nf)
        assert d_count - 23_047_361 == sum(6 * c for c in nf)


def test_onehot_round_trip_and_argmax_masks():
    labels = torch.randint(0, 7, (3, 8, 8))
    onehot = labels_to_onehot(labels, 7)
    assert onehot.shape == (3, 7, 8, 8) and torch.equal(onehot.sum(1), torch.ones(3, 8, 8))
    assert torch.equal(net_to_labels(onehot, 7), labels.to(torch.uint8))
    # the generator's probabilities: on the simplex, the mask their argmax
    g = PGANGenerator(**SMALL, latent_dim=8, label_encoding="onehot")
    x = g(torch.randn(4, 8), 16, 0.5)
    assert x.shape == (4, 7, 16, 16) and (x >= 0).all()
    assert torch.allclose(x.sum(1), torch.ones(4, 16, 16), atol=1e-5)
    assert torch.equal(net_to_labels(x, 7), x.argmax(1).to(torch.uint8))
    # the index encoding reads as before: linear map back, rounded, clipped
    assert net_to_labels(torch.tensor([[[[-1.0, -1 / 3 - 0.1, 5.0]]]]), 7).tolist() == [[[0, 2, 6]]]
    with pytest.raises(ValueError, match="one channel per class"):
        net_to_labels(torch.zeros(1, 4, 2, 2), 7)


def _module(**kwargs):
    from synthseg.models.pgan import PGAN

    encoding, condition = kwargs.get("label_encoding", "index"), kwargs.get("condition", "none")
    nets = dict(resolution=8, fmap_base=16, fmap_max=4, label_encoding=encoding, condition=condition)
    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.0, 0.99))
    return PGAN(PGANGenerator(latent_dim=4, **nets), PGANDiscriminator(**nets), adam, adam, **kwargs)


def test_onehot_low_resolution_reals_are_class_fractions_and_invent_no_class():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 0:2, 0:2] = torch.tensor([[0, 6], [6, 6]])  # background beside CSF: never GM, never edema
    labels[0, 4:8, 4:8] = 4
    module = _module(label_encoding="onehot", onehot_reals="exact", stable_kimg=1, transition_kimg=1)
    stable4 = module.schedule.at(0)
    reals = module._prepare_reals(labels, stable4)
    assert reals.shape == (1, 7, 4, 4)
    assert reals[0, :, 0, 0].tolist() == pytest.approx([0.25, 0, 0, 0, 0, 0, 0.75])
    assert torch.equal(reals, class_fractions(labels, 4, 7))
    assert torch.allclose(reals.sum(1), torch.ones(1, 4, 4))
    present = {c for c in range(7) if reals[0, c].any()}
    assert present == {0, 4, 6}  # the index encoding's block mean would make 0 and 6 a 3-ish 4.5 -> 4
    # Fading in 8x8 (alpha 0.75): blended with the 2x2 block mean (class fractions again), nearest-upsampled.
    fading = module.schedule.at(1750)
    assert (fading.resolution, fading.alpha) == (8, 0.75)
    faded = module._prepare_reals(labels, fading)
    assert faded.shape == (1, 7, 8, 8)
    assert faded[0, 6, 0, 0].item() == pytest.approx(0.25 * 0.75 + 0.75 * 0.0)
    assert faded[0, 6, 0, 1].item() == pytest.approx(0.25 * 0.75 + 0.75 * 1.0)
    # majority: the one-hot majority vote at every level (ties to the higher class)
    vote = _module(label_encoding="onehot", onehot_reals="exact", lowres_labels="majority")
    vote = vote._prepare_reals(labels, stable4)
    assert vote[0, :, 0, 0].tolist() == [0, 0, 0, 0, 0, 0, 1]


def test_remedies_against_a_critic_that_reads_entropy():
    from synthseg.models.pgan_reals import fakes_for_critic, soften_reals

    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 4, 4, requires_grad=True)
    probabilities = torch.softmax(logits, 1)
    hard = fakes_for_critic(probabilities, "straight_through", 1.0, rng)
    assert torch.equal(hard.detach(), labels_to_onehot(probabilities.argmax(1), 7))
    # straight-through: the forward pass is one-hot, the backward pass the softmax's
    weights = torch.randn(2, 7, 4, 4)
    (grad_hard,) = torch.autograd.grad((hard * weights).sum(), logits, retain_graph=True)
    (grad_soft,) = torch.autograd.grad((probabilities * weights).sum(), logits)
    assert torch.allclose(grad_hard, grad_soft)
    soft = fakes_for_critic(probabilities, "gumbel", 0.5, rng)
    assert torch.allclose(soft.sum(1), torch.ones(2, 4, 4)) and not torch.equal(soft, probabilities)
    gumbel_hard = fakes_for_critic(probabilities, "gumbel_hard", 0.5, rng).detach()
    assert set(gumbel_hard.unique().tolist()) == {0.0, 1.0} and torch.equal(
        gumbel_hard.sum(1), torch.ones(2, 4, 4)
    )
    reals = labels_to_onehot(torch.randint(0, 7, (2, 4, 4)), 7)
    smooth = soften_reals(reals, "smooth", 0.1, rng)
    assert smooth.max().item() == pytest.approx(0.9 + 0.1 / 7) and smooth.min().item() == pytest.approx(
        0.1 / 7
    )
    noisy = soften_reals(reals, "noise", 0.1, rng)
    assert torch.allclose(noisy.sum(1), torch.ones(2, 4, 4)) and torch.equal(noisy.argmax(1), reals.argmax(1))
    assert soften_reals(reals, "exact", 0.1, rng) is reals


def test_conditional_generator_output_depends_on_the_position():
    torch.manual_seed(0)
    g = PGANGenerator(**SMALL, latent_dim=8, label_encoding="onehot", condition="slice")
    z = torch.randn(3, 8).repeat(2, 1)
    positions = torch.tensor([0.1, 0.5, 0.9, 0.9, 0.5, 0.1])
    out = g(z, 16, 1.0, positions)
    assert not torch.allclose(out[:3], out[3:])  # same latents, other positions
    assert torch.allclose(out[1], out[4])  # same latent and position
    # Without positions: uniform ones drawn from the latents' lengths, which pixel norm discards.
    assert torch.allclose(g(z[:3]), g(z[:3], 16, 1.0, uniform_positions_from_latents(z[:3])))
    many = torch.randn(20000, 8)
    drawn = uniform_positions_from_latents(many)
    assert drawn.min() >= 0 and drawn.max() <= 1 and abs(drawn.mean().item() - 0.5) < 0.01
    assert abs(drawn.std().item() - math.sqrt(1 / 12)) < 0.01
    assert not torch.allclose(
        uniform_positions_from_latents(many[:5] * 3), uniform_positions_from_latents(many[:5])
    )
    with pytest.raises(ValueError, match="one position per sample"):
        g(z, 16, 1.0, torch.zeros(2))


@pytest.mark.parametrize("style", ["projection", "concat"])
def test_conditional_critic_score_depends_on_the_position(style):
    torch.manual_seed(0)
    d = PGANDiscriminator(**SMALL, label_encoding="onehot", condition="slice", condition_style=style)
    x = labels_to_onehot(torch.randint(0, 7, (4, 16, 16)), 7)
    captured = {}
    d.blocks["b4"].dense0.register_forward_hook(lambda m, i, o: captured.update(inputs=i[0], out=o))
    low, high = torch.full((4,), 0.1), torch.full((4,), 0.8)
    a = d(x, 1.0, low)
    features_a, inputs_a = torch.nn.functional.leaky_relu(captured["out"], 0.2), captured["inputs"]
    b = d(x, 1.0, high)
    assert not torch.allclose(a, b)
    if style == "projection":
        # The projection term, by hand: <hidden features, embedding(p)> / sqrt(width); the rest is unchanged.
        embed = d.position_embedding
        by_hand = ((features_a * (embed(low) - embed(high))).sum(1, keepdim=True)) / math.sqrt(
            features_a.shape[1]
        )
        features_b = torch.nn.functional.leaky_relu(captured["out"], 0.2)
        assert torch.allclose(features_a, features_b)  # the features do not see the position
        assert torch.allclose(a - b, by_hand, atol=1e-5)
    else:
        # Concatenated: the embedding is the last part of the first dense layer's input.
        assert inputs_a.shape[1] == 8 * 16 + 32
        assert torch.allclose(inputs_a[:, -32:], d.position_embedding(low))
    with pytest.raises(ValueError, match="one position per sample"):
        d(x)


def test_manifest_positions_and_items_carry_them(tmp_path: Path, make_dataset):
    from synthseg.data.datamodule import BraTSDataModule

    root = make_dataset(tmp_path / "prepared", num_slices=12, size=8)  # cases of 5 slices 0..4 (the last: 2)
    positions = read_manifest(root).positions()
    assert positions[:5].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert positions[10:].tolist() == [0.0, 1.0]  # a case of slices 0 and 1
    synthetic = make_dataset(tmp_path / "synthetic", num_slices=3, size=8, source="synthetic")
    assert np.isnan(read_manifest(synthetic).positions()).all()
    dm = BraTSDataModule(str(root))
    dm.setup()
    item = dm.train_set[3]
    assert item["slice_position"].dtype == torch.float32
    assert (
        item["slice_position"].item() == dm.train_set.slice_position(3) == positions[dm.train_set.items[3, 1]]
    )


# ------------------------------------------------------------------------------------ 0.2.0 files
def test_a_0_2_0_snapshot_reads_as_index_none_and_makes_its_masks(tmp_path: Path):
    from synthseg.synth.generate_masks import GenerateMasksSettings, load_mask_generator, run

    snapshot = FIXTURES / "network-snapshot.pt"
    assert "label_encoding" not in safe_load(snapshot)["init_args"]  # written by 0.2.0
    generator, meta = load_mask_generator(snapshot)
    assert (generator.label_encoding, generator.condition, generator.image_channels) == ("index", "none", 1)
    assert generator.index_order == "paper"  # read in the paper's class order
    run(
        GenerateMasksSettings(
            checkpoint=str(snapshot), count=6, output=str(tmp_path / "masks"), device="cpu", progress=False
        )
    )
    from synthseg.data.pngio import read_png

    masks = np.stack([read_png(p) for p in sorted((tmp_path / "masks" / "labels").glob("*.png"))])
    assert np.array_equal(masks, np.load(FIXTURES / "masks.npy"))  # the masks 0.2.0 made


def test_a_0_2_0_checkpoint_resumes_into_index_none(tmp_path: Path):
    from hydra.utils import instantiate

    from tests.conftest import compose_train

    checkpoint = FIXTURES / "last.ckpt"
    obj = safe_load(checkpoint)
    assert "augment" not in obj["pgan"] and "label_encoding" not in obj["pgan"]["generator"]["init_args"]
    net, _ = load_network(checkpoint)
    assert (net.label_encoding, net.condition) == ("index", "none")
    tiny = [
        "model=pgan",
        "model.generator.resolution=16",
        "model.generator.latent_dim=16",
        "model.generator.fmap_base=64",
        "model.generator.fmap_max=16",
        "data.root=unused",
    ]
    module = instantiate(compose_train(tiny, tmp_path).model, _convert_="partial")
    check_checkpoint_fits(checkpoint, module)
    module.load_state_dict(obj["state_dict"])
    module.on_load_checkpoint(obj)
    assert module.images_seen == 48 and module.ada.p == 0.0
    onehot = instantiate(
        compose_train([*tiny, "model.label_encoding=onehot"], tmp_path).model, _convert_="partial"
    )
    # the composed one-hot model: 7 channels, the measured remedy (noise on the reals) by default
    assert (onehot.generator.image_channels, onehot.discriminator.image_channels) == (7, 7)
    assert (onehot.onehot_fakes, onehot.onehot_reals) == ("softmax", "noise")
    with pytest.raises(
        CheckpointError, match="label_encoding='index', config asks for label_encoding='onehot'"
    ):
        check_checkpoint_fits(checkpoint, onehot)
    anatomical = instantiate(
        compose_train([*tiny, "model.generator.index_order=anatomical"], tmp_path).model, _convert_="partial"
    )
    with pytest.raises(
        CheckpointError, match="index_order='paper', config asks for index_order='anatomical'"
    ):
        check_checkpoint_fits(checkpoint, anatomical)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PGANGenerator(**SMALL, label_encoding="onehoot"), "label_encoding must be one of"),
        (lambda: PGANGenerator(**SMALL, label_encoding="onehot", classes=1), "classes must be >= 2"),
        (lambda: PGANDiscriminator(**SMALL, condition="axial"), "condition must be one of"),
        (
            lambda: PGANDiscriminator(**SMALL, condition="slice", condition_style="add"),
            "condition_style must",
        ),
        (lambda: _module(onehot_temperature=0.0), "onehot_temperature must be > 0"),
        (lambda: _module(real_noise=2.0), "real_noise in"),
        (lambda: _module(onehot_fakes="argmax"), "onehot_fakes must be one of"),
        (lambda: _module(augment="mixup"), "augment must be one of"),
    ],
)
def test_impossible_settings_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_model_refuses_networks_built_for_another_encoding_or_condition():
    from synthseg.models.pgan import PGAN

    adam = partial(torch.optim.Adam, lr=1e-3)
    index = dict(resolution=8, fmap_base=16, fmap_max=4)
    with pytest.raises(ValueError, match="built for label_encoding=index, condition=none"):
        PGAN(
            PGANGenerator(latent_dim=4, **index),
            PGANDiscriminator(**index),
            adam,
            adam,
            label_encoding="onehot",
        )
    with pytest.raises(ValueError, match="condition=none"):
        PGAN(PGANGenerator(latent_dim=4, **index), PGANDiscriminator(**index), adam, adam, condition="slice")
