"""The paper's experiments run the faithful settings (docs/fidelity.md), and each improvement is one switch away.

Every paper experiment is composed as a user gets it and its faithful values asserted; each switch has a test
of what it does (PGAN's low-resolution reals, SWD sample size, snapshot selection, the filter's reference,
SPADE's batch on two V100s, the U-Net's Keras-style evaluation, the paper's HGG cohort).
"""

from __future__ import annotations

import dataclasses
import inspect
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

from synthseg.data.labels import block_mean_labels, labels_to_net
from synthseg.errors import InputError
from synthseg.losses.dice import WeightedDiceError, weighted_dice_from_sums
from synthseg.metrics.dice_error import EvalDiceError, batch_mean_dice_error
from synthseg.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]


def compose_raw(name: str, overrides: list[str]) -> DictConfig:
    """A config exactly as the command line composes it (no test shrinking)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            return compose(config_name=name, overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


# ------------------------------------------------------------------------ the paper's experiments, composed
@pytest.mark.parametrize("experiment", ["pgan_full", "pgan_reduced"])
def test_pgan_experiments_are_faithful(experiment: str) -> None:
    cfg = compose_raw("train", [f"experiment={experiment}"])
    assert cfg.model.lowres_labels == "average"
    assert cfg.model.swd_images == 16384
    # The switches beyond the paper are off: one channel of class indices, no position, no augmentation.
    assert (cfg.model.label_encoding, cfg.model.condition, cfg.model.augment) == ("index", "none", "none")
    assert (cfg.model.generator.label_encoding, cfg.model.discriminator.condition) == ("index", "none")


# Each preset beyond the paper is its paper experiment with its switches on, and nothing else changed.
PRESETS_BEYOND_THE_PAPER = {
    # one-hot classes, slice position, ADA (docs/masks.md)
    "pgan_full_masks": (
        "pgan_full",
        {
            **dict.fromkeys(
                (
                    "model.label_encoding",
                    "model.generator.label_encoding",
                    "model.discriminator.label_encoding",
                ),
                "onehot",
            ),
            **dict.fromkeys(
                ("model.condition", "model.generator.condition", "model.discriminator.condition"), "slice"
            ),
            "model.augment": "ada",
        },
    ),
    # synthseg demo profile=long's PGAN and SPADE (conf/profile/long.yaml)
    "pgan_full_anatomical": (
        "pgan_full",
        dict.fromkeys(("model.generator.index_order", "model.discriminator.index_order"), "anatomical"),
    ),
    "spade_full_segmenter": ("spade_full", {"model.lambda_seg": 30}),
}


@pytest.mark.parametrize("preset", sorted(PRESETS_BEYOND_THE_PAPER))
def test_a_preset_beyond_the_paper_is_its_paper_experiment_with_the_switches_only(preset: str) -> None:
    def flat(cfg: object, prefix: str = "") -> dict[str, object]:
        if isinstance(cfg, dict):
            return {k: v for key, value in cfg.items() for k, v in flat(value, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): cfg}

    def sections(experiment: str) -> dict[str, object]:
        cfg = compose_raw("train", [f"experiment={experiment}"])
        resolved = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "data")}
        return flat({**resolved, "trainer": OmegaConf.to_container(cfg.trainer), "task_name": cfg.task_name})

    experiment, switches = PRESETS_BEYOND_THE_PAPER[preset]
    paper, beyond = sections(experiment), sections(preset)
    changed = {k for k in paper.keys() | beyond.keys() if paper.get(k) != beyond.get(k)}
    assert changed == {"task_name", *switches}
    assert {k: beyond[k] for k in switches} == switches
    assert beyond["task_name"] == preset


@pytest.mark.parametrize("experiment", ["spade_full", "spade_reduced"])
def test_spade_experiments_keep_the_official_batch_and_run_on_two_v100(experiment: str) -> None:
    one = compose_raw("train", [f"experiment={experiment}"])
    assert one.data.batch_size == 1 and one.trainer.devices == 1
    two = compose_raw("train", [f"experiment={experiment}", "trainer=v100x2"])
    batch = two.data.batch_size  # the composed value itself: no resolver, no code
    assert isinstance(batch, int) and batch == 2 and two.trainer.devices == 2
    assert batch % (two.trainer.devices * two.trainer.num_nodes) == 0  # what the DDP batch sampler requires
    # A batch on the command line still wins.
    assert (
        compose_raw(
            "train", [f"experiment={experiment}", "trainer=v100x2", "data.batch_size=4"]
        ).data.batch_size
        == 4
    )


def test_table1_evaluates_as_keras() -> None:
    cfg = compose_raw("train", ["experiment=table1"])
    assert (cfg.model.eval_reduction, cfg.model.eval_batch_size) == ("batch_mean", 32)
    # Keras' Adam: lr 1e-4 (the paper), epsilon 1e-7 (Keras' default, not PyTorch's 1e-8); batch 8, 150 epochs.
    assert (cfg.model.optimizer.lr, cfg.model.optimizer.eps) == (1e-4, 1e-7)
    assert (cfg.data.batch_size, cfg.trainer.max_epochs) == (8, 150)
    assert cfg.callbacks.model_checkpoint.monitor == "val/loss"
    # the paper's input scaling and loss: one training maximum, weighted Dice alone
    assert (cfg.data.image_norm, cfg.model.ce_weight) == ("paper", 0.0)


def test_commands_default_to_the_paper() -> None:
    assert compose_raw("select", ["run=R"]).full_resolution_only is False
    assert compose_raw("filter", ["masks=M", "reference=R", "output=O"]).include_empty is True
    synth = compose_raw("synthesize", ["pgan=P", "spade=S", "reference=R", "output=O"])
    assert synth.full_resolution_only is False and synth.include_empty is True and synth.min_island == 0
    assert compose_raw("generate_masks", ["checkpoint=C", "count=1", "output=O"]).min_island == 0


def test_python_defaults_match_the_yaml() -> None:
    from synthseg.data.datamodule import BraTSDataModule
    from synthseg.models.pgan import PGAN
    from synthseg.models.unet import UNetModule
    from synthseg.synth.filter import FilterSettings
    from synthseg.synth.select import SelectSettings
    from synthseg.synth.synthesize import SynthesizeSettings

    def default(func: Any, name: str) -> Any:
        return inspect.signature(func).parameters[name].default

    def field(cls: Any, name: str) -> Any:
        return {f.name: f.default for f in dataclasses.fields(cls)}[name]

    assert default(PGAN, "lowres_labels") == "average" and default(PGAN, "swd_images") == 16384
    assert (
        default(UNetModule, "eval_reduction") == "batch_mean" and default(UNetModule, "eval_batch_size") == 32
    )
    # The settings classes are the only Python way in (their run takes nothing else).
    assert field(SelectSettings, "full_resolution_only") is False
    assert field(FilterSettings, "include_empty") is True
    assert field(SynthesizeSettings, "include_empty") is True
    assert field(SynthesizeSettings, "full_resolution_only") is False
    assert field(SynthesizeSettings, "min_island") == 0
    assert default(UNetModule, "ce_weight") == 0.0 and default(BraTSDataModule, "image_norm") == "paper"


def test_the_demo_says_which_improvements_it_uses() -> None:
    from synthseg.demo import DEMO_CHOICES

    cfg = compose_raw("train", ["experiment=pgan_demo"])
    assert cfg.model.lowres_labels == "majority" and cfg.model.swd_images < 16384
    unet = compose_raw("train", ["experiment=table1_demo"])
    assert (unet.data.image_norm, unet.model.ce_weight) == ("zscore", 1.0)
    for said in (
        "lowres_labels=majority",
        "swd_images",
        "full_resolution_only=true",
        "synthetic.min_island",
        "image_norm=zscore",
        "ce_weight=1",
        "docs/fidelity.md",
    ):
        assert said in DEMO_CHOICES
    readme = (ROOT / "README.md").read_text()
    demo = readme[readme.index("## The demo") :]
    assert "lowres_labels=majority" in demo and "docs/fidelity.md" in demo and "min_island" in demo
    assert "image_norm=zscore" in demo and "ce_weight=1" in demo


@pytest.mark.slow
def test_the_demo_clears_islands_from_its_masks_and_passes_the_switch(tmp_path: Path, monkeypatch) -> None:
    from synthseg import demo as pipeline
    from synthseg.synth import synthesize as synthesize_module

    cfg = pipeline.DemoSettings.from_config(pipeline.compose_config("demo", [f"output={tmp_path}"]))
    assert cfg.synthetic.min_island == 8
    seen: dict[str, Any] = {}
    monkeypatch.setattr(synthesize_module, "run", lambda settings: seen.update(vars(settings)))
    stages = {stage.output: stage for stage in pipeline.build_stages(cfg)}
    stages["synthetic"].run(tmp_path)
    assert seen["min_island"] == 8 and seen["full_resolution_only"] is True


@pytest.mark.slow
def test_the_demo_trains_the_papers_pgan_unless_given_mask_switches(tmp_path: Path, monkeypatch) -> None:
    from synthseg import demo as pipeline

    seen: list[list[str]] = []
    monkeypatch.setattr(pipeline, "_train", lambda overrides, out: seen.append(list(overrides)))
    switches = "pgan_switches=[" + ",".join(f"'{s}'" for s in pipeline.MASK_SWITCHES) + "]"
    for extra in ([], [switches]):
        cfg = pipeline.DemoSettings.from_config(
            pipeline.compose_config("demo", [f"output={tmp_path}", *extra])
        )
        {stage.output: stage for stage in pipeline.build_stages(cfg)}["pgan"].run(tmp_path)
    paper, switched = seen
    assert not set(pipeline.MASK_SWITCHES) & set(paper) and set(pipeline.MASK_SWITCHES) <= set(switched)
    # the switches compose into a PGAN with one-hot classes, the slice position and ADA
    model = compose_raw("train", [s for s in switched if not s.startswith(("data.", "seed"))]).model
    assert (model.label_encoding, model.condition, model.augment) == ("onehot", "slice", "ada")
    assert (
        compose_raw("train", [s for s in paper if not s.startswith(("data.", "seed"))]).model.label_encoding
        == "index"
    )
    with pytest.raises(InputError, match="pgan_switches"):
        pipeline.DemoSettings.from_config(
            pipeline.compose_config("demo", [f"output={tmp_path}", "pgan_switches=[x]"])
        )


def test_the_demo_trains_spade_as_its_experiment_unless_given_switches(tmp_path: Path, monkeypatch) -> None:
    from synthseg import demo as pipeline

    seen: list[list[str]] = []
    monkeypatch.setattr(pipeline, "_train", lambda overrides, out: seen.append(list(overrides)))
    switches = "spade.switches=['model.lambda_l1=100','model.lambda_gan=0.1']"
    for extra in ([], [switches]):
        cfg = pipeline.DemoSettings.from_config(
            pipeline.compose_config("demo", [f"output={tmp_path}", *extra])
        )
        {stage.output: stage for stage in pipeline.build_stages(cfg)}["spade"].run(tmp_path)
    plain, switched = seen
    assert not any(s.startswith(("model.lambda_l1", "model.lambda_gan")) for s in plain)
    assert switched[-2:] == ["model.lambda_l1=100", "model.lambda_gan=0.1"]  # after the demo's own overrides
    keep = [s for s in switched if not s.startswith(("data.", "seed"))]
    model = compose_raw("train", keep).model
    assert (model.lambda_l1, model.lambda_gan) == (100, 0.1)
    paper = compose_raw("train", [s for s in plain if not s.startswith(("data.", "seed"))]).model
    assert (paper.lambda_l1, paper.lambda_gan) == (0.0, 1.0)
    with pytest.raises(InputError, match="spade.switches"):
        pipeline.DemoSettings.from_config(
            pipeline.compose_config("demo", [f"output={tmp_path}", "spade.switches=['lambda_gan=1']"])
        )


# ---------------------------------------------------------------------------------- 1. PGAN low-res reals
def _tiny_pgan(**kwargs: Any) -> Any:
    from synthseg.models.pgan import PGAN
    from synthseg.networks.pgan import PGANDiscriminator, PGANGenerator

    adam = partial(torch.optim.Adam, lr=1e-3, betas=(0.0, 0.99))
    resolution = kwargs.pop("resolution", 8)
    return PGAN(
        PGANGenerator(resolution=resolution, latent_dim=4, fmap_base=16, fmap_max=4),
        PGANDiscriminator(resolution=resolution, fmap_base=16, fmap_max=4),
        adam,
        adam,
        **kwargs,
    )


def test_block_means_are_unrounded_means_of_the_full_resolution_block() -> None:
    labels = torch.tensor([[[0, 6, 1, 1], [6, 6, 2, 2], [0, 0, 3, 3], [1, 1, 3, 3]]])
    assert block_mean_labels(labels, 2).tolist() == [[[4.5, 1.5], [0.5, 3.0]]]
    assert block_mean_labels(labels, 1).tolist() == [[[2.375]]]  # 38 / 16: one mean, as repeated 2x2 means
    with pytest.raises(ValueError, match="cannot be block-averaged"):
        block_mean_labels(labels, 3)


def test_average_reals_are_the_official_levels_of_detail_and_fade() -> None:
    module = _tiny_pgan(stable_kimg=1, transition_kimg=1)  # default: average
    assert module.lowres_labels == "average"
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 0:2, 0:2] = torch.tensor([[0, 6], [6, 6]])  # block mean 4.5 -> rounds half to even: 4
    labels[0, 2:4, 0:2] = torch.tensor([[1, 1], [2, 2]])  # 1.5 -> 2
    labels[0, 4:6, 4:6] = torch.tensor([[3, 3], [3, 1]])  # 2.5 -> 2 (majority vote would say 3)
    # 4x4, stable: the stored level of detail, rint of the 2x2 block means (dataset_tool.py stores uint8).
    stage4 = module.schedule.at(500)
    assert (stage4.resolution, stage4.alpha) == (4, 1.0)
    reals4 = module._prepare_reals(labels, stage4)
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 0], expected[0, 1, 0], expected[0, 2, 2] = 4.0, 2.0, 2.0
    torch.testing.assert_close(reals4, labels_to_net(expected, 7))
    # 8x8 fading in at alpha 0.75: lerp(2x2 mean of the network values, unrounded, nearest-up; reals, alpha).
    stage8 = module.schedule.at(1750)
    assert (stage8.resolution, stage8.alpha) == (8, 0.75)
    reals8 = module._prepare_reals(labels, stage8)
    high = labels_to_net(labels, 7)
    low = torch.nn.functional.avg_pool2d(high, 2).repeat_interleave(2, -2).repeat_interleave(2, -1)
    torch.testing.assert_close(reals8, 0.25 * low + 0.75 * high)
    # One value by hand: pixel (0, 0) is class 0 (-1), its block mean 4.5 is 0.5 in the network range.
    assert reals8[0, 0, 0, 0].item() == pytest.approx(0.25 * 0.5 + 0.75 * -1.0)


def test_majority_switch_keeps_the_documented_improvement() -> None:
    module = _tiny_pgan(stable_kimg=1, transition_kimg=1, lowres_labels="majority")
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 4:6, 4:6] = torch.tensor([[3, 3], [3, 1]])
    reals4 = module._prepare_reals(labels, module.schedule.at(500))
    assert reals4[0, 0, 2, 2].item() == pytest.approx(0.0)  # class 3 by majority (average: 2)
    with pytest.raises(ValueError, match="lowres_labels"):
        _tiny_pgan(lowres_labels="mean")


class _Feed:
    """Stands in for the DataModule: records what resolution and batch the model asks for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def set_resolution(self, resolution: int) -> None:
        self.calls.append(("resolution", resolution))

    def set_batch_size(self, batch_size: int) -> None:
        self.calls.append(("batch", batch_size))


