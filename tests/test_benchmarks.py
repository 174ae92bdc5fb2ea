"""``benchmarks/run_all.py``: the one command runs the model benchmarks, writes their JSON records and the
table, and reports a failed benchmark instead of stopping; ``benchmarks/bench_quality.py`` on its own. Smoke
sizes (``--quick``): the figures themselves are not checked, only that they are measured and consistent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[1] / "benchmarks" / "run_all.py"


def _run_all(out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(RUN_ALL), "--quick", "--threads", "1", "--out", str(out), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_run_all_measures_every_model_and_writes_records_and_table(tmp_path: Path) -> None:
    done = _run_all(tmp_path, "--only", "peak", "unet", "pgan", "spade", "--fused-adam")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "all.json").read_text())
    assert summary["hardware"]["device"] == "cpu" and summary["hardware"]["cpu_capability"]
    records = summary["records"]
    assert set(records) == {"peak", "unet", "pgan", "spade"}
    for name in ("unet", "pgan", "spade"):
        record = json.loads((tmp_path / f"{name}.json").read_text())
        assert record["settings"]["fused_adam"] is True
        flops = record["flops_per_image"]
        assert flops["train"] > 2 * flops["forward"] > 0  # a training step at least forward + backward
        for workload in ("train", "inference"):
            figures = record[workload]
            assert figures["images_per_s"] > 0 and figures["fraction_of_conv_peak"] > 0
            assert figures["flop_per_s"] == pytest.approx(
                figures["images_per_s"] * flops["train" if workload == "train" else "forward"]
            )
        assert record["peaks"]["conv3x3"]["flop_per_s"] > 0
        assert record["paper_images_per_s"] > 0 and "ratio_to_paper" not in record  # ratios only on GPU
        assert record["top_operators_train"] and record["top_operators_train"][0]["share"] > 0
    # The gradient penalty's double backward is counted: PGAN's critic step costs more than its generator's.
    pgan = json.loads((tmp_path / "pgan.json").read_text())["flops_per_image"]
    assert pgan["critic_step"] > pgan["generator_step"] > 0
    table = (tmp_path / "table.md").read_text()
    for title in ("U-Net 64x64", "PGAN 32x32", "SPADE 64x64"):
        assert f"| {title} |" in table
    assert "fused Adam" in table


@pytest.mark.slow
def test_run_all_reports_a_failed_benchmark_and_exits_non_zero(tmp_path: Path) -> None:
    done = _run_all(tmp_path, "--only", "pgan", "--timeout", "0.5")
    assert done.returncode == 1
    assert "FAILED" in (tmp_path / "table.md").read_text()
    assert "timed out" in json.loads((tmp_path / "all.json").read_text())["records"]["pgan"]["error"]
    assert (tmp_path / "pgan.log").is_file()


@pytest.mark.slow
def test_bench_quality_quick_times_every_part_against_the_spade_baseline(tmp_path: Path) -> None:
    script = RUN_ALL.parent / "bench_quality.py"
    record_path = tmp_path / "quality.json"
    command = [sys.executable, str(script), "--quick", "--threads", "1", "--sequences", "t1c,flair",
               "--workdir", str(tmp_path / "sets"), "--json", str(record_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(record_path.read_text())
    assert record == json.loads(done.stdout)
    parts = record["seconds_by_part"]
    assert set(parts) >= {"features", "fd_kid", "precision_recall", "diversity", "memorisation"}
    assert all(seconds >= 0 for seconds in parts.values()) and record["quality_seconds"] > 0
    assert record["settings"]["sequences"] == ["t1c", "flair"] and record["synthetic_count"] == 48
    assert record["peak_rss_mib"] > 0 and record["spade_seconds_per_image"] > 0
    assert record["quality_over_synthesis"] == pytest.approx(
        record["quality_seconds"] / (48 * record["spade_seconds_per_image"]), rel=0.01
    )
    assert "quality / synthesis" in done.stderr


@pytest.mark.slow
def test_quality_memory_benchmark_measures_the_vote_against_its_baseline_and_each_batch(
    tmp_path: Path,
) -> None:
    script = RUN_ALL.parent / "bench_quality_memory.py"
    out = tmp_path / "memory.json"
    command = [sys.executable, str(script), "--quick", "--threads", "1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["vote"]["shape"] == record["vote_baseline"]["shape"] == [8, 32, 32]
    assert record["vote_time_ratio"] > 0
    assert [e["batch"] for e in record["extract"]] == ["2", "auto"]
    for part in (record["vote"], record["vote_baseline"], *record["extract"]):
        assert part["peak_rss_gib"] >= part["peak_rss_gib_before"] > 0


@pytest.mark.slow
def test_side_by_side_benchmark_times_one_process_against_one_per_core(tmp_path: Path) -> None:
    script = RUN_ALL.parent / "bench_side_by_side.py"
    out = tmp_path / "side.json"
    command = [sys.executable, str(script), "--threads", "2", "--steps", "3", "--rounds", "2", "--size", "16",
               "--base-width", "2", "--json", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(out.read_text())
    assert len(record["rounds"]) == 2 and record["config"]["threads"] == 2
    for r in record["rounds"]:
        assert r["ratio"] == pytest.approx(r["side_by_side"]["steps_per_s"] / r["one_process"]["steps_per_s"])
    assert record["median_ratio"] > 0 and record["peak_rss_gib_per_process"] > 0
    assert "median: side by side / one process" in done.stdout
