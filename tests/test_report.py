"""The report: Table 1 and 2 numbers against hand computation, bootstrap intervals, figures."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import png
import pytest

from synthseg.data.labels import PALETTE
from synthseg.data.pngio import write_image16, write_label8
from synthseg.errors import InputError
from synthseg.report.stats import RatioMetrics, bootstrap, paired_bootstrap, resample_weights
from tests.conftest import SUBJECT_A, SUBJECT_B, make_run, run_report, write_dataset
from tests.conftest import case_sums as _case


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _png_size(path: Path) -> tuple[int, int]:
    width, height, _, _ = png.Reader(filename=str(path)).read()
    return height, width


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "prepared", num_slices=40, size=32)


# ------------------------------------------------------------------------------------------- Table 1
def test_table1_mean_std_paper_and_best_cells(prepared: Path, tmp_path: Path) -> None:
    runs = tmp_path / "multirun"
    cells = {  # (mix, classes): Dice errors over seeds 0, 1, 2
        ("full_real", 7): [0.10, 0.12, 0.14],  # 12.00 ± 2.00
        ("full_syn8960", 7): [0.11, 0.11],  # 11.00 ± 0.00: best of the full half
        ("syn_only", 7): [0.40],
        ("reduced_real", 7): [0.20, 0.22],  # 21.00 ± 1.41
        ("reduced_syn20832", 7): [0.18, 0.19],  # 18.50 ± 0.71: best of the reduced half
        ("full_real", 2): [0.03],
        ("full_augment", 2): [0.02],  # best of the full half for 2 classes
    }
    n = 0
    for (mix, classes), errors in cells.items():
        for seed, error in enumerate(errors):
            make_run(runs / str(n), mix=mix, classes=classes, seed=seed, dice_error=error, data_root=prepared)
            n += 1
    out = tmp_path / "report"
    summary = run_report({"runs": str(runs), "output": str(out), "bootstrap": {"samples": 200},
                            "figures": {"enabled": False}})  # fmt: skip
    assert len(summary["runs"]) == n and summary["cells"] == len(cells)

    rows = {(r["mix"], int(r["classes"])): r for r in _read_csv(out / "table1.csv")}
    assert set(rows) == set(cells)
    assert float(rows[("full_real", 7)]["dice_error_mean"]) == pytest.approx(12.0)
    assert float(rows[("full_real", 7)]["dice_error_std"]) == pytest.approx(2.0)
    assert float(rows[("reduced_real", 7)]["dice_error_std"]) == pytest.approx(np.sqrt(2.0))
    assert rows[("syn_only", 7)]["dice_error_std"] == ""  # one seed: no spread
    assert float(rows[("full_real", 7)]["paper"]) == 10.94
    assert (rows[("full_real", 7)]["num_real"], rows[("full_real", 7)]["num_synthetic"]) == ("32", "0")
    assert float(rows[("reduced_syn20832", 7)]["paper"]) == 16.18
    assert rows[("full_augment", 2)]["paper"] == ""  # not a row of the paper
    best = {key for key, row in rows.items() if row["best"] == "1"}
    assert best == {("full_syn8960", 7), ("reduced_syn20832", 7), ("full_augment", 2)}

    md = (out / "table1.md").read_text()
    assert "**11.00 ± 0.00**" in md and "**18.50 ± 0.71**" in md and "12.00 ± 2.00" in md
    assert "**12.00" not in md
    # Rows in the paper's order: full_real before full_syn8960 before syn_only, full half before reduced.
    order = [
        md.index(f"| {m} |")
        for m in ("full_real", "full_syn8960", "syn_only", "full_augment", "reduced_real")
    ]
    assert order == sorted(order)
    report = json.loads((out / "report.json").read_text())
    expected = {"table1.md", "table1.csv", "table2.md", "table2.csv", "metrics.json"}
    assert {f["file"] for f in report["files"]} == expected


def test_repeated_seed_and_missing_runs_are_errors(prepared: Path, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no results.json"):
        run_report({"runs": str(tmp_path / "empty"), "output": str(tmp_path / "out")})
    for i in range(2):
        make_run(
            tmp_path / "runs" / str(i), mix="full_real", classes=2, seed=0, dice_error=0.1, data_root=prepared
        )
    with pytest.raises(InputError, match="same seed"):
        run_report({"runs": str(tmp_path / "runs"), "output": str(tmp_path / "out")})
    assert not (tmp_path / "out").exists()


def test_include_reads_only_the_named_run_folders(prepared: Path, tmp_path: Path) -> None:
    from synthseg.report.runs import find_runs

    runs = tmp_path / "runs"
    for name, seed in (("a", 0), ("b", 1), ("old", 2)):  # "old": a row of other settings left in the folder
        make_run(runs / name, mix="full_real", classes=2, seed=seed, dice_error=0.1, data_root=prepared)
    assert [run.seed for run in find_runs(runs)] == [0, 1, 2]
    assert [run.seed for run in find_runs(runs, ("a", "b"))] == [0, 1]
    summary = run_report({"runs": str(runs), "output": str(tmp_path / "out"), "include": ["b"],
                          "figures": {"enabled": False}, "bootstrap": {"samples": 20}})  # fmt: skip
    assert summary["runs"] == [str(runs / "b" / "results.json")]
    (tmp_path / "runs2").mkdir()
    for bad in ("missing", "../runs2", str(prepared)):  # absent, beside it, elsewhere
        with pytest.raises(InputError, match="is not a folder under runs="):
            find_runs(runs, ("a", bad))


# ------------------------------------------------------------------------------------------- Table 2
def test_table2_matches_hand_computed_sums(prepared: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    cases = {"s1": _case(SUBJECT_A), "s2": _case(SUBJECT_B)}
    make_run(
        runs / "a", mix="full_real", classes=2, seed=0, dice_error=0.1, data_root=prepared, per_case=cases
    )
    # A second seed with the same statistics: pooling seeds leaves the ratios unchanged.
    make_run(
        runs / "b", mix="full_real", classes=2, seed=1, dice_error=0.1, data_root=prepared, per_case=cases
    )
    same = {"s1": _case(SUBJECT_A), "s2": _case(SUBJECT_B)}
    make_run(
        runs / "c", mix="full_syn8960", classes=2, seed=0, dice_error=0.1, data_root=prepared, per_case=same
    )
    better = {"s1": _case(SUBJECT_A, 1.1), "s2": _case(SUBJECT_B, 1.1)}
    make_run(
        runs / "d", mix="full_augment", classes=2, seed=0, dice_error=0.1, data_root=prepared, per_case=better
    )
    out = tmp_path / "report"
    run_report({"runs": str(runs), "output": str(out), "bootstrap": {"samples": 500, "seed": 1},
                  "figures": {"enabled": False}})  # fmt: skip
    rows = {(r["mix"], r["metric"]): r for r in _read_csv(out / "table2.csv")}
    ref = {
        m: float(rows[("full_real", m)]["estimate"]) for m in ("dice_error_fixed", "dice_tumor", "dice_WT")
    }
    # Tumor Dice: 2 * (8 + 3) / (20 + 10); fixed-weight error: 1 - 2 * (0.25*185 + 0.75*11) / (0.25*400 + 0.75*30).
    assert ref["dice_tumor"] == pytest.approx(100 * 22 / 30, abs=1e-3)
    assert ref["dice_WT"] == pytest.approx(100 * 22 / 30, abs=1e-3)
    assert ref["dice_error_fixed"] == pytest.approx(100 * (1 - 2 * 54.5 / 122.5), abs=1e-3)
    assert (
        rows[("full_real", "dice_tumor")]["seeds"] == "2"
        and rows[("full_real", "dice_tumor")]["subjects"] == "2"
    )
    for (mix, _metric), row in rows.items():
        low, est, high = float(row["ci_low"]), float(row["estimate"]), float(row["ci_high"])
        assert low <= est <= high, (mix, row)
    # Two subjects: the resampled tumor Dice is one of 2*8/20, 2*3/10 or their pooled value.
    assert float(rows[("full_real", "dice_tumor")]["ci_low"]) == pytest.approx(60.0, abs=1e-3)
    assert float(rows[("full_real", "dice_tumor")]["ci_high"]) == pytest.approx(80.0, abs=1e-3)
    # Paired: identical per-subject numbers give a zero difference with a zero-width interval.
    same_row = rows[("full_syn8960", "dice_tumor")]
    assert same_row["reference"] == "full_real"
    assert (
        float(same_row["diff"]) == 0
        and float(same_row["diff_low"]) == 0
        and float(same_row["diff_high"]) == 0
    )
    # 10 % more overlap in every subject: Dice 1.1x higher, the whole paired interval above 0.
    up = rows[("full_augment", "dice_tumor")]
    assert float(up["diff"]) == pytest.approx(0.1 * 100 * 22 / 30, abs=1e-3)
    assert 0 < float(up["diff_low"]) <= float(up["diff"]) <= float(up["diff_high"])
    assert rows[("full_real", "dice_tumor")]["reference"] == ""  # the reference row has no difference
    md = (out / "table2.md").read_text()
    assert "73.33 [60.00, 80.00]" in md and "full_augment − full_real" in md and "†" in md


def _metrics(rng: np.random.Generator, subjects: int) -> RatioMetrics:
    totals = rng.uniform(50, 150, (subjects, 1))
    inter = totals / 2 * rng.uniform(0.6, 0.95, (subjects, 1))
    return RatioMetrics(("dice",), inter, totals, np.zeros(1), np.full(1, 200.0))


def test_bootstrap_interval_contains_the_estimate_and_shrinks_with_more_subjects() -> None:
    rng = np.random.default_rng(0)
    widths = []
    for subjects in (8, 64, 512):
        metrics = _metrics(rng, subjects)
        estimate, low, high = bootstrap(metrics, resample_weights(subjects, 1000, seed=0))
        expected = 200 * metrics.numerator.sum() / metrics.denominator.sum()
        assert estimate[0] == pytest.approx(expected)
        assert low[0] <= estimate[0] <= high[0]
        widths.append(high[0] - low[0])
    assert widths[0] > widths[1] > widths[2]
    assert widths[2] < widths[0] / 4  # about 1/sqrt(subjects): 8x fewer subjects, ~2.8x wider per step


def test_resample_weights_draw_every_subject_count_times() -> None:
    weights = resample_weights(5, 300, seed=3)
    assert weights.shape == (300, 5) and (weights.sum(axis=1) == 5).all()
    assert np.array_equal(weights, resample_weights(5, 300, seed=3))
    # Every subject is drawn about once per resample on average, none is left out of all resamples.
    assert weights.mean(axis=0) == pytest.approx(np.ones(5), abs=0.2)


def test_paired_interval_is_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(1)
    base = _metrics(rng, 40)
    # The same subjects, each a little better: subjects vary a lot, the improvement little.
    better = RatioMetrics(base.names, base.numerator * 1.02, base.denominator, base.offset, base.scale)
    weights = resample_weights(40, 1000, seed=0)
    diff, low, high = paired_bootstrap(better, base, weights)
    _, b_low, b_high = bootstrap(base, weights)
    assert diff[0] == pytest.approx(0.02 * base.values()[0])
    assert 0 < low[0] <= diff[0] <= high[0]
    assert high[0] - low[0] < (b_high[0] - b_low[0]) / 5
    with pytest.raises(ValueError, match="same subjects"):
        paired_bootstrap(_metrics(rng, 3), base, weights)


# ------------------------------------------------------------------------------------------- figures
@pytest.mark.slow
def test_figures_exist_with_the_expected_pixel_size(prepared: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    make_run(runs / "0", mix="full_real", classes=7, seed=0, dice_error=0.1, data_root=prepared, favour=3)
    make_run(runs / "1", mix="full_syn8960", classes=7, seed=0, dice_error=0.1, data_root=prepared, favour=5)
    make_run(runs / "2", mix="full_real", classes=2, seed=0, dice_error=0.1, data_root=prepared, favour=1,
             resolution=None)  # fmt: skip
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(5):
        write_label8(masks / f"m{i}.png", np.full((32, 32), i % 7, np.uint8))
    synthetic = write_dataset(tmp_path / "synthetic", num_slices=10, size=32, source="synthetic", seed=2)
    spade = [tmp_path / "spade_full", tmp_path / "spade_reduced"]
    for folder in spade:
        (folder / "images").mkdir(parents=True)
        for sid in ("Brats18_T_7_1_001", "Brats18_T_7_1_002"):  # two real test slices of the fixture
            write_image16(folder / "images" / f"{sid}.png", np.full((32, 32), 700, np.uint16))
    out = tmp_path / "report"
    figures = {"segmentation_slices": 3, "pairs": 4, "masks_full": str(masks), "synthetic_full": str(synthetic),
               "spade_test": [str(p) for p in spade]}  # fmt: skip
    summary = run_report({"runs": str(runs), "output": str(out), "bootstrap": {"samples": 50},
                            "figures": figures})  # fmt: skip
    written = {f["file"] for f in summary["files"]}
    tile = 16 + 2  # tiles of 16x16 (the runs' resolution) with 2-pixel gaps
    # Fig. 8: 3 test slices; MR image, two configurations, ground truth.
    assert _png_size(out / "fig8_segmentations_7class.png") == (3 * tile - 2, 4 * tile - 2)
    assert _png_size(out / "fig10_segmentations_2class.png") == (3 * 34 - 2, 3 * 34 - 2)  # native 32x32
    assert _png_size(out / "fig1_real_pairs.png") == (64, 4 * 34 - 2)  # 4 pairs of 64x32 in one row
    assert _png_size(out / "fig2_masks_full.png") == (32, 5 * 34 - 2)
    assert _png_size(out / "fig5_synthetic_full.png") == (64, 4 * 34 - 2)
    assert _png_size(out / "fig7_spade_test.png") == (3 * 32, 2 * 34 - 2)  # full, reduced, true image
    assert "fig9_segmentations_4class.png" not in written and "fig3_masks_reduced.png" not in written
    assert any("fig3" in s for s in summary["figures_skipped"])
    assert written <= {p.name for p in out.iterdir()}
    # The checkpoints are the ones loaded: each column is one class everywhere, in the palette's colour.
    _, _, pixels, _ = png.Reader(filename=str(out / "fig8_segmentations_7class.png")).read()
    image = np.vstack([np.asarray(r, np.uint8) for r in pixels]).reshape(3 * tile - 2, 4 * tile - 2, 3)
    assert (image[:16, tile : tile + 16] == PALETTE[3]).all()
    assert (image[:16, 2 * tile : 2 * tile + 16] == PALETTE[5]).all()
    caption = next(f["caption"] for f in summary["files"] if f["file"].startswith("fig8"))
    assert "full_real, full_syn8960" in caption


@pytest.mark.slow
def test_cli_writes_the_report(prepared: Path, tmp_path: Path) -> None:
    make_run(
        tmp_path / "runs" / "0", mix="reduced_real", classes=4, seed=0, dice_error=0.2, data_root=prepared
    )
    out = tmp_path / "report"
    cmd = [str(Path(sys.executable).parent / "synthseg"), "report", f"runs={tmp_path / 'runs'}", f"output={out}",
           "bootstrap.samples=20", "figures.segmentation_slices=2", "overwrite=true"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "table1.md").is_file() and (out / "fig9_segmentations_4class.png").is_file()
    bad = subprocess.run([*cmd[:2], f"runs={tmp_path / 'nowhere'}", f"output={out}", "overwrite=true"],
                         capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "folder not found" in bad.stderr


def test_a_run_without_a_mix_name_gets_one_from_its_counts() -> None:
    from synthseg.report.runs import mix_of

    results = {
        "config": {"data": {"reduced": True, "augment": True}},
        "data_stats": {"num_real": 6, "num_synthetic": 0},
    }
    mix = mix_of(results)
    assert (mix.name, mix.half, mix.reference, mix.paper) == (
        "real6_syn0_augment",
        "reduced",
        "reduced_real",
        None,
    )
    results["config"]["mix_name"] = "reduced_syn4792"
    assert mix_of(results).paper == {7: 16.44, 4: 12.51, 2: 6.14}