@pytest.mark.parametrize(("mode", "served"), [("average", 8), ("majority", 4)])
def test_average_asks_the_datamodule_for_full_resolution_labels(mode: str, served: int) -> None:
    module = _tiny_pgan(lowres_labels=mode, batch_sizes={4: 16, 8: 8})
    module._feed = _Feed()
    module._serve(module.schedule.at(0))  # 4x4 stage of an 8x8 generator
    assert module._feed.calls == [("resolution", served), ("batch", 16)]


@pytest.mark.slow
def test_official_tick_schedule_gives_the_papers_205_ticks_and_tick_86() -> None:
    from types import SimpleNamespace

    from synthseg.models.pgan_ticks import PGANTicks
    from synthseg.progressive import ProgressiveSchedule

    ticks: list[int] = []
    pgan = SimpleNamespace(
        group_done=True,
        schedule=ProgressiveSchedule(256),
        stage_images=0,
        images_seen=0,
        total_images=12_000_000,
        tick_start_images=0,
    )

    class Recorder(PGANTicks):
        def tick(self, trainer: Any, pgan: Any, stage: Any, done: bool) -> None:
            ticks.append(pgan.images_seen)
            pgan.tick_start_images = pgan.images_seen

    recorder = Recorder()
    while pgan.images_seen < pgan.total_images:  # one group of minibatch_repeats = 4 minibatches per pass
        pgan.stage_images = pgan.images_seen
        pgan.images_seen += 4 * pgan.schedule.at(pgan.stage_images).batch_size
        recorder.on_train_batch_end(None, pgan, None, None, 0)  # type: ignore[arg-type]
    # The paper: 205 ticks to 12,000 kimg, best snapshot at tick 86 (about 7,240 kimg), reduced at tick 89.
    assert len(ticks) == 205 and ticks[-1] == 12_000_000
    assert (ticks[85], ticks[88]) == (7_240_096, 7_360_096)


