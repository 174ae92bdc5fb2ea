"""``auto`` fast paths: chosen by measurement among candidates that agree, cached per machine, recorded in the
run, without touching the run's weights or random streams."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from synthseg.checkpoint import safe_load
from synthseg.models.fastpaths import candidates, resolve_fast_paths, take_auto
from synthseg.train import train
from synthseg.utils import autotune
from synthseg.utils.autotune import Candidate, choose
from tests.conftest import compose_train
from tests.helpers.presets import PGAN_TINY, SPADE_TINY

pytestmark = pytest.mark.usefixtures("single_thread")

FAITHFUL, NHWC, COMPILED = Candidate(), Candidate(channels_last=True), Candidate(compile=True)
UNET = ["model=unet", "model.net.base_width=4", "data.batch_size=8", "data.resolution=16"]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """A fake clock for autotune's timing: steps advance it by their declared cost."""
    now = [0.0]
    monkeypatch.setattr(autotune.time, "perf_counter", lambda: now[0])
    return now


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SYNTHSEG_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / autotune.CACHE_NAME


def fake_build(
    clock: list[float], costs: dict[Candidate, float], outputs: dict[Candidate, float], built: list
):
    def build(candidate: Candidate):
        built.append(candidate)

        def step() -> list[torch.Tensor]:
            clock[0] += costs[candidate]
            return [torch.tensor([outputs.get(candidate, 1.0), 2.0])]

        return step

    return build


def test_auto_keeps_the_fastest_candidate_that_agrees(clock: list[float], cache: Path) -> None:
    costs = {FAITHFUL: 3.0, NHWC: 1.0, COMPILED: 0.5}
    outputs = {COMPILED: 1.5}  # the fastest computes something else: refused
    built: list[Candidate] = []
    choice = choose(
        fake_build(clock, costs, outputs, built),
        [FAITHFUL, NHWC, COMPILED],
        {"model": "m"},
        torch.device("cpu"),
        steps=3,
    )
    assert choice.candidate == NHWC and choice.source == "measured"
    assert choice.seconds == {FAITHFUL.label(): 3.0, NHWC.label(): 1.0}
    assert "differs by 0.5" in choice.refused[COMPILED.label()]
    line = choice.line("UNetModule")
    assert "channels_last, eager, 32-true" in line and "0.33x the faithful path" in line and "refused" in line
    # A candidate within float32 rounding agrees; reduced precision has its own, wider tolerance.
    assert autotune.agree([torch.tensor([1.0])], [torch.tensor([1.0 + 1e-6])], reduced=False) is None
    assert autotune.agree([torch.tensor([1.0])], [torch.tensor([1.01])], reduced=False) is not None
    assert autotune.agree([torch.tensor([1.0])], [torch.tensor([1.01])], reduced=True) is None
    # Ties go to the faithful path; a candidate that fails to build is refused, not fatal.
    costs = {FAITHFUL: 1.0, NHWC: 1.0}
    assert (
        choose(
            fake_build(clock, costs, {}, []), [FAITHFUL, NHWC], {"model": "tie"}, torch.device("cpu")
        ).candidate
        == FAITHFUL
    )

    def broken(candidate: Candidate):
        if candidate.compile:
            raise RuntimeError("no C++ compiler")
        return fake_build(clock, {FAITHFUL: 1.0}, {}, [])(candidate)

    choice = choose(broken, [FAITHFUL, COMPILED], {"model": "broken"}, torch.device("cpu"))
    assert choice.candidate == FAITHFUL and "no C++ compiler" in choice.refused[COMPILED.label()]


