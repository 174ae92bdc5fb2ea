"""Augmentation before PGAN's critic (DiffAugment, ADA) keeps label maps valid, and ADA's p follows r_t; a tiny
conditional one-hot PGAN with ADA trains through the real ``train()`` and resumes exactly (docs/masks.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from synthseg.checkpoint import safe_load
from synthseg.data.labels import labels_to_net, labels_to_onehot
from synthseg.models.pgan_augment import (
    AdaptiveProbability,
    LabelAugment,
    background,
    cutout,
    rotate90,
    translate,
    xflip,
)
from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import PGAN_TINY as TINY

pytestmark = pytest.mark.usefixtures("single_thread")


def _maps(n: int = 6, side: int = 16) -> torch.Tensor:
    torch.manual_seed(0)
    labels = torch.zeros(n, side, side, dtype=torch.long)
    labels[:, 3:13, 4:12] = torch.randint(1, 7, (n, 10, 8))
    return labels


def test_transforms_by_hand():
    x = torch.arange(16.0).reshape(1, 1, 4, 4).repeat(2, 1, 1, 1)
    fill = background(1)
    assert torch.equal(xflip(x, torch.tensor([True, False]))[0], x[0].flip(-1))
    assert torch.equal(xflip(x, torch.tensor([True, False]))[1], x[1])
    assert torch.equal(rotate90(x, torch.tensor([1, 3]))[0], torch.rot90(x[0], 1, (-2, -1)))
    assert torch.equal(rotate90(x, torch.tensor([1, 3]))[1], torch.rot90(x[1], 3, (-2, -1)))
    moved = translate(x, torch.tensor([[1, 0], [0, -2]]), fill)
    assert moved[0, 0, 0].tolist() == [-1.0] * 4 and torch.equal(moved[0, 0, 1:], x[0, 0, :3])
    assert torch.equal(moved[1, 0, :, :2], x[1, 0, :, 2:]) and (moved[1, 0, :, 2:] == -1).all()
    cut = cutout(x, torch.tensor([[1, 1], [2, 2]]), 2, torch.tensor([True, False]), fill)
    assert (cut[0, 0, 0:2, 0:2] == -1).all() and cut[0, 0, 2:, 2:].equal(x[0, 0, 2:, 2:])
    assert torch.equal(cut[1], x[1])
    onehot_fill = background(7)
    assert onehot_fill.flatten().tolist() == [1, 0, 0, 0, 0, 0, 0]


@pytest.mark.parametrize("mode", ["diffaugment", "ada"])
@pytest.mark.parametrize("encoding", ["index", "onehot"])
def test_augmentation_keeps_label_maps_valid_and_is_differentiable(mode, encoding):
    labels = _maps()
    x = labels_to_net(labels, 7) if encoding == "index" else labels_to_onehot(labels, 7)
    x = x.clone().requires_grad_(True)
    rng = torch.Generator().manual_seed(1)
    out = LabelAugment(mode)(x, 1.0, rng)
    assert out.shape == x.shape and not torch.equal(out, x)
    if encoding == "index":
        classes = torch.round((out.detach() + 1) * 3)
        assert torch.allclose(out.detach(), labels_to_net(classes[:, 0].long(), 7))  # class values only
        assert 0 <= classes.min() and classes.max() <= 6
    else:
        assert set(out.detach().unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(out.detach().sum(1), torch.ones(6, 16, 16))  # still one class per pixel
    # Transforms gather and mask pixels: the generator gets gradients through them.
    (grad,) = torch.autograd.grad((out * torch.randn_like(out)).sum(), x)
    assert grad.abs().sum() > 0
    # Class fractions (low resolutions, fade-ins) stay on the simplex.
    fractions = torch.nn.functional.avg_pool2d(labels_to_onehot(labels, 7), 2)
    assert torch.allclose(LabelAugment(mode)(fractions, 1.0, rng).sum(1), torch.ones(6, 8, 8))


def test_ada_at_p_zero_and_none_change_nothing():
    x = labels_to_net(_maps(), 7)
    rng = torch.Generator().manual_seed(0)
    state = rng.get_state()
    assert LabelAugment("ada")(x, 0.0, rng) is x and LabelAugment("none")(x, 1.0, rng) is x
    assert torch.equal(rng.get_state(), state)  # the official path draws nothing
    with pytest.raises(ValueError, match="augment must be one of"):
        LabelAugment("flip")


def test_ada_probability_moves_with_r_t():
    ada = AdaptiveProbability(target=0.6, speed_kimg=1.0, interval=2)  # p moves 1 per 1,000 images
    ada.accumulate(8.0, 8)  # r_t so far 1.0: no adjustment before the interval ends
    assert ada.p == 0.0
    ada.accumulate(4.0, 8)  # r_t = 12 / 16 = 0.75 > 0.6: p up by 16 images / 1,000
    assert ada.rt == pytest.approx(0.75) and ada.p == pytest.approx(0.016)
    for _ in range(2):
        ada.accumulate(8.0, 8)
    assert ada.p == pytest.approx(0.032)
    ada.accumulate(-8.0, 8)
    ada.accumulate(2.0, 8)  # r_t = -0.375 < 0.6: down
    assert ada.rt == pytest.approx(-0.375) and ada.p == pytest.approx(0.016)
    for _ in range(6):
        ada.accumulate(0.0, 8)
    assert ada.p == 0.0  # clipped at 0
    saved = ada.state_dict()
    ada.accumulate(8.0, 8)
    other = AdaptiveProbability(target=0.6, speed_kimg=1.0, interval=2)
    other.load_state_dict(saved)
    other.accumulate(8.0, 8)
    assert other.state_dict() == ada.state_dict()


SWITCHES = [
    "model.label_encoding=onehot",
    "model.condition=slice",
    "model.augment=ada",
    "model.ada_kimg=0.1",  # p moves 1 per 100 images: visible in a 96-image run
    "model.ada_interval=1",
    "model.onehot_fakes=gumbel",  # draws from the training generator: resume must restore it
    "model.onehot_reals=noise",
]


def _run(tmp_path: Path, data: Path, total_kimg: float, *extra: str) -> Path:
    cfg = compose_train([*TINY, f"data.root={data}", f"model.total_kimg={total_kimg}", *extra], tmp_path)
    train(cfg)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pgan_switches") / "prepared", num_slices=40, size=16)


@pytest.mark.slow
def test_conditional_onehot_ada_pgan_trains_and_resumes_exactly(data: Path, tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from synthseg.synth.generate_masks import load_mask_generator

    common = [*SWITCHES, "model.swd_images=0", "model.minibatch_repeats=2"]
    full = _run(tmp_path / "full", data, 0.096, *common)
    part = _run(tmp_path / "part", data, 0.072, *common)
    resumed = _run(
        tmp_path / "resumed", data, 0.096, *common, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}"
    )
    a = safe_load(full / "checkpoints" / "last.ckpt")
    b = safe_load(resumed / "checkpoints" / "last.ckpt")
    c = safe_load(part / "checkpoints" / "last.ckpt")
    assert a["pgan"]["augment"]["p"] > 0 and a["pgan"]["augment"] == b["pgan"]["augment"]
    assert c["pgan"]["augment"] != a["pgan"]["augment"]
    assert torch.equal(a["pgan"]["rng_state"], b["pgan"]["rng_state"])
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert any(k.startswith("generator_ema.position_embedding.") for k in a["state_dict"])
    # The snapshot says how to read it: generate-masks needs no new argument.
    snapshot = sorted((full / "snapshots").glob("*.pt"))[-1]
    generator, meta = load_mask_generator(snapshot)
    assert (meta["label_encoding"], meta["condition"]) == ("onehot", "slice")
    assert (generator.label_encoding, generator.condition, generator.image_channels) == ("onehot", "slice", 7)
    # p and r_t go to TensorBoard.
    events = EventAccumulator(str(next((full / "tensorboard").rglob("events.out.tfevents.*")))).Reload()
    assert {"train/ada_p", "train/ada_rt"} <= set(events.Tags()["scalars"])


def test_swd_and_grid_of_a_conditional_onehot_run(data: Path, tmp_path: Path):
    import csv

    run = _run(tmp_path, data, 0.048, *SWITCHES[:3], "model.augment=diffaugment")
    rows = list(csv.DictReader(open(run / "swd.csv")))
    assert rows and all(float(r["swd_avg"]) > 0 for r in rows)


def test_bad_switch_is_one_line_naming_the_key(data: Path, tmp_path: Path):
    from synthseg.errors import InputError

    with pytest.raises(InputError, match="model.label_encoding must be one of index, onehot, got 'onehoot'"):
        _run(tmp_path, data, 0.016, "model.label_encoding=onehoot")
    with pytest.raises(InputError, match="model.discriminator.condition_style must be one of"):
        _run(tmp_path, data, 0.016, "model.condition=slice", "model.discriminator.condition_style=cat")