# ------------------------------------------------------------------------------------------ 2. SWD reals
class _Reals:
    """A training set of 5 label maps that records which items the SWD reads."""

    def __init__(self) -> None:
        self.read: list[int] = []

    def __len__(self) -> int:
        return 5

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, size = key
        self.read.append(index)
        label = torch.zeros(size, size, dtype=torch.long)
        label[: index + 2, : index + 2] = index + 1
        return {"label": label}


def test_swd_reals_repeat_in_order_up_to_swd_images() -> None:
    from synthseg.models.pgan_ticks import PGANTicks, swd_real_indices

    module = _tiny_pgan(resolution=16, swd_images=12, swd_batch_size=8)
    module.reals = _Reals()
    swd = PGANTicks().measure_swd(module, module.schedule.at(0))
    assert swd is not None and swd["avg"] > 0
    # 12 reals from a set of 5: the set repeats from the start, as the official evaluation's dataset does.
    assert module.reals.read == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    # The paper's reduced instance: 4,404 reals, 16,384 per SWD set: each real 3 or 4 times.
    counts = torch.bincount(torch.tensor(swd_real_indices(4404, 16384)))
    assert len(counts) == 4404 and set(counts.tolist()) == {3, 4} and int(counts.sum()) == 16384
    assert swd_real_indices(10, 4) == [0, 1, 2, 3]


