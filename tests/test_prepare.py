"""``synthseg prepare`` on tiny BraTS-layout cohorts made in the test, checked against hand computations."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthseg.data.manifest import DATASET_FORMAT
from synthseg.data.pngio import read_png
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare import slices
from synthseg.errors import InputError
from tests.helpers.cohort import (
    AFFINE,
    COLUMNS,
    SHAPE,
    SIZE,
    TUMOR_2018,
    expected_slice,
    make_case,
    make_cohort,
    read_manifest,
    run_prepare,
    save,
    settings,
)


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, dict[str, dict[str, Any]], dict[str, Any]]:
    root = tmp_path_factory.mktemp("cohort")
    cases = make_cohort(root / "src", 5)
    record = run_prepare(settings(root / "src", root / "out"))
    return root / "out", cases, record


def test_png_round_trip_bit_for_bit_and_labels(prepared: tuple[Path, dict, dict]) -> None:
    out, cases, _ = prepared
    rows = read_manifest(out)
    assert len(rows) == 5 * SHAPE[2]
    for row in rows:
        case = cases[row["case"]]
        k = int(row["slice"])
        image = read_png(out / row["image"], bitdepth=16, shape=(SIZE, SIZE))
        label = read_png(out / row["label"], bitdepth=8, shape=(SIZE, SIZE))
        assert image.dtype == np.uint16 and label.dtype == np.uint8
        np.testing.assert_array_equal(image, expected_slice(case["image"].astype(np.uint16), k))
        np.testing.assert_array_equal(label, expected_slice(case["label"], k))
        counts = np.bincount(label.ravel(), minlength=7)
        assert [int(row[f"count_{c}"]) for c in range(7)] == counts.tolist()
        assert row["empty"] == str(int(not label.any()))
        assert row["id"] == f"{row['case']}_{k:03d}" and row["image"] == f"images/{row['id']}.png"


def test_padding_centred(tmp_path: Path) -> None:
    # A 3x5 in-plane volume padded to 8: rows (second axis) 1 zero + 5 + 2 zero, columns 2 zero + 3 + 3 zero.
    volume = np.arange(1, 3 * 5 * 2 + 1).reshape(3, 5, 2)
    out = slices.pad_center(volume, 8, tmp_path / "x.nii")
    assert out.shape == (2, 8, 8)
    for k in range(2):
        np.testing.assert_array_equal(out[k, 1:6, 2:5], volume[:, :, k].T)
    assert (
        out[:, :1].sum() == 0
        and out[:, 6:].sum() == 0
        and out[:, :, :2].sum() == 0
        and out[:, :, 5:].sum() == 0
    )
    with pytest.raises(InputError, match=r"x\.nii: in-plane size 3x5 is larger than size=4"):
        slices.pad_center(volume, 4, tmp_path / "x.nii")


def test_manifest_order_splits_reduced(prepared: tuple[Path, dict, dict]) -> None:
    out, _, record = prepared
    with open(out / "manifest.csv", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == COLUMNS
    rows = read_manifest(out)
    splits = [r["split"] for r in rows]
    n = len(rows)
    n_val = n_test = math.floor(n * 0.1 + 0.5)
    n_train = n - n_val - n_test
    assert splits == ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    n_reduced = math.floor(n_train * 0.2 + 0.5)
    assert [r["reduced"] for r in rows] == ["1"] * n_reduced + ["0"] * (n - n_reduced)
    assert {r["source"] for r in rows} == {"real"}
    # paper mode shuffles slices: the training rows are not in case/slice order and the cases mix across splits
    train_ids = [r["id"] for r in rows if r["split"] == "train"]
    assert train_ids != sorted(train_ids)
    assert sorted(r["id"] for r in rows) == sorted(
        f"Brats18_T_{i}_1_{k:03d}" for i in range(5) for k in range(6)
    )
    assert record["reduced_slices"] == n_reduced


def test_stats_against_hand_computation(prepared: tuple[Path, dict, dict]) -> None:
    out, cases, _ = prepared
    stats = json.loads((out / "stats.json").read_text())
    assert list(stats) == [
        "format", "source", "size", "num_slices", "splits", "split_mode", "seed", "reduced_fraction",
        "train_max", "train_mean", "class_counts", "class_frequencies", "class_weights",
    ]  # fmt: skip
    train = [r for r in read_manifest(out) if r["split"] == "train"]
    slices = [expected_slice(cases[r["case"]]["image"].astype(np.int64), int(r["slice"])) for r in train]
    labels = [expected_slice(cases[r["case"]]["label"], int(r["slice"])) for r in train]
    train_max = max(int(s.max()) for s in slices)
    mean = float(np.mean([s.astype(np.float64) / train_max for s in slices]))
    counts = np.sum([np.bincount(lab.ravel(), minlength=7) for lab in labels], axis=0)
    inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    assert (
        stats["format"] == DATASET_FORMAT
        and DATASET_FORMAT.endswith("-dataset/1")
        and stats["source"] == "real"
        and stats["size"] == SIZE
    )
    assert stats["num_slices"] == 30 and stats["splits"] == {"train": 24, "val": 3, "test": 3}
    assert stats["split_mode"] == "paper" and stats["seed"] == 0 and stats["reduced_fraction"] == 0.2
    assert stats["train_max"] == train_max
    assert stats["train_mean"] == pytest.approx(mean, rel=1e-12)
    assert stats["class_counts"] == counts.tolist()
    np.testing.assert_allclose(stats["class_frequencies"], counts / counts.sum())
    np.testing.assert_allclose(stats["class_weights"], inverse / inverse.sum())


def test_prepare_json(prepared: tuple[Path, dict, dict]) -> None:
    out, _, _ = prepared
    record = json.loads((out / "prepare.json").read_text())
    assert record["config"]["size"] == SIZE and record["skipped"] == []
    assert [c["case"] for c in record["cases"]] == [f"Brats18_T_{i}_1" for i in range(5)]
    assert {c["tissue"] for c in record["cases"]} == {"pveseg"}
    assert record["timings"]["total_s"] > 0


def test_subject_split_no_case_in_two_splits(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 10, shape=(6, 5, 4))
    run_prepare(settings(tmp_path / "src", tmp_path / "out", split="subject", seed=3))
    rows = read_manifest(tmp_path / "out")
    split_of: dict[str, set[str]] = {}
    for row in rows:
        split_of.setdefault(row["case"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    per_split = [sum(s == {name} for s in split_of.values()) for name in ("train", "val", "test")]
    assert per_split == [8, 1, 1]
    assert [r["split"] for r in rows] == sorted(
        (r["split"] for r in rows), key=["train", "val", "test"].index
    )
    assert [r["reduced"] for r in rows].count("1") == math.floor(32 * 0.2 + 0.5)
    # the reduced set is a shuffled draw of training slices, not the first training cases in order
    train_ids = [r["id"] for r in rows if r["split"] == "train"]
    assert train_ids != sorted(train_ids)
    assert len({r["case"] for r in rows if r["reduced"] == "1"}) > 2
    stats = json.loads((tmp_path / "out/stats.json").read_text())
    assert stats["split_mode"] == "subject" and stats["splits"] == {"train": 32, "val": 4, "test": 4}


def test_paper_split_mixes_cases(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 4, shape=(6, 5, 20))
    run_prepare(settings(tmp_path / "src", tmp_path / "out", seed=1))
    rows = read_manifest(tmp_path / "out")
    cases_in = {name: {r["case"] for r in rows if r["split"] == name} for name in ("train", "val", "test")}
    assert len(cases_in["train"] & (cases_in["val"] | cases_in["test"])) > 0
    assert [r["split"] for r in rows].count("train") == 64


@pytest.mark.slow
def test_rerun_identical_and_workers_agree(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 3, shape=(6, 5, 4))
    run_prepare(settings(tmp_path / "src", tmp_path / "a", seed=7))
    first = {
        p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()
    }
    run_prepare(settings(tmp_path / "src", tmp_path / "a", seed=7))  # re-run over the old output
    run_prepare(settings(tmp_path / "src", tmp_path / "b", seed=7, workers=2))
    for other in ("a", "b"):
        files = {
            p.relative_to(tmp_path / other): p.read_bytes()
            for p in (tmp_path / other).rglob("*")
            if p.is_file()
        }
        assert set(files) == set(first)
        differing = [str(p) for p in first if files[p] != first[p]]
        assert set(differing) <= {"prepare.json"}  # timings live only there (equal when they round alike)
    run_prepare(settings(tmp_path / "src", tmp_path / "c", seed=8))
    assert (tmp_path / "c/manifest.csv").read_bytes() != first[Path("manifest.csv")]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".partial", ".old")))


def test_failure_midway_leaves_no_output_or_old_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_cohort(tmp_path / "src", 3, shape=(6, 5, 4))
    calls = {"n": 0}
    real_write = slices.write_label8

    def failing_write(path: Path, array: np.ndarray) -> None:
        calls["n"] += 1
        if calls["n"] == 6:
            raise OSError("disk on fire")
        real_write(path, array)

    monkeypatch.setattr(slices, "write_label8", failing_write)
    with pytest.raises(OSError, match="disk on fire"):
        run_prepare(settings(tmp_path / "src", tmp_path / "out"))
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []

    monkeypatch.setattr(slices, "write_label8", real_write)
    run_prepare(settings(tmp_path / "src", tmp_path / "out"))
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    calls["n"] = 0
    monkeypatch.setattr(slices, "write_label8", failing_write)
    with pytest.raises(OSError):
        run_prepare(settings(tmp_path / "src", tmp_path / "out", seed=5))
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before and _leftovers(tmp_path) == []


def _corrupt(case: dict[str, Any], name: str, kind: str) -> Path:
    """Break one file of a case; return the file the error must name."""
    folder = case["folder"]
    t1c, seg = folder / f"{name}_t1ce.nii.gz", folder / f"{name}_seg.nii.gz"
    if kind == "truncated":
        raw = t1c.read_bytes()
        t1c.write_bytes(raw[: len(raw) * 2 // 3])
        return t1c
    if kind == "zero-byte":
        seg.write_bytes(b"")
        return seg
    if kind == "not-nifti":
        t1c.write_bytes(gzip.compress(b"<html>not an image</html>\n" * 30))
        return t1c
    if kind == "not-gzip":
        seg.write_bytes(gzip.decompress(seg.read_bytes()))
        return seg
    if kind == "missing-t1c":
        t1c.unlink()
        return t1c
    if kind == "missing-seg":
        seg.unlink()
        return seg
    if kind == "shape":
        save(seg, np.zeros((6, 5, 3), np.uint8))
        return seg
    if kind == "affine":
        shifted = AFFINE.copy()
        shifted[2, 3] = 5.0
        save(seg, case["seg"], shifted)
        return seg
    if kind == "label-value":
        bad = case["seg"].copy()
        bad[0, 0, :2] = 3
        save(seg, bad)
        return seg
    if kind == "non-integral":
        save(
            seg,
            case["seg"].astype(np.float32)
            + 0.5 * (np.arange(case["seg"].size) == 7).reshape(case["seg"].shape),
        )
        return seg
    if kind in ("nan", "inf"):
        bad = case["image"].astype(np.float32)
        bad[2, 2, 2] = np.nan if kind == "nan" else -np.inf
        save(t1c, bad)
        return t1c
    if kind == "all-zero":
        save(t1c, np.zeros_like(case["image"]))
        return t1c
    if kind == "too-bright":
        bad = case["image"].astype(np.int32)
        bad[2, 2, 2] = 70000
        save(t1c, bad)
        return t1c
    if kind == "tissue-shape":
        tissue = folder / f"{name}_t1ce_pveseg.nii.gz"
        save(tissue, np.zeros((6, 5, 5), np.uint8))
        return tissue
    raise AssertionError(kind)  # pragma: no cover


BAD_INPUTS = [
    ("truncated", "truncated"),
    ("zero-byte", "empty file (0 bytes)"),
    ("not-nifti", "not a NIfTI file"),
    ("not-gzip", "named .nii.gz but not gzip-compressed"),
    ("missing-t1c", "missing T1c: expected"),
    ("missing-seg", "missing seg: expected"),
    ("shape", "shape (6, 5, 3) does not match"),
    ("affine", "affine does not match"),
    ("label-value", "unexpected label value 3 in 2 voxels"),
    ("non-integral", "label values must be whole numbers"),
    ("nan", "1 NaN and 0 infinite"),
    ("inf", "0 NaN and 1 infinite"),
    ("all-zero", "all-zero volume"),
    ("too-bright", "intensity 70000 above 65535 in 1 voxels"),
    ("tissue-shape", "shape (6, 5, 5) does not match"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_INPUTS)
def test_bad_input_stop_and_skip(tmp_path: Path, kind: str, message: str) -> None:
    cases = make_cohort(tmp_path / "src", 3, shape=(6, 5, 4))
    name = "Brats18_T_1_1"
    culprit = _corrupt(cases[name], name, kind)
    with pytest.raises(InputError) as info:
        run_prepare(settings(tmp_path / "src", tmp_path / "out"))
    line = str(info.value)
    assert "\n" not in line and message in line and str(culprit) in line, line
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []

    record = run_prepare(settings(tmp_path / "src", tmp_path / "out", on_error="skip"))
    assert [s["case"] for s in record["skipped"]] == [name]
    assert message in record["skipped"][0]["reason"]
    rows = read_manifest(tmp_path / "out")
    assert {r["case"] for r in rows} == {"Brats18_T_0_1", "Brats18_T_2_1"}
    assert not list((tmp_path / "out/images").glob(f"{name}_*"))
    assert json.loads((tmp_path / "out/prepare.json").read_text())["skipped"][0]["case"] == name


def test_intensity_rule_float_rounding_and_negatives(tmp_path: Path) -> None:
    cases = make_cohort(tmp_path / "src", 2, shape=(6, 5, 4))
    name = "Brats18_T_0_1"
    image = cases[name]["image"].astype(np.float32) + 0.4
    image[1, 1, 1], image[1, 2, 1], image[2, 2, 2] = -3.0, -0.4, 10.6  # -0.4 rounds to 0: not counted
    save(cases[name]["folder"] / f"{name}_t1ce.nii.gz", image)
    record = run_prepare(settings(tmp_path / "src", tmp_path / "out"))
    assert [c["negatives_clipped"] for c in record["cases"]] == [1, 0]
    assert f"{name}: 1 negative voxels clipped to 0" in prep.summarize(record)
    expected = np.clip(np.rint(image), 0, None).astype(np.uint16)
    got = read_png(tmp_path / "out/images" / f"{name}_002.png")
    np.testing.assert_array_equal(got, expected_slice(expected, 2))
    assert got[(SIZE - 5) // 2 + 2, (SIZE - 6) // 2 + 2] == 11


def test_pve_files_and_brats2023(tmp_path: Path) -> None:
    case = make_case(
        tmp_path / "src",
        "BraTS-GLI-00001-000",
        0,
        group="",
        fast="pve",
        enhancing=3,
        prefix="-",
        image_suffix="t1c",
    )
    for i in (2, 3):
        make_case(
            tmp_path / "src",
            f"BraTS-GLI-0000{i}-000",
            i,
            group="",
            fast="pve",
            enhancing=3,
            prefix="-",
            image_suffix="t1c",
        )
    record = run_prepare(settings(tmp_path / "src", tmp_path / "out", convention="brats2023"))
    assert {c["tissue"] for c in record["cases"]} == {"pve"}
    label = read_png(tmp_path / "out/labels/BraTS-GLI-00001-000_002.png")
    np.testing.assert_array_equal(label, expected_slice(case["label"], 2))
    assert 3 in case["label"][:, :, 1:3]  # the 2023 value 3 really occurs and maps to enhancing
    with pytest.raises(InputError, match=r"-seg\.nii\.gz: unexpected label value 3 in"):
        run_prepare(settings(tmp_path / "src", tmp_path / "o2", convention="brats2023", enhancing=4))


def test_builtin_tissue_called_with_brain_and_tumor_excluded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tissue_mod = pytest.importorskip("synthseg.data.sources.tissue")
    cases = make_cohort(tmp_path / "src", 2, shape=(6, 5, 4), fast=None)
    make_case(tmp_path / "src", "Brats18_T_9_1", 9, shape=(6, 5, 4), fast="pveseg")
    seen = []

    def fake_segment(
        image: np.ndarray, brain_mask: np.ndarray, exclude: np.ndarray | None = None, *, seed: int = 0
    ):
        seen.append((image.copy(), brain_mask.copy(), exclude.copy(), seed))
        return np.where(brain_mask & ~exclude, 2, 0).astype(np.uint8)  # all GM

    monkeypatch.setattr(tissue_mod, "segment_tissue", fake_segment)
    record = run_prepare(settings(tmp_path / "src", tmp_path / "out", seed=4))
    assert [c["tissue"] for c in record["cases"]] == ["builtin", "builtin", "pveseg"]
    assert len(seen) == 2
    image, brain, exclude, seed = seen[0]
    case = cases["Brats18_T_0_1"]
    np.testing.assert_array_equal(brain, case["image"] > 0)
    np.testing.assert_array_equal(exclude, case["seg"] > 0)
    assert seed == 4
    label = read_png(tmp_path / "out/labels/Brats18_T_0_1_002.png")
    tumor = np.vectorize(TUMOR_2018.get)(case["seg"])
    expected = np.where(tumor > 0, tumor, np.where(case["image"] > 0, 5, 0)).astype(np.uint8)
    np.testing.assert_array_equal(label, expected_slice(expected, 2))

    seen.clear()
    record = run_prepare(settings(tmp_path / "src", tmp_path / "out", tissue="builtin"))
    assert [c["tissue"] for c in record["cases"]] == ["builtin"] * 3 and len(seen) == 3
    with pytest.raises(InputError, match="tissue=fast but no FAST output found"):
        run_prepare(settings(tmp_path / "src", tmp_path / "o2", tissue="fast"))


def test_settings_and_paths_refused(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 3, shape=(6, 5, 4))
    base = settings(tmp_path / "src", tmp_path / "out")
    for change, message in [
        ({"split": "random"}, "split must be"),
        ({"on_error": "ignore"}, "on_error must be"),
        ({"workers": 0}, "workers must be at least 1"),
        ({"split_fractions": (0.8, 0.2, 0.1)}, "split_fractions must be"),
        ({"reduced_fraction": 0.0}, "reduced_fraction must be"),
        ({"tissue": "spm"}, "tissue must be"),
    ]:
        with pytest.raises(InputError, match=message):
            replace(base, **change)
    with pytest.raises(InputError, match="lies inside the input"):
        run_prepare(replace(base, output=str(tmp_path / "src/HGG/out")))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine/thesis.tex").write_text("precious")
    with pytest.raises(InputError, match="not empty and not written by synthseg prepare"):
        run_prepare(replace(base, output=str(tmp_path / "mine")))
    assert (tmp_path / "mine/thesis.tex").read_text() == "precious"
    with pytest.raises(InputError, match="in-plane size 6x5 is larger than size=4"):
        run_prepare(replace(base, size=4))
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputError, match="2 cases are too few"):
        make_cohort(tmp_path / "two", 2, shape=(6, 5, 4))
        run_prepare(settings(tmp_path / "two", tmp_path / "out", split="subject"))


def test_free_space_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_cohort(tmp_path / "src", 1, shape=(6, 5, 4))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**9, 10**9 - 100, 100))
    with pytest.raises(InputError, match="not enough disk space for the prepared dataset"):
        run_prepare(settings(tmp_path / "src", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_cli_prepare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from synthseg.cli import main

    make_cohort(tmp_path / "src", 3, shape=(6, 5, 4))
    main(
        [
            "prepare",
            f"source={tmp_path / 'src'}",
            f"output={tmp_path / 'out'}",
            "size=8",
            "progress=false",
            "workers=1",
        ]
    )
    assert "prepared 3 cases, 12 slices" in capsys.readouterr().out
    assert json.loads((tmp_path / "out/stats.json").read_text())["size"] == 8
    (tmp_path / "src/HGG/Brats18_T_0_1/Brats18_T_0_1_seg.nii.gz").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        main(
            ["prepare", f"source={tmp_path / 'src'}", f"output={tmp_path / 'o2'}", "size=8", "progress=false"]
        )
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"synthseg prepare: error: {tmp_path}/src/HGG/Brats18_T_0_1/Brats18_T_0_1_seg.nii.gz: empty file (0 bytes)"
    ]


@pytest.mark.slow
def test_real_size_case(tmp_path: Path) -> None:
    """One case at BraTS size 240x240x155 (int16) -> 155 slices of 256x256, padded by 8 on each side."""
    shape = (240, 240, 155)
    rng = np.random.default_rng(0)
    image = np.zeros(shape, np.int16)
    image[40:200, 30:210, 20:140] = rng.integers(1, 4000, (160, 180, 120), dtype=np.int16)
    seg = np.zeros(shape, np.uint8)
    seg[100:120, 90:130, 60:80] = 4
    folder = tmp_path / "src/HGG/Brats18_R_1_1"
    save(folder / "Brats18_R_1_1_t1ce.nii.gz", image)
    save(folder / "Brats18_R_1_1_seg.nii.gz", seg)
    save(folder / "Brats18_R_1_1_t1ce_pveseg.nii.gz", (image > 0).astype(np.uint8) * 3)
    record = run_prepare(settings(tmp_path / "src", tmp_path / "out", size=256))
    rows = read_manifest(tmp_path / "out")
    assert len(rows) == 155 and record["stats"]["splits"] == {"train": 123, "val": 16, "test": 16}
    k = 70
    got = read_png(tmp_path / "out/images" / f"Brats18_R_1_1_{k:03d}.png", bitdepth=16, shape=(256, 256))
    np.testing.assert_array_equal(got[8:248, 8:248], image[:, :, k].T)
    assert got[:8].sum() == 0 and got[248:].sum() == 0 and got[:, :8].sum() == 0 and got[:, 248:].sum() == 0
    label = read_png(tmp_path / "out/labels" / f"Brats18_R_1_1_{k:03d}.png", bitdepth=8)
    assert label[8 + 100, 8 + 110] == 3 and label[8 + 35, 8 + 45] == 4 and label[8 + 20, 8 + 20] == 0


_KILLABLE = """
import sys, time
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare import slices
real = slices.write_label8
def slow(path, array):
    real(path, array)
    time.sleep(0.05)
slices.write_label8 = slow
prep.run(prep.PrepareSettings(source=sys.argv[1], output=sys.argv[2], size=8, workers=1, progress=False, seed=9, overwrite=True))
"""


@pytest.mark.slow
def test_sigkill_midway_keeps_old_output_and_rerun_completes(tmp_path: Path) -> None:
    make_cohort(tmp_path / "src", 3, shape=(6, 5, 20))
    out = tmp_path / "out"
    run_prepare(settings(tmp_path / "src", out, size=8))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, str(tmp_path / "src"), str(out)])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            partial = [p for p in tmp_path.glob(".out.*.partial") if len(list(p.glob("labels/*.png"))) >= 3]
            if partial or proc.poll() is not None:
                break
            time.sleep(0.02)
        assert partial, "the run ended before it could be killed midway"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # the old dataset is untouched; the half-written one only exists as .partial
    run_prepare(settings(tmp_path / "src", out, size=8, seed=9))
    assert json.loads((out / "stats.json").read_text())["seed"] == 9
    for stale in tmp_path.glob(".out.*.partial"):
        shutil.rmtree(stale)
