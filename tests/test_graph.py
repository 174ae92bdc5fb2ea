"""The job graph the demo's stages run on: needs respected, side by side in workers, errors stop everything."""

from __future__ import annotations

import json
import os
import time
from functools import partial
from pathlib import Path

import pytest

from synthseg.utils.graph import Job, run_graph


def _record(folder: Path, name: str, sleep_s: float = 0.0) -> None:
    """Write ``name.json``: this process, its torch threads, when it started and ended."""
    import torch

    start = time.time()
    time.sleep(sleep_s)
    info = {"pid": os.getpid(), "threads": torch.get_num_threads(), "start": start, "end": time.time()}
    (folder / f"{name}.json").write_text(json.dumps(info))


def _fail(folder: Path) -> None:
    for _ in range(600):  # fail only once the sleeper runs, so that there is a running job to stop
        if (folder / "sleeper.pid").exists():
            break
        time.sleep(0.05)
    raise ValueError(f"{folder}: bad input")


def _sleep_then_record(folder: Path) -> None:
    (folder / "sleeper.pid").write_text(str(os.getpid()))
    time.sleep(60)
    (folder / "sleeper.json").write_text("{}")


def _alive(pid: int) -> bool:
    """Running (a killed child not yet reaped is a zombie: dead)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.is_dir():
        return stat.is_file() and stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _read(folder: Path, name: str) -> dict:
    return json.loads((folder / f"{name}.json").read_text())


def test_one_worker_runs_in_list_order_after_needs_here(tmp_path: Path) -> None:
    order: list[str] = []
    jobs = [
        Job("report", lambda: order.append("report"), needs=("a", "b")),
        Job("a", lambda: order.append("a")),
        Job("b", lambda: order.append("b"), needs=("a", "complete-already")),
    ]
    done: list[str] = []
    run_graph(jobs, 1, on_done=lambda job, seconds: done.append(job.key))
    assert order == ["a", "b", "report"] == done


@pytest.mark.slow
def test_two_workers_run_side_by_side_with_one_thread_each_and_needs_wait(tmp_path: Path) -> None:
    jobs = [
        Job("gan", partial(_record, tmp_path, "gan", 1.0)),
        Job("real", partial(_record, tmp_path, "real", 1.0)),
        Job("synthetic", partial(_record, tmp_path, "synthetic"), needs=("gan",)),
        Job("report", partial(_record, tmp_path, "report"), needs=("gan", "real", "synthetic"), alone=True),
    ]
    run_graph(jobs, 2, threads=1)
    gan, real, synthetic, report = (_read(tmp_path, k) for k in ("gan", "real", "synthetic", "report"))
    assert gan["pid"] != real["pid"] and os.getpid() not in (gan["pid"], real["pid"])
    assert gan["threads"] == real["threads"] == synthetic["threads"] == 1
    assert gan["start"] < real["end"] and real["start"] < gan["end"]  # side by side
    assert synthetic["start"] >= gan["end"]
    assert report["pid"] == os.getpid()  # alone: here, after everything it needs
    assert report["start"] >= max(gan["end"], real["end"], synthetic["end"])


@pytest.mark.slow
def test_a_failing_job_stops_the_graph_and_kills_the_running_ones(tmp_path: Path) -> None:
    jobs = [
        Job("sleeper", partial(_sleep_then_record, tmp_path)),
        Job("bad", partial(_fail, tmp_path)),
        Job("after", partial(_record, tmp_path, "after"), needs=("bad",)),
    ]
    with pytest.raises(ValueError, match="bad input"):
        run_graph(jobs, 2)
    pid = int((tmp_path / "sleeper.pid").read_text())  # it had started: it is gone, without finishing
    for _ in range(100):
        if not _alive(pid):
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the running job (pid {pid}) was left running")
    assert not (tmp_path / "sleeper.json").exists() and not (tmp_path / "after.json").exists()


def test_needs_that_can_never_be_met_are_an_error() -> None:
    jobs = [Job("a", lambda: None, needs=("b",)), Job("b", lambda: None, needs=("a",))]
    with pytest.raises(RuntimeError, match="never met"):
        run_graph(jobs, 1)