def test_swd_constant_channel_is_a_point_mass_not_nan() -> None:
    from synthseg.metrics.sliced_wasserstein import normalize_descriptors

    desc = torch.full((6, 3, 49), 7.0)  # e.g. a level of all-background masks: std 0 in every channel
    desc[:, 1] = torch.arange(6 * 49, dtype=torch.float32).reshape(6, 49)
    out = normalize_descriptors(desc).reshape(6, 3, 49)
    assert torch.isfinite(out).all() and out[:, 0].eq(0).all() and out[:, 2].eq(0).all()
    assert out[:, 1].std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


# ----------------------------------------------------------------------- 3./4. synthesize passes both on
def test_synthesize_selects_among_all_ticks_and_filters_against_every_real(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from synthseg.synth import filter as zfilter
    from synthseg.synth import generate_masks as masks
    from synthseg.synth import select, synthesize

    seen: dict[str, Any] = {}

    class Stop(Exception):
        pass

    def fake_select(settings: Any) -> dict[str, Any]:
        seen["full_resolution_only"] = settings.full_resolution_only
        return {"snapshot": str(tmp_path / "best.pt")}

    def fake_masks(settings: Any) -> Path:
        seen["checkpoint"] = str(settings.checkpoint)
        return Path(settings.output)

    def fake_filter(settings: Any) -> None:
        seen["include_empty"] = settings.include_empty
        raise Stop

    monkeypatch.setattr(select, "run", fake_select)
    monkeypatch.setattr(masks, "run", fake_masks)
    monkeypatch.setattr(zfilter, "run", fake_filter)
    # The inputs here are empty stand-ins: what is checked is what synthesize hands on, not its input checks.
    monkeypatch.setattr(synthesize.SynthesizeSettings, "check_inputs", lambda self: None)
    for name in ("pgan_run", "reference"):
        (tmp_path / name).mkdir()
    (tmp_path / "spade.ckpt").write_bytes(b"")
    paths = [f"pgan={tmp_path / 'pgan_run'}", f"spade={tmp_path / 'spade.ckpt'}"]
    paths += [f"reference={tmp_path / 'reference'}", f"output={tmp_path / 'out'}", "count=10"]
    with pytest.raises(Stop):
        synthesize.main(compose_raw("synthesize", paths))
    assert seen == {
        "full_resolution_only": False,
        "checkpoint": str(tmp_path / "best.pt"),
        "include_empty": True,
    }
    with pytest.raises(Stop):
        synthesize.main(
            compose_raw("synthesize", [*paths, "full_resolution_only=true", "include_empty=false"])
        )
    assert seen["full_resolution_only"] is True and seen["include_empty"] is False


# ------------------------------------------------------------------------------ 6. U-Net evaluation (Keras)
def _sums(seed: int, count: int, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(count, classes, 4, 4, generator=gen), dim=1).double()
    target = torch.nn.functional.one_hot(torch.randint(0, classes, (count, 4, 4), generator=gen), classes)
    return probs, target.permute(0, 3, 1, 2).double()


def test_batch_mean_is_keras_evaluate_by_hand() -> None:
    probs, target = _sums(0, 5)
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)

    def loss(rows: slice) -> torch.Tensor:
        p, t = probs[rows], target[rows]
        return weighted_dice_from_sums((p * t).sum((0, 2, 3)), (p + t).sum((0, 2, 3)), weights)

    # Batches of 2: slices {0, 1}, {2, 3}, {4}; Keras weights each batch's loss by its size.
    expected = (2 * loss(slice(0, 2)) + 2 * loss(slice(2, 4)) + 1 * loss(slice(4, 5))) / 5
    inter, total = (probs * target).sum((2, 3)), (probs + target).sum((2, 3))
    torch.testing.assert_close(batch_mean_dice_error(inter, total, weights, 2), expected)
    # Fed in another order, in other loader batches, with a slice seen twice (DDP): the same value.
    metric = EvalDiceError(weights, "batch_mean", batch_size=2)
    for rows in ([4, 1], [0, 2, 3], [1]):
        metric.update(probs[rows], target[rows], torch.tensor(rows))
    torch.testing.assert_close(metric.compute(), expected)
    # One batch of 32 holds the whole set: the same as the dataset reduction.
    whole = EvalDiceError(weights, "batch_mean", batch_size=32)
    whole.update(probs, target, torch.arange(5))
    torch.testing.assert_close(whole.compute(), loss(slice(0, 5)))
    assert not torch.allclose(expected, loss(slice(0, 5)))  # the reductions differ in general


