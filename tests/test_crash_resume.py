"""A training run killed with SIGKILL after a checkpoint resumes (ckpt_path=last) to the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import write_dataset

ROOT = Path(__file__).resolve().parents[1]


def _train_command(data: Path, logs: Path, *extra: str) -> list[str]:
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


def _final_weights(logs: Path) -> dict[str, torch.Tensor]:
    newest = sorted(logs.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)[-1]
    return torch.load(newest, map_location="cpu", weights_only=True)["state_dict"]


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=50, size=16)  # 5 batches per epoch, 15 steps
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_train_command(data, tmp_path / "uninterrupted"), check=True, env=env, capture_output=True)

    crashed = tmp_path / "crashed"
    proc = subprocess.Popen(
        _train_command(data, crashed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 120
    while not list(crashed.rglob("last.ckpt")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = torch.load(next(crashed.rglob("last.ckpt")), weights_only=True)["global_step"]
    assert killed_at < 15

    subprocess.run(_train_command(data, crashed, "ckpt_path=last"), check=True, env=env, capture_output=True)
    a, b = _final_weights(tmp_path / "uninterrupted"), _final_weights(crashed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
