"""Tiny trees (24x24x8 volumes) in the layout of every BraTS release 2018-2024 and of MSD Task01, as downloaded,
with the 7-class labels and counts that ``synthseg prepare`` must find in them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.prepare import slices
from synthseg.data.prepare.settings import PrepareSettings
from tests.helpers.cohort import run_prepare

SHAPE = (24, 24, 8)
SIZE = 32
AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])
FAST_TO_CLASS = np.array([0, 6, 5, 4], np.uint8)
TUMOR = {"ncr": 1, "edema": 2, "enhancing": 3}  # 7-class indices
MAPS = {  # on-disk value of each region, per release
    "2018": {"ncr": 1, "edema": 2, "enhancing": 4},
    "2023": {"ncr": 1, "edema": 2, "enhancing": 3},
    "msd": {"edema": 1, "ncr": 2, "enhancing": 3},
}


def save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, AFFINE), str(path))
    return path


def regions(seed: int, *, cavity: bool = False) -> dict[str, np.ndarray]:
    """Masks of a glioma: necrosis inside an enhancing rim inside edema (+ a resection cavity beside it)."""
    x, y, z = np.indices(SHAPE)
    cx, cy = 12 + seed % 2, 12
    r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + ((z - 4) * 1.5) ** 2)
    out = {"ncr": r < 2.5, "enhancing": (r >= 2.5) & (r < 3.6), "edema": (r >= 3.6) & (r < 7.0)}
    if cavity:
        out["cavity"] = np.zeros(SHAPE, bool)
        out["cavity"][3:6, 3:6, 2:5] = True
    return out


def brain() -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[2:22, 2:22, :] = True
    return mask


def fake_tissue(image: np.ndarray, exclude: np.ndarray, seed: int) -> np.ndarray:
    """Stands in for the built-in segmentation: FAST codes 1-3 in a fixed pattern inside the brain."""
    i, j, k = np.indices(image.shape)
    return np.where(image > 0, (i + j + k) % 3 + 1, 0).astype(np.uint8)


def expected_label(image: np.ndarray, masks: dict[str, np.ndarray], cavity_class: int = 6) -> np.ndarray:
    label = FAST_TO_CLASS[fake_tissue(image, image == 0, 0)]
    for name, index in TUMOR.items():
        label[masks[name]] = index
    if "cavity" in masks:
        label[masks["cavity"]] = cavity_class
    return label


def seg_volume(masks: dict[str, np.ndarray], values: dict[str, int], cavity_value: int = 4) -> np.ndarray:
    seg = np.zeros(SHAPE, np.uint8)
    for name, value in values.items():
        seg[masks[name]] = value
    if "cavity" in masks:
        seg[masks["cavity"]] = cavity_value
    return seg


def image_volume(seed: int, dtype: type = np.int16) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.where(brain(), rng.integers(100, 1000, SHAPE), 0).astype(dtype)


def write_case(
    folder: Path,
    name: str,
    seed: int,
    sep: str,
    names: dict[str, str],
    values: dict[str, int],
    ext: str = ".nii.gz",
    cavity: bool = False,
) -> dict[str, Any]:
    """All four sequences and the annotation of one case folder; returns the expected label volume."""
    image = image_volume(seed)
    masks = regions(seed, cavity=cavity)
    for k, (sequence, suffix) in enumerate(names.items()):
        data = image if sequence == "t1c" else image_volume(seed + 100 * (k + 1))
        save(folder / f"{name}{sep}{suffix}{ext}", data)
    save(folder / f"{name}{sep}seg{ext}", seg_volume(masks, values))
    return {"image": image, "masks": masks, "label": expected_label(image, masks)}


NAMES_2018 = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair"}
NAMES_2023 = {"t1": "t1n", "t1c": "t1c", "t2": "t2w", "flair": "t2f"}


def tree_2018(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "MICCAI_BraTS_2018_Data_Training"
    cases = {}
    for i, (group, name) in enumerate([("HGG", "Brats18_2013_2_1"), ("LGG", "Brats18_TCIA10_103_1")]):
        cases[name] = write_case(top / group / name, name, i, "_", NAMES_2018, MAPS["2018"])
    (top / "survival_data.csv").write_text("Brats18ID,Age\n")
    return top, cases


def tree_2020(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "MICCAI_BraTS2020_TrainingData"
    cases = {}
    for i, name in enumerate(["BraTS20_Training_001", "BraTS20_Training_355"]):
        cases[name] = write_case(top / name, name, i, "_", NAMES_2018, MAPS["2018"], ext=".nii")
    # the release's misnamed annotation of case 355
    folder = top / "BraTS20_Training_355"
    (folder / "BraTS20_Training_355_seg.nii").rename(folder / "W39_1998.09.19_Segm.nii")
    (top / "name_mapping.csv").write_text("Grade,BraTS_2020_subject_ID\n")
    (top / "survival_info.csv").write_text("Brats20ID,Age\n")
    (top / ".DS_Store").write_bytes(b"\x00\x01")
    (top / "__MACOSX").mkdir()
    return top, cases


def tree_2021(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "BraTS2021_Training_Data"
    cases = {}
    for i, name in enumerate(["BraTS2021_00000", "BraTS2021_00002"]):
        cases[name] = write_case(top / name, name, i, "_", NAMES_2018, MAPS["2018"])
    return top, cases


def tree_2023(root: Path) -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "ASNR-MICCAI-BraTS2023-GLI-Challenge-TrainingData"
    cases = {}
    for i, name in enumerate(["BraTS-GLI-00000-000", "BraTS-GLI-00000-001"]):
        cases[name] = write_case(top / name, name, i, "-", NAMES_2023, MAPS["2023"])
    return top, cases


def tree_2024(root: Path, cavity: str = "csf") -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "BraTS2024-GLI"  # the archive unpacks into training_data1_v2/
    cases = {}
    for i, name in enumerate(["BraTS-GLI-00005-100", "BraTS-GLI-00005-101"]):
        folder = top / "training_data1_v2" / name
        cases[name] = write_case(folder, name, i, "-", NAMES_2023, MAPS["2023"], cavity=i == 0)
    return top, cases


def tree_msd(root: Path, values: dict[str, int] | None = None) -> tuple[Path, dict[str, dict[str, Any]]]:
    top = root / "Task01_BrainTumour"
    meta = {
        "name": "BRATS",
        "modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"},
        "labels": {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"},
    }
    top.mkdir(parents=True)
    (top / "dataset.json").write_text(json.dumps(meta))
    cases = {}
    for i, name in enumerate(["BRATS_001", "BRATS_002"]):
        channels = [image_volume(i + 100 * (c + 1)).astype(np.float32) for c in range(4)]
        channels[2] = image_volume(i).astype(np.float32)  # t1gd, integer-valued float32 as MSD ships
        save(top / "imagesTr" / f"{name}.nii.gz", np.stack(channels, axis=-1))
        masks = regions(i)
        save(top / "labelsTr" / f"{name}.nii.gz", seg_volume(masks, values or MAPS["msd"]))
        cases[name] = {"image": channels[2], "masks": masks, "label": expected_label(channels[2], masks)}
        for sub in ("imagesTr", "labelsTr"):  # macOS resource forks in the real archive
            (top / sub / f"._{name}.nii.gz").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    save(top / "imagesTs" / "BRATS_485.nii.gz", np.stack([image_volume(9)] * 4, axis=-1))
    return top, cases


def run(
    source: Path, output: Path, monkeypatch: pytest.MonkeyPatch, **kwargs: Any
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    monkeypatch.setattr(slices, "_segment_builtin", fake_tissue)
    options = {"size": SIZE, "workers": 1, "progress": False, "tissue": "builtin", **kwargs}
    record = run_prepare(PrepareSettings(source=str(source), output=str(output), **options))
    with open(output / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return record, rows


def counts_by_case(rows: list[dict[str, str]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for row in rows:
        total = out.setdefault(row["case"], [0] * 7)
        for c in range(7):
            total[c] += int(row[f"count_{c}"])
    return out


def expected_counts(label: np.ndarray, slices: int = SHAPE[2]) -> list[int]:
    counts = np.bincount(label.ravel(), minlength=7)
    counts[0] += (SIZE * SIZE - SHAPE[0] * SHAPE[1]) * slices
    return [int(c) for c in counts]