def test_dataset_switch_is_one_weighted_dice_over_the_set() -> None:
    probs, target = _sums(1, 7)
    weights = torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64)
    metric = EvalDiceError(weights, "dataset", batch_size=2)
    reference = WeightedDiceError(weights)
    for rows in ([0, 1, 2], [3, 4, 5, 6]):
        metric.update(probs[rows], target[rows], torch.tensor(rows))
        reference.update(probs[rows], target[rows])
    torch.testing.assert_close(metric.compute(), reference.compute())
    with pytest.raises(ValueError, match="eval_reduction"):
        EvalDiceError(weights, "mean")
    with pytest.raises(ValueError, match="eval_batch_size"):
        EvalDiceError(weights, "batch_mean", batch_size=0)


def test_unet_validates_and_tests_with_the_configured_reduction() -> None:
    from hydra.utils import instantiate

    cfg = compose_raw("train", ["model=unet", "model.net.base_width=2"])
    module = instantiate(cfg.model, _convert_="partial")
    for metric in (module.val_dice_error, module.test_dice_error, module.test_dice_error_fixed):
        assert (metric.reduction, metric.batch_size) == ("batch_mean", 32)
    switched_cfg = compose_raw(
        "train", ["model=unet", "model.net.base_width=2", "model.eval_reduction=dataset"]
    )
    switched = instantiate(switched_cfg.model, _convert_="partial")
    assert switched.val_dice_error.reduction == "dataset"


