"""A training run killed with SIGKILL after a checkpoint resumes (ckpt_path=last) to the state of an
uninterrupted run: one harness, parametrised over the U-Net, PGAN (generator, EMA and discriminator weights,
both Adam states, kimg, resolution and alpha) and SPADE (weights, Adam states, the learning-rate schedule)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from synthseg.checkpoint import safe_load
from synthseg.progressive import ProgressiveSchedule
from tests.conftest import kill_when, write_dataset

ROOT = Path(__file__).resolve().parents[1]


def _command(data: Path, logs: Path, *extra: str) -> list[str]:
    # Ticks every 24 images, 8 images per step, the schedule checked every step: no tick falls on a change
    # of phase (64 and 128 images), where a resume would draw its first batch at the new size at once.
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=pgan_demo",
        f"data.root={data}",
        "data.resolution=null",
        f"paths.log_dir={logs}",
        "torch_threads=1",
        "model.generator.resolution=8",
        "model.generator.latent_dim=8",
        "model.generator.fmap_base=32",
        "model.generator.fmap_max=8",
        "model.stable_kimg=0.064",
        "model.transition_kimg=0.064",
        "model.total_kimg=0.144",
        "model.batch_sizes={4: 8, 8: 8}",
        "model.tick_kimg={4: 0.024, 8: 0.024}",
        "model.minibatch_repeats=1",
        "model.swd_images=0",
        "model.grid_size=[2, 2]",
        "trainer.enable_progress_bar=false",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


def _last(logs: Path) -> Path:
    return sorted(logs.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


def _position(ckpt: dict) -> tuple[int, int, float, float]:
    hp = ckpt["hyper_parameters"]
    images = int(ckpt["pgan"]["images_seen"])
    stage = ProgressiveSchedule(
        8, 4, hp["stable_kimg"], hp["transition_kimg"], hp["batch_sizes"], hp["tick_kimg"]
    )
    at = stage.at(images)
    return images, at.resolution, at.alpha, at.kimg


def _pgan_checks(a: dict, b: dict) -> None:
    assert _position(a) == _position(b) and _position(a)[:3] == (144, 8, 1.0)
    assert a["pgan"]["tick"] == b["pgan"]["tick"] == 6
    assert torch.equal(a["pgan"]["rng_state"], b["pgan"]["rng_state"])
    assert a["BraTSDataModule"] == b["BraTSDataModule"]
    for prefix in ("generator.", "generator_ema.", "discriminator."):
        assert any(k.startswith(prefix) for k in a["state_dict"]), prefix
    _same_optimizer_states(a, b, same_keys=True)


def _same_optimizer_states(a: dict, b: dict, same_keys: bool = False) -> None:
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        if same_keys:
            assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)


def _spade_command(data: Path, logs: Path, *extra: str) -> list[str]:
    # niter 1, niter_decay 2: the learning rates halve after epoch 2 and reach 0 after epoch 3, so the
    # resumed epochs must also get the schedule right.
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "experiment=spade_demo",
        f"data.root={data}",
        "data.resolution=null",
        "data.real=null",
        "data.batch_size=4",
        "data.eval_batch_size=4",
        f"paths.log_dir={logs}",
        "torch_threads=1",
        "debug=tiny_spade",
        "model.num_val_images=2",
        "model.niter=1",
        "model.niter_decay=2",
        "model.optimizer_g.lr=1e-4",  # the paper's rates (spade_demo's are 10x): halved after epoch 2
        "model.optimizer_d.lr=4e-4",
        "trainer.max_epochs=3",
        "++trainer.limit_train_batches=2",
        "++trainer.limit_val_batches=1",
        "trainer.deterministic=true",
        "trainer.enable_progress_bar=false",
        *extra,
    ]


def _spade_checks(a: dict, b: dict) -> None:
    assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"])
    assert (a["epoch"], a["global_step"]) == (3, 12)  # written when training ended: 3 epochs done
    assert a["lr_schedulers"] == b["lr_schedulers"]
    lrs = [g["lr"] for o in b["optimizer_states"] for g in o["param_groups"]]
    assert lrs == [g["lr"] for o in a["optimizer_states"] for g in o["param_groups"]] == [5e-05, 2e-04]
    _same_optimizer_states(a, b)


def _unet_command(data: Path, logs: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "train.py"),
        "model=unet",
        f"data.root={data}",
        f"paths.log_dir={logs}",
        "model.net.base_width=4",
        "data.batch_size=8",
        "trainer.max_epochs=3",
        "test=false",
        "trainer.enable_progress_bar=false",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        *extra,
    ]


# ------------------------------------------------------------------------------------------ the harness
ENV = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}


def _run_to_end(command: list[str]) -> None:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# model: (command, dataset (slices, size), the killed checkpoint's check, the final checkpoints' checks)
CASES: dict[str, tuple[Callable[..., list[str]], tuple[int, int], Callable[[dict], bool], Callable]] = {
    # 5 batches per epoch, 15 steps
    "unet": (_unet_command, (50, 16), lambda killed: killed["global_step"] < 15, lambda a, b: None),
    "pgan": (_command, (40, 16), lambda killed: killed["pgan"]["images_seen"] < 144, _pgan_checks),
    "spade": (_spade_command, (40, 32), lambda killed: killed["epoch"] < 2, _spade_checks),
}


@pytest.mark.slow
@pytest.mark.parametrize("model", sorted(CASES))
def test_sigkill_then_resume_matches_uninterrupted_run(model: str, tmp_path: Path) -> None:
    command, (slices, size), killed_early, same_end = CASES[model]
    data = write_dataset(tmp_path / "prepared", num_slices=slices, size=size)
    _run_to_end(command(data, tmp_path / "whole"))
    crashed = tmp_path / "crashed"
    kill_when(command(data, crashed), lambda: bool(list(crashed.rglob("last.ckpt"))), env=ENV, poll=0.01)
    assert killed_early(safe_load(_last(crashed)))
    _run_to_end(command(data, crashed, "ckpt_path=last"))
    a, b = safe_load(_last(tmp_path / "whole")), safe_load(_last(crashed))
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    same_end(a, b)


def _best_bookkeeping(ckpt: dict) -> tuple[float, str, dict[str, float]]:
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    return (
        float(state["best_model_score"]),
        Path(state["best_model_path"]).name,
        {Path(p).name: float(v) for p, v in state["best_k_models"].items()},
    )


def _in_second_epoch(logs: Path) -> bool:
    try:
        return any(torch.load(p, weights_only=True)["epoch"] >= 1 for p in logs.rglob("last.ckpt"))
    except (OSError, RuntimeError, EOFError):
        return False  # replaced while being read


@pytest.mark.slow
def test_unet_resume_keeps_the_best_validation_bookkeeping(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=50, size=16)
    _run_to_end(_unet_command(data, tmp_path / "whole"))
    crashed = tmp_path / "crashed"
    # Kill after the first epoch's validation, so a best score exists before the crash.
    kill_when(_unet_command(data, crashed), lambda: _in_second_epoch(crashed), env=ENV)
    _run_to_end(_unet_command(data, crashed, "ckpt_path=last"))
    a, b = safe_load(_last(tmp_path / "whole")), safe_load(_last(crashed))
    assert _best_bookkeeping(a) == _best_bookkeeping(b)
    # The best checkpoint is in the resumed run's own folder, loadable.
    best = Path(
        next(v for k, v in b["callbacks"].items() if k.startswith("ModelCheckpoint"))["best_model_path"]
    )
    assert best.is_file() and best.parent == _last(crashed).parent
