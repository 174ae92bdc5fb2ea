"""Reading a dataset folder's manifest and statistics (layout in docs/dataset_layout.md)."""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.labels import NUM_CLASSES
from synthseg.errors import InputError

MANIFEST = "manifest.csv"
STATS = "stats.json"
COUNT_COLUMNS = tuple(f"count_{c}" for c in range(NUM_CLASSES))
REQUIRED_COLUMNS = (
    "id",
    "case",
    "slice",
    "split",
    "source",
    "reduced",
    "empty",
    "image",
    "label",
    *COUNT_COLUMNS,
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Manifest:
    """A dataset folder's manifest as column arrays (one entry per slice, in manifest order)."""

    root: Path
    ids: np.ndarray  # (N,) str
    case: np.ndarray  # (N,) str
    slice: np.ndarray  # (N,) int
    split: np.ndarray  # (N,) str
    source: np.ndarray  # (N,) str
    reduced: np.ndarray  # (N,) bool
    empty: np.ndarray  # (N,) bool
    image: np.ndarray  # (N,) str, relative to root
    label: np.ndarray  # (N,) str, relative to root
    counts: np.ndarray  # (N, 7) int64 pixel count per class

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split, in manifest order."""
        return np.flatnonzero(self.split == split)


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read ``<root>/manifest.csv``; raise InputError naming the file for anything malformed."""
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: manifest not found ({root} is not a prepared or synthetic dataset folder)")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: missing columns {missing}")
        rows = list(reader)
    if not rows:
        raise InputError(f"{path}: the manifest lists no slices")

    def column(name: str) -> np.ndarray:
        return np.array([row[name] for row in rows])

    try:
        ints = {name: column(name).astype(np.int64) for name in ("slice", "reduced", "empty", *COUNT_COLUMNS)}
    except ValueError as err:
        raise InputError(f"{path}: a numeric column holds a non-number ({err})") from None
    split = column("split")
    bad = sorted(set(split) - set(SPLITS))
    if bad:
        raise InputError(f"{path}: unknown split values {bad} (expected {list(SPLITS)})")
    return Manifest(
        root=root,
        ids=column("id"),
        case=column("case"),
        slice=ints["slice"],
        split=split,
        source=column("source"),
        reduced=ints["reduced"].astype(bool),
        empty=ints["empty"].astype(bool),
        image=column("image"),
        label=column("label"),
        counts=np.stack([ints[c] for c in COUNT_COLUMNS], axis=1),
    )


def read_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<root>/stats.json``."""
    path = Path(root) / STATS
    if not path.is_file():
        raise InputError(f"{path}: dataset statistics not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None


def synthetic_row(sid: str, counts: np.ndarray, *, has_image: bool) -> dict[str, Any]:
    """The manifest row of one synthetic slice (``split=train``, ``source=synthetic``, no case or slice index).

    Args:
        sid: slice id (file stem of ``labels/<sid>.png`` and, with ``has_image``, ``images/<sid>.png``).
        counts: (7,) pixel count per class of its label map.
    """
    return {
        "id": sid,
        "case": "synthetic",
        "slice": -1,
        "split": "train",
        "source": "synthetic",
        "reduced": 0,
        "empty": int(counts[1:].sum() == 0),
        "image": f"images/{sid}.png" if has_image else "",
        "label": f"labels/{sid}.png",
        **{col: int(c) for col, c in zip(COUNT_COLUMNS, counts, strict=True)},
    }