# ------------------------------------------------------------------------------------ 8. the HGG cohort
def test_paper_cohort_is_hgg_with_release_autodetection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.helpers.releases import run, tree_2018

    source, cases = tree_2018(tmp_path / "brats2018")
    record, rows = run(source, tmp_path / "prepared", monkeypatch, convention="auto", groups=["HGG"])
    # The BraTS 2018 preset, recognised, with the groups narrowed (recorded as "brats2018+custom").
    assert record["release"]["preset"].startswith("brats2018")
    assert {row["case"] for row in rows} == {"Brats18_2013_2_1"}  # the HGG case; the LGG one is left out
    _, everything = run(source, tmp_path / "all", monkeypatch, convention="auto")
    assert {row["case"] for row in everything} == set(cases)


def test_paper_commands_write_the_hgg_selection() -> None:
    readme = (ROOT / "README.md").read_text()
    pipeline = readme[readme.index("## The pipeline on BraTS 2018") :]
    pipeline = pipeline[: pipeline.index("\n## ", 1)]
    assert "groups=[HGG]" in pipeline
    fidelity = (ROOT / "docs" / "fidelity.md").read_text()
    assert "groups=[HGG]" in fidelity
    assert "docs/fidelity.md" in readme[readme.index("## Faithful first") :]