def test_second_call_takes_the_cache_without_timing(
    clock: list[float], cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    costs = {FAITHFUL: 2.0, NHWC: 1.0}
    first = choose(fake_build(clock, costs, {}, []), [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu"))
    assert first.source == "measured" and cache.is_file()
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["candidate"]["channels_last"] is True and entry["seconds"] and entry["key"]["model"] == "m"

    def no_timing(*args, **kwargs):
        raise AssertionError("measured again")

    monkeypatch.setattr(autotune, "measure", no_timing)
    built: list[Candidate] = []
    second = choose(
        fake_build(clock, costs, {}, built), [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu")
    )
    assert second.source == "cached" and second.candidate == NHWC and built == []
    assert "cached for this machine" in second.line("m")


@pytest.mark.parametrize(
    "part, value",
    [
        ("cpu_flags", "0123456789ab"),
        ("cpu_capability", "AVX2"),
        ("cpu", "Another CPU"),
    ],
)
def test_the_cache_is_keyed_on_the_machine(
    clock: list[float], cache: Path, monkeypatch: pytest.MonkeyPatch, part: str, value: str
) -> None:
    costs = {FAITHFUL: 2.0, NHWC: 1.0}
    build = fake_build(clock, costs, {}, [])
    assert choose(build, [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu")).source == "measured"
    assert choose(build, [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu")).source == "cached"
    original = autotune._cpu_description
    monkeypatch.setattr(autotune, "_cpu_description", lambda: {**original(), part: value})
    assert choose(build, [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu")).source == "measured"
    # The torch version, the thread count and the model are parts of the key too.
    monkeypatch.setattr(autotune.torch, "__version__", "0.0.0")
    assert choose(build, [FAITHFUL, NHWC], {"model": "m"}, torch.device("cpu")).source == "measured"
    assert choose(build, [FAITHFUL, NHWC], {"model": "other"}, torch.device("cpu")).source == "measured"
    assert len(json.loads(cache.read_text())) == 4


def _rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002


def test_measuring_leaves_the_runs_weights_and_random_streams_alone(tmp_path: Path, cache: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_train([*UNET, "model.channels_last=auto"], tmp_path)
    auto = take_auto(cfg)
    assert auto == {"channels_last"} and cfg.model.channels_last is False
    model = instantiate(cfg.model, _convert_="partial")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123), np.random.seed(7), random.seed(5)  # noqa: NPY002
    before = _rng_states()
    choice = resolve_fast_paths(cfg, auto, model, batch_size=4, size=16)
    assert choice is not None and choice.source == "measured"
    assert set(choice.seconds) | set(choice.refused) == {FAITHFUL.label(), NHWC.label()}
    after = _rng_states()
    assert torch.equal(before[0], after[0]) and np.array_equal(before[1], after[1]) and before[2] == after[2]
    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key
    # The choice is applied to the model and the config, and recorded in the module's hyperparameters.
    assert cfg.model.channels_last is choice.candidate.channels_last
    assert model.hparams.channels_last is choice.candidate.channels_last


def test_candidates_follow_the_config(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    cfg = compose_train([*UNET, "model.channels_last=auto", "model.compile=false"], tmp_path)
    auto = take_auto(cfg)
    model = instantiate(cfg.model, _convert_="partial")
    assert candidates(cfg, auto, model, torch.device("cpu")) == [FAITHFUL, NHWC]
    # Reduced precision: CUDA only, and only where the run allows it.
    cfg = compose_train([*UNET, "trainer.precision=auto", "fastpath.reduced_precision=true"], tmp_path)
    assert candidates(cfg, take_auto(cfg), model, torch.device("cpu")) == [FAITHFUL]


PGAN_MASKS = [*PGAN_TINY, "model.label_encoding=onehot", "model.condition=slice", "model.augment=ada"]


@pytest.mark.parametrize(
    "model_overrides",
    [
        PGAN_TINY,
        PGAN_MASKS,
        [*PGAN_TINY, "model.generator.index_order=anatomical"],
        SPADE_TINY,
        [*SPADE_TINY, "model.lambda_l1=100"],
    ],
    ids=["pgan", "pgan_onehot_slice_ada", "pgan_anatomical", "spade", "spade_l1"],
)
def test_gan_probes_run_their_training_step_in_both_layouts(
    tmp_path: Path, cache: Path, model_overrides: list[str]
) -> None:
    from hydra.utils import instantiate

    cfg = compose_train([*model_overrides, "model.channels_last=auto"], tmp_path)
    auto = take_auto(cfg)
    model = instantiate(cfg.model, _convert_="partial")
    choice = resolve_fast_paths(cfg, auto, model, batch_size=2, size=32)
    assert choice is not None and choice.source == "measured"
    assert not choice.refused, choice.refused  # NHWC computes the same step
    assert model.hparams.channels_last is choice.candidate.channels_last


@pytest.mark.slow
def test_a_run_records_the_choice_and_a_resume_takes_it(
    tiny_dataset: Path, tmp_path: Path, cache: Path
) -> None:
    overrides = [*UNET, f"data.root={tiny_dataset}", "trainer.max_epochs=1", "model.channels_last=auto"]
    cfg = compose_train(overrides, tmp_path)
    train(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    chosen = results["fastpath"]["candidate"]["channels_last"]
    assert results["config"]["model"]["channels_last"] is chosen
    ckpt = safe_load(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert ckpt["fastpath"]["candidate"]["channels_last"] is chosen
    assert ckpt["hyper_parameters"]["channels_last"] is chosen
    # Resume: the checkpoint's choice, even where this machine's cache says otherwise.
    entry_id, entry = next(iter(json.loads(cache.read_text()).items()))
    entry["candidate"]["channels_last"] = not chosen
    cache.write_text(json.dumps({entry_id: entry}))
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    resumed = compose_train([*overrides, "trainer.max_epochs=2", f"ckpt_path={last}"], tmp_path / "resumed")
    train(resumed)
    results = json.loads((tmp_path / "resumed" / "run" / "results.json").read_text())
    assert results["fastpath"]["source"] == "recorded"
    assert results["fastpath"]["candidate"]["channels_last"] is chosen
