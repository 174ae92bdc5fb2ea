"""Progress output: a progress bar on a terminal, one line per epoch when stdout is a file or a pipe."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import open_dict

import synthseg.train as train_module
from tests.conftest import compose_train, write_dataset

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model=unet", "debug=tiny_unet"]


def _train_to_file(tmp_path: Path, *overrides: str) -> str:
    """``python train.py ...`` as a user runs it with ``> log``: the log's text."""
    log = tmp_path / "log"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"paths.log_dir={tmp_path / 'logs'}"]
    with log.open("w") as out:
        subprocess.run(
            command, stdout=out, stderr=subprocess.PIPE, check=True, cwd=tmp_path, env=env, timeout=300
        )
    return log.read_text()


@pytest.mark.slow
def test_train_with_stdout_to_a_file_logs_one_line_per_epoch(tiny_dataset: Path, tmp_path: Path) -> None:
    text = _train_to_file(tmp_path, *TINY, f"data.root={tiny_dataset}", "trainer.max_epochs=3", "test=false")
    assert "\r" not in text
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all("val/loss" in line and "train/loss" in line for line in epochs)


@pytest.mark.parametrize("terminal", [True, False])
def test_bar_on_a_terminal_lines_otherwise(
    tiny_dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    terminal: bool,
) -> None:
    monkeypatch.setattr(train_module, "stdout_is_terminal", lambda: terminal)
    cfg = compose_train([*TINY, f"data.root={tiny_dataset}", "trainer.max_epochs=2"], tmp_path)
    with open_dict(cfg):
        cfg.trainer.enable_progress_bar = True
        cfg.test = False
    train_module.train(cfg)
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    if terminal:
        assert "\r" in out and not epochs  # Lightning's bar, redrawn in place
    else:
        assert "\r" not in out and len(epochs) == 2


def test_a_process_sharing_stdout_prints_lines_naming_its_run(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(train_module, "_shared_stdout", False)
    train_module.share_stdout()  # as the demo's worker processes do: another stage writes to the same terminal
    assert not train_module.stdout_is_terminal()
    cfg = compose_train([*TINY, f"data.root={tiny_dataset}", "trainer.max_epochs=2"], tmp_path)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "run7")
        cfg.trainer.enable_progress_bar = True
        cfg.test = False
    train_module.train(cfg)
    out = capsys.readouterr().out
    assert "\r" not in out
    assert [line.split()[:2] for line in out.splitlines() if " epoch " in line] == [
        ["run7:", "epoch"], ["run7:", "epoch"]]  # fmt: skip


@pytest.mark.slow
def test_pgan_with_stdout_to_a_file_logs_one_line_per_tick(tmp_path: Path) -> None:
    data = write_dataset(tmp_path / "prepared", num_slices=40, size=16)
    text = _train_to_file(
        tmp_path,
        "experiment=pgan_demo",
        "debug=tiny_pgan",
        f"data.root={data}",
        "model.total_kimg=0.016",
        "model.stable_kimg=0.004",
        "model.transition_kimg=0.004",
        f"paths.output_dir={tmp_path / 'run'}",
    )
    assert "\r" not in text
    ticks = [line for line in text.splitlines() if " - tick " in line]
    with open(tmp_path / "run" / "swd.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(ticks) == len(rows) >= 1


@pytest.mark.parametrize("preset, expected", [(None, 30.0), ("2", 2.0)])
def test_progress_bars_redraw_rarely_when_stderr_is_a_file(tmp_path: Path, preset, expected) -> None:
    probe = (
        "import io, sys; from synthseg.cli import quiet_progress_when_logged as quiet; quiet(); "
        "import tqdm; print(tqdm.tqdm(total=1, file=io.StringIO()).mininterval)"
    )
    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    env["PYTHONPATH"] = str(ROOT / "src")
    if preset:
        env["TQDM_MININTERVAL"] = preset  # the user's own setting wins
    with (tmp_path / "err").open("w") as err:  # stderr to a file, as with `synthseg demo > log 2>&1`
        out = subprocess.run([sys.executable, "-c", probe], stderr=err, capture_output=False, text=True,
                             stdout=subprocess.PIPE, env=env, check=True, timeout=120)  # fmt: skip
    assert float(out.stdout.strip()) == expected
