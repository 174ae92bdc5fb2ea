"""Tiny cohorts in the BraTS 2018 layout (NIfTI through nibabel), with the labels and slices they must give.

Shared by the tests of ``synthseg prepare`` and of the commands that read its inputs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from synthseg.data.manifest import read_provenance
from synthseg.data.prepare import prepare as prep
from synthseg.data.prepare.settings import PrepareSettings

AFFINE = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239.0], [0, 0, 1.0, 0], [0, 0, 0, 1]])
SHAPE = (12, 10, 6)  # X, Y, Z
SIZE = 16
FAST_TO_CLASS = {0: 0, 1: 6, 2: 5, 3: 4}  # FAST codes (CSF, GM, WM) -> 7-class indices
TUMOR_2018 = {0: 0, 1: 1, 2: 2, 4: 3}


def run_prepare(settings: PrepareSettings) -> dict[str, Any]:
    """prepare from Python: its settings object and run; the record it wrote (prepare.json)."""
    return read_provenance(prep.run(settings)) or {}


COLUMNS = ["id", "case", "slice", "split", "source", "reduced", "empty", "image", "label"] + [
    f"count_{c}" for c in range(7)
]


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def make_case(
    root: Path,
    name: str,
    seed: int,
    *,
    group: str = "HGG",
    shape: tuple[int, int, int] = SHAPE,
    image_dtype: type = np.int16,
    fast: str | None = "pveseg",
    enhancing: int = 4,
    prefix: str = "_",
    image_suffix: str = "t1ce",
) -> dict[str, Any]:
    """Write one case; return its arrays and the expected 7-class label volume (X, Y, Z)."""
    rng = np.random.default_rng(seed)
    folder = root / group / name if group else root / name
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, :] = True
    image = np.where(brain, rng.integers(50, 3000, shape), 0).astype(image_dtype)
    tissue = np.where(brain, rng.integers(1, 4, shape), 0).astype(np.uint8)
    seg = np.zeros(shape, np.uint8)
    seg[2:4, 2:4, 1:3] = rng.choice([1, 2, enhancing], size=(2, 2, 2))
    save(folder / f"{name}{prefix}{image_suffix}.nii.gz", image)
    save(folder / f"{name}{prefix}seg.nii.gz", seg)
    if fast == "pveseg":
        save(folder / f"{name}{prefix}{image_suffix}_pveseg.nii.gz", tissue)
    elif fast == "pve":
        pve = np.stack([(tissue == k + 1) * 0.7 + 0.1 * (tissue > 0) for k in range(3)]).astype(np.float32)
        for k in range(3):
            save(folder / f"{name}{prefix}{image_suffix}_pve_{k}.nii.gz", pve[k])
    mapping = TUMOR_2018 if enhancing == 4 else {0: 0, 1: 1, 2: 2, 3: 3}
    tumor = np.vectorize(mapping.get)(seg)
    label = np.where(tumor > 0, tumor, np.vectorize(FAST_TO_CLASS.get)(tissue)).astype(np.uint8)
    return {"folder": folder, "image": image, "seg": seg, "tissue": tissue, "label": label}


def make_cohort(root: Path, n: int, **kwargs: Any) -> dict[str, dict[str, Any]]:
    return {f"Brats18_T_{i}_1": make_case(root, f"Brats18_T_{i}_1", seed=i, **kwargs) for i in range(n)}


def settings(source: Path, output: Path, **kwargs: Any) -> PrepareSettings:
    base = {"size": SIZE, "workers": 1, "progress": False, "overwrite": True}
    base.update(kwargs)
    return PrepareSettings(source=str(source), output=str(output), **base)


def read_manifest(root: Path) -> list[dict[str, str]]:
    with open(root / "manifest.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def expected_slice(volume: np.ndarray, k: int, size: int = SIZE) -> np.ndarray:
    """Slice k shown rows = second axis, padded centred: written out index by index, not by the code's pad."""
    x, y, _ = volume.shape
    out = np.zeros((size, size), volume.dtype)
    top, left = (size - y) // 2, (size - x) // 2
    for r in range(y):
        for c in range(x):
            out[top + r, left + c] = volume[c, r, k]
    return out
