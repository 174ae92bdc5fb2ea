"""`python -m synthseg` is the `synthseg` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "synthseg", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=120,
    )


def test_python_m_synthseg_lists_the_commands(tmp_path: Path) -> None:
    done = _run("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: synthseg <command>") and "  generate-masks" in done.stdout


@pytest.mark.slow
def test_python_m_synthseg_runs_a_command(tmp_path: Path) -> None:
    done = _run("swd", f"b={tmp_path}", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("synthseg swd: error: a=DIR is required")


def test_the_main_module_calls_the_command_line_in_process(monkeypatch, capsys) -> None:
    # The subprocess tests above are what a user runs; this one runs the module itself in this process, where
    # coverage sees it.
    import runpy

    monkeypatch.setattr(sys, "argv", ["synthseg", "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_module("synthseg", run_name="__main__")
    assert done.value.code in (0, None)
    assert capsys.readouterr().out.startswith("usage: synthseg <command>")
