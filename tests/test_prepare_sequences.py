"""``synthseg prepare sequences=[...]`` (issue 16): every requested sequence, lossless, in its own folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from synthseg.data.manifest import DATASET_FORMAT_MULTI, read_manifest
from synthseg.data.pngio import read_png
from synthseg.data.prepare.prepare import summarize
from synthseg.data.prepare.settings import PrepareSettings
from synthseg.errors import InputError
from tests.helpers.cohort import SHAPE, SIZE, expected_slice, make_cohort, run_prepare, save, settings

OTHERS = {"t1": "_t1", "t2": "_t2", "flair": "_flair"}


def add_sequences(cases: dict[str, dict[str, Any]], names: tuple[str, ...] = ("t1", "t2", "flair")) -> None:
    """Write each case's other sequences: different volumes (int16 with negatives, float with fractions)."""
    for i, (name, case) in enumerate(sorted(cases.items())):
        rng = np.random.default_rng(100 + i)
        brain = case["image"] > 0
        for seq in names:
            if seq == "t2":  # float: the rounding rule applies to every sequence
                volume = np.where(brain, rng.uniform(10, 4000, SHAPE), 0).astype(np.float32)
            else:
                volume = np.where(brain, rng.integers(1, 30000, SHAPE), 0).astype(np.int16)
            case[seq] = volume
            save(case["folder"] / f"{name}{OTHERS[seq]}.nii.gz", volume)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    root = tmp_path_factory.mktemp("seqs")
    cases = make_cohort(root / "src", 4)
    add_sequences(cases)
    for case in cases.values():
        case["t1c"] = case["image"]
    return root, cases


def test_prepare_writes_exactly_the_requested_sequences_losslessly(cohort: tuple[Path, dict]) -> None:
    root, cases = cohort
    order = ("flair", "t1c", "t2")
    out = root / "three"
    record = run_prepare(settings(root / "src", out, sequences=list(order)))
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(order)  # no t1, no flat copy
    manifest = read_manifest(out)
    assert manifest.sequences == order and len(manifest) == 4 * SHAPE[2]
    for i in range(len(manifest)):
        case, k = cases[manifest.case[i]], int(manifest.slice[i])
        for s, seq in enumerate(order):
            rel = manifest.images[i, s]
            assert rel == f"images/{seq}/{manifest.case[i]}_{k:03d}.png"  # the case name in the path
            expected = np.clip(np.rint(case[seq].astype(np.float64)), 0, None).astype(np.uint16)
            np.testing.assert_array_equal(
                read_png(out / rel, bitdepth=16, shape=(SIZE, SIZE)), expected_slice(expected, k)
            )
        label = read_png(out / manifest.label[i], bitdepth=8, shape=(SIZE, SIZE))
        np.testing.assert_array_equal(label, expected_slice(case["label"], k))
    stats = json.loads((out / "stats.json").read_text())
    assert stats["format"] == DATASET_FORMAT_MULTI and stats["sequences"] == list(order)
    train = manifest.rows("train")
    for s in range(len(order)):  # per-sequence statistics, by hand
        slices = [read_png(out / manifest.images[i, s]).astype(np.float64) for i in train]
        top = max(int(x.max()) for x in slices)
        assert stats["train_max"][s] == top
        assert stats["train_mean"][s] == pytest.approx(np.mean([x / top for x in slices]), rel=1e-12)
    assert "sequences: flair, t1c, t2" in summarize(record)


def test_a_single_other_sequence_writes_no_t1c(cohort: tuple[Path, dict]) -> None:
    root, cases = cohort
    out = root / "t2only"
    run_prepare(settings(root / "src", out, sequences=["t2"]))
    assert [p.name for p in (out / "images").iterdir()] == ["t2"]
    assert json.loads((out / "stats.json").read_text())["sequences"] == ["t2"]
    # the tissue still comes from the T1c: labels equal a T1c-only run's
    manifest = read_manifest(out)
    for i in range(0, len(manifest), 5):
        expected = expected_slice(cases[manifest.case[i]]["label"], int(manifest.slice[i]))
        np.testing.assert_array_equal(read_png(out / manifest.label[i]), expected)


def test_a_missing_requested_sequence_is_one_line_or_a_skipped_case(tmp_path: Path) -> None:
    cases = make_cohort(tmp_path / "src", 3)
    add_sequences(cases, ("flair",))
    name = "Brats18_T_1_1"
    victim = cases[name]["folder"] / f"{name}_flair.nii.gz"
    victim.unlink()
    with pytest.raises(InputError, match=rf"^missing FLAIR: expected {victim}"):
        run_prepare(settings(tmp_path / "src", tmp_path / "out", sequences=["t1c", "flair"]))
    assert not (tmp_path / "out").exists()
    # not requested: not looked at
    run_prepare(settings(tmp_path / "src", tmp_path / "t1c"))
    record = run_prepare(
        settings(tmp_path / "src", tmp_path / "skip", sequences=["t1c", "flair"], on_error="skip")
    )
    assert [s["case"] for s in record["skipped"]] == [name] and "missing FLAIR" in record["skipped"][0][
        "reason"
    ]
    assert name not in set(read_manifest(tmp_path / "skip").case)


def test_sequences_on_another_grid_are_refused_naming_the_file(tmp_path: Path) -> None:
    cases = make_cohort(tmp_path / "src", 2)
    add_sequences(cases, ("t2",))
    name = "Brats18_T_0_1"
    bad = save(
        cases[name]["folder"] / f"{name}_t2.nii.gz", np.ones((SHAPE[0], SHAPE[1], SHAPE[2] + 1), np.int16)
    )
    with pytest.raises(InputError, match=rf"{bad.name}"):
        run_prepare(settings(tmp_path / "src", tmp_path / "out", sequences=["t1c", "t2"]))


def test_unknown_sequences_are_one_line_before_any_work() -> None:
    with pytest.raises(InputError, match=r"^sequences=\[t1ce\]: unknown sequence \['t1ce'\]"):
        PrepareSettings(source="a", output="b", sequences=["t1ce"])
    assert PrepareSettings(source="a", output="b").sequences == ("t1c",)
