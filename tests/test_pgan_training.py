"""PGAN training: kimg schedule, WGAN-GP terms, label range, and the real train() on a tiny dataset."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from synthseg.checkpoint import load_network, safe_load
from synthseg.data.labels import labels_to_net, net_to_labels, resize_labels
from synthseg.losses.wgan import WGANGPLoss
from synthseg.networks.pgan import PGANGenerator
from synthseg.progressive import ProgressiveSchedule
from synthseg.train import train
from tests.conftest import compose_train, write_dataset
from tests.helpers.presets import PGAN_TINY as TINY

pytestmark = pytest.mark.usefixtures("single_thread")


# ------------------------------------------------------------------------------------------- schedule


@pytest.mark.parametrize(
    "kimg, resolution, alpha, batch, tick",
    [
        (0, 4, 1.0, 128, 160),
        (599.999, 4, 1.0, 128, 160),
        (600, 4, 1.0, 128, 160),  # fade-in of 8x8 starts right after
        (900, 8, 0.5, 128, 140),
        (1200, 8, 1.0, 128, 140),
        (1950, 16, 0.25, 128, 120),
        (3000, 16, 1.0, 128, 120),
        (3300, 32, 0.5, 64, 100),
        (4500, 64, 0.5, 32, 80),
        (5400, 64, 1.0, 32, 80),
        (5700, 128, 0.5, 16, 60),
        (6600, 128, 1.0, 16, 60),
        (6900, 256, 0.5, 8, 40),
        (7200, 256, 1.0, 8, 40),  # full resolution reached after 7,200 kimg
        (12000, 256, 1.0, 8, 40),
    ],
)
def test_paper_schedule(kimg, resolution, alpha, batch, tick):
    stage = ProgressiveSchedule(256).at(round(kimg * 1000))
    assert (stage.resolution, stage.batch_size, stage.tick_kimg) == (resolution, batch, tick)
    assert stage.alpha == pytest.approx(alpha)


def test_adam_reset_points_are_start_and_end_of_each_fade_in():
    schedule = ProgressiveSchedule(256)
    changes, previous = [], None
    for kimg in range(0, 12001, 50):
        phase = schedule.at(kimg * 1000).phase
        if previous is not None and phase != previous:
            changes.append(kimg)
        previous = phase
    # 600 kimg stable, 600 fade-in: phases change 50 kimg after each fade-in starts (first sample inside)
    # and exactly when it ends; 6 fade-ins from 8x8 to 256x256.
    assert changes == [650, 1200, 1850, 2400, 3050, 3600, 4250, 4800, 5450, 6000, 6650, 7200]


def test_schedule_with_tiny_kimg_and_missing_table_entries():
    schedule = ProgressiveSchedule(
        16, stable_kimg=0.016, transition_kimg=0.016, batch_sizes={4: 8}, tick_kimg={4: 0.016}
    )
    assert schedule.at(16).resolution == 4
    assert schedule.at(24).resolution == 8 and schedule.at(24).alpha == pytest.approx(0.5)
    assert schedule.at(64).resolution == 16 and schedule.at(64).alpha == 1.0
    assert schedule.at(24).batch_size == 16 and schedule.at(24).tick_kimg == 160  # official bases


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(target_resolution=12),
        dict(target_resolution=8, initial_resolution=16),
        dict(target_resolution=8, stable_kimg=0, transition_kimg=0),
        dict(target_resolution=8, batch_sizes={4: 0}),
    ],
)
def test_schedule_rejects_impossible_settings(kwargs):
    with pytest.raises(ValueError):
        ProgressiveSchedule(**kwargs)


# --------------------------------------------------------------------------------------------- loss


def test_wgan_gp_terms_match_hand_computation():
    # One-pixel images and the critic D(x) = x^2 / 2, so grad D(x) = x.
    reals = torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1)
    fakes = torch.tensor([3.0, 0.0]).reshape(2, 1, 1, 1)
    mixing = torch.tensor([0.5, 0.25]).reshape(2, 1, 1, 1)

    def critic(x):
        return 0.5 * x.flatten(1).square().sum(dim=1, keepdim=True)

    terms = WGANGPLoss(gp_weight=10.0, gp_target=1.0, drift_weight=0.001).discriminator(
        critic, reals, fakes, mixing
    )
    # D(real) = 0.5, 2.0; D(fake) = 4.5, 0.0. Mixed points 2.0 and 1.5: gradient norms 2.0 and 1.5.
    # Penalties 10 * (2 - 1)^2 = 10 and 10 * 0.5^2 = 2.5; drifts 0.001 * 0.25 and 0.001 * 4.
    per_sample = [4.5 - 0.5 + 10.0 + 0.00025, 0.0 - 2.0 + 2.5 + 0.004]
    assert terms["loss"].item() == pytest.approx(sum(per_sample) / 2)
    assert terms["D_real"].item() == pytest.approx(1.25)
    assert terms["D_fake"].item() == pytest.approx(2.25)
    assert terms["wasserstein"].item() == pytest.approx(-1.0)
    assert terms["gradient_penalty"].item() == pytest.approx(6.25)
    assert terms["drift"].item() == pytest.approx(0.002125)
    assert terms["grad_norm"].item() == pytest.approx(1.75)
    gen = WGANGPLoss().generator(critic, fakes)
    assert gen["loss"].item() == pytest.approx(-2.25)


def test_gradient_penalty_target_scales_as_official():
    # Linear critic D(x) = 3 * sum(x): gradient norm 3 * sqrt(4) = 6 for 2x2 images, whatever the mixing.
    reals, fakes = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)

    def critic(x):
        return 3.0 * x.flatten(1).sum(dim=1, keepdim=True)

    terms = WGANGPLoss(gp_weight=10.0, gp_target=2.0, drift_weight=0.0).discriminator(
        critic, reals, fakes, torch.full((1, 1, 1, 1), 0.3)
    )
    assert terms["gradient_penalty"].item() == pytest.approx(10.0 / 4.0 * (6.0 - 2.0) ** 2)


def test_gradient_penalty_reaches_critic_weights():
    weight = torch.tensor(2.0, requires_grad=True)

    def critic(x):
        return weight * x.flatten(1).square().sum(dim=1, keepdim=True)

    reals, fakes = torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1)
    terms = WGANGPLoss(gp_weight=1.0, drift_weight=0.0).discriminator(
        critic, reals, fakes, torch.zeros(1, 1, 1, 1)
    )
    terms["loss"].backward()
    # loss = w - w + (2w - 1)^2 at x = 1: d/dw = 4 (2w - 1) = 12.
    assert weight.grad.item() == pytest.approx(12.0)


@pytest.mark.parametrize("kwargs", [dict(gp_weight=-1), dict(gp_target=0), dict(drift_weight=-0.1)])
def test_loss_rejects_impossible_weights(kwargs):
    with pytest.raises(ValueError):
        WGANGPLoss(**kwargs)


# -------------------------------------------------------------------------------------------- labels


def test_label_range_maps_linearly_and_back():
    labels = torch.arange(7).reshape(1, 1, 7)
    net = labels_to_net(labels, 7)
    torch.testing.assert_close(net.flatten(), torch.tensor([-1, -2 / 3, -1 / 3, 0, 1 / 3, 2 / 3, 1.0]))
    assert torch.equal(net_to_labels(net, 7).long(), labels)
    # Off-grid values round to the nearest class and clip to 0..6.
    x = torch.tensor([-1.5, -0.84, -0.82, 0.16, 0.18, 1.7]).reshape(1, 1, 1, 6)
    assert net_to_labels(x, 7).flatten().tolist() == [0, 0, 1, 3, 4, 6]


def test_majority_downsample_hand_example_ties_to_higher_class():
    labels = torch.tensor(
        [
            [[1, 1, 0, 4], [1, 2, 6, 0]],
        ]
    ).reshape(1, 2, 4)
    # Block 1: {1, 1, 1, 2} -> 1. Block 2: {0, 4, 6, 0} -> 0 (two votes).
    assert resize_labels(labels, 2, 7).tolist() == [[[1, 0]]]
    tie = torch.tensor([[[0, 5], [5, 0]]])
    assert resize_labels(tie, 1, 7).tolist() == [[[5]]]
    up = resize_labels(torch.tensor([[[2, 3]]]).reshape(1, 1, 2).expand(1, 2, 2), 4, 7)
    assert up.shape == (1, 4, 4) and up[0, :, :2].eq(2).all() and up[0, :, 2:].eq(3).all()


# ---------------------------------------------------------------------------------- training (real)


def _run(tmp_path: Path, data: Path, total_kimg: float, *extra: str) -> Path:
    cfg = compose_train([*TINY, f"data.root={data}", f"model.total_kimg={total_kimg}", *extra], tmp_path)
    train(cfg)
    return tmp_path / "run"


@pytest.fixture(scope="module")
def pgan_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("pgan") / "prepared", num_slices=40, size=16)


def test_train_grows_to_target_and_writes_snapshots_swd_and_checkpoint(pgan_data: Path, tmp_path: Path):
    run = _run(tmp_path, pgan_data, 0.096)
    rows = list(csv.DictReader(open(run / "swd.csv")))
    # Ticks every 16 images: 6 ticks over 96 images, the last one at full resolution.
    assert [int(r["tick"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [float(r["kimg"]) for r in rows] == pytest.approx([0.016, 0.032, 0.048, 0.064, 0.08, 0.096])
    assert [int(r["resolution"]) for r in rows] == [4, 8, 8, 16, 16, 16]
    assert all(math.isfinite(float(r["swd_avg"])) and float(r["swd_avg"]) > 0 for r in rows)
    assert all(float(r["swd_16"]) == pytest.approx(float(r["swd_avg"])) for r in rows)  # one level at 16
    snapshots = sorted((run / "snapshots").glob("network-snapshot-*.pt"))
    assert len(snapshots) == 6 and all((run / r["snapshot"]).is_file() for r in rows)
    generator, meta = load_network(run / rows[-1]["snapshot"])
    assert isinstance(generator, PGANGenerator) and generator.resolution == 16
    assert meta["tick"] == 6 and meta["resolution"] == 16 and meta["dataset_size"] == 16
    with torch.no_grad():
        masks = net_to_labels(generator(torch.randn(3, 16)), 7)
    assert masks.shape == (3, 16, 16) and int(masks.max()) <= 6
    checkpoint = safe_load(run / "checkpoints" / "last.ckpt")  # weights_only: tensors and primitives only
    assert checkpoint["pgan"]["images_seen"] == 96 and checkpoint["pgan"]["dataset_size"] == 16
    assert checkpoint["BraTSDataModule"]["resolution"] == 16
    assert any(k.startswith("generator_ema.") for k in checkpoint["state_dict"])
    # The checkpoint records the stage its EMA weights were trained to: generate-masks runs it there.
    recorded = checkpoint["pgan"]["generator"]
    assert recorded["network"] == "synthseg.networks.pgan.PGANGenerator"
    assert (recorded["meta"]["resolution"], recorded["meta"]["alpha"], recorded["meta"]["tick"]) == (
        16,
        1.0,
        6,
    )
    # Adam was reset when the last fade-in ended (64 images): 8 steps of 4 images since.
    adam_g = checkpoint["optimizer_states"][0]["state"]
    assert {int(s["step"]) for s in adam_g.values()} == {8}
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert not list((run / "checkpoints").glob("*.partial"))


@pytest.mark.slow
def test_resume_continues_exactly_like_an_uninterrupted_run(pgan_data: Path, tmp_path: Path):
    common = ["model.swd_images=0", "model.minibatch_repeats=2"]
    full = _run(tmp_path / "full", pgan_data, 0.096, *common)
    # Stop after 72 images (mid-way through the stable 16x16 phase, no schedule change there), then resume.
    part = _run(tmp_path / "part", pgan_data, 0.072, *common)
    resumed = _run(
        tmp_path / "resumed",
        pgan_data,
        0.096,
        *common,
        f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
    )
    a = safe_load(full / "checkpoints" / "last.ckpt")
    b = safe_load(resumed / "checkpoints" / "last.ckpt")
    assert a["pgan"]["images_seen"] == b["pgan"]["images_seen"] == 96
    assert torch.equal(a["pgan"]["rng_state"], b["pgan"]["rng_state"])
    assert a["BraTSDataModule"] == b["BraTSDataModule"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)
    # The part run really stopped early and differs from the end state.
    c = safe_load(part / "checkpoints" / "last.ckpt")
    assert c["pgan"]["images_seen"] == 72
    assert not torch.equal(
        c["state_dict"]["generator.to_rgb.b16.weight"], a["state_dict"]["generator.to_rgb.b16.weight"]
    )


@pytest.mark.parametrize(
    "experiment, resolution, reduced",
    [("pgan_full", 256, False), ("pgan_reduced", 256, True), ("pgan_demo", 64, False)],
)
def test_experiments_compose_into_the_paper_settings(experiment, resolution, reduced, tmp_path: Path):
    from hydra.utils import instantiate

    cfg = compose_train([f"experiment={experiment}", "data.root=unused"], tmp_path)
    assert cfg.model._target_ == "synthseg.models.pgan.PGAN"
    assert (cfg.data.drop_empty, cfg.data.endless, cfg.data.reduced, cfg.data.classes) == (
        True,
        True,
        reduced,
        7,
    )
    assert cfg.model.generator.resolution == cfg.model.discriminator.resolution == resolution
    model = instantiate(cfg.model, _convert_="partial")
    assert model.schedule.at(0).resolution == 4
    # The demo's run is too short for the official EMA half-life (conf/experiment/pgan_demo.yaml).
    assert model.hparams.ema_decay == (0.99 if experiment == "pgan_demo" else 0.999)
    assert model.loss.gp_weight == 10.0 and model.loss.drift_weight == 0.001
    g_opt, d_opt = model.configure_optimizers()
    assert g_opt.defaults["betas"] == (0.0, 0.99) and d_opt.defaults["lr"] == 0.001
    if experiment != "pgan_demo":
        assert (model.hparams.total_kimg, model.hparams.stable_kimg, model.hparams.transition_kimg) == (
            12000,
            600,
            600,
        )
        assert sum(p.numel() for p in model.generator.parameters()) == 23_039_303


def test_generator_larger_than_the_slices_is_a_clear_error(pgan_data: Path, tmp_path: Path):
    from synthseg.errors import InputError

    with pytest.raises(InputError, match="does not divide"):
        _run(tmp_path, pgan_data, 0.016, "model.generator.resolution=32")


def _tiny_module(**kwargs):
    from functools import partial

    from synthseg.models.pgan import PGAN
    from synthseg.networks.pgan import PGANDiscriminator

    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.0, 0.99))
    return PGAN(
        PGANGenerator(resolution=8, latent_dim=4, fmap_base=16, fmap_max=4),
        PGANDiscriminator(resolution=8, fmap_base=16, fmap_max=4),
        adam,
        adam,
        **kwargs,
    )


def test_reals_fade_in_with_their_majority_vote_half_resolution_copy():
    module = _tiny_module(stable_kimg=1, transition_kimg=1, lowres_labels="majority")
    stage = module.schedule.at(1750)  # 8x8 fading in, alpha 0.75
    assert (stage.resolution, stage.alpha) == (8, 0.75)
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 0, 0] = 6  # one CSF pixel in a background block: the block stays background
    labels[0, 4:6, 4:6] = torch.tensor([[3, 3], [3, 1]])  # majority 3
    reals = module._prepare_reals(labels, stage)
    assert reals.shape == (1, 1, 8, 8)
    # Network values: class c -> c / 3 - 1. Faded = 0.25 * low + 0.75 * high.
    assert reals[0, 0, 0, 0].item() == pytest.approx(0.25 * -1 + 0.75 * 1)
    assert reals[0, 0, 0, 1].item() == pytest.approx(-1.0)
    assert reals[0, 0, 5, 5].item() == pytest.approx(0.25 * 0 + 0.75 * (1 / 3 - 1))
    assert reals[0, 0, 4, 4].item() == pytest.approx(0.0)
    # A batch still at 4x4 (prefetched before the growth) is brought to 8x8 first.
    assert module._prepare_reals(torch.zeros(2, 4, 4, dtype=torch.long), stage).shape == (2, 1, 8, 8)


def test_ema_update_moves_by_one_minus_decay():
    module = _tiny_module(ema_decay=0.9)
    with torch.no_grad():
        for ema, live in zip(module.generator_ema.parameters(), module.generator.parameters(), strict=True):
            ema.fill_(1.0)
            live.fill_(3.0)
    module._update_ema()
    for ema in module.generator_ema.parameters():
        assert torch.allclose(ema, torch.full_like(ema, 1.0 + 0.1 * 2.0))
    assert not any(p.requires_grad for p in module.generator_ema.parameters())


def test_schedule_is_evaluated_once_per_group_of_minibatches():
    # 16 + 16 images per phase, minibatch 8: a group of 4 minibatches spans the whole 8x8 fade-in.
    def resolutions(repeats: int) -> list[tuple[int, float]]:
        module = _tiny_module(
            stable_kimg=0.016, transition_kimg=0.016, batch_sizes={4: 8, 8: 8}, minibatch_repeats=repeats
        )
        seen = []
        for _ in range(8):
            if module.group_done:
                module.stage_images = module.images_seen
            seen.append((module.stage.resolution, module.stage.alpha))
            module.images_seen += 8
            module.steps += 1
        return seen

    # One minibatch per group: the fade-in is seen half-way (24 images); at 16 it has not started yet.
    assert resolutions(1) == [(4, 1.0), (4, 1.0), (4, 1.0), (8, 0.5), (8, 1.0), (8, 1.0), (8, 1.0), (8, 1.0)]
    assert resolutions(4) == [(4, 1.0)] * 4 + [(8, 1.0)] * 4
