"""The dataset folder (layout in docs/dataset_layout.md): its one reader and writer.

Every command that reads or writes a prepared or synthetic dataset folder goes through this module: the
manifest (``manifest.csv``), the statistics (``stats.json``, with the format tag), the provenance
(``prepare.json``) and the listing of a folder's masks.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.labels import NUM_CLASSES
from synthseg.errors import InputError

# The format tag of stats.json; the only place it is spelled out.
DATASET_FORMAT = "synthseg-dataset/1"
MANIFEST = "manifest.csv"
STATS = "stats.json"
PROVENANCE = "prepare.json"
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


def is_dataset_folder(root: str | os.PathLike[str]) -> bool:
    """Whether ``root`` has a manifest (a prepared, synthetic or generated-mask dataset folder)."""
    return (Path(root) / MANIFEST).is_file()


def read_manifest_rows(root: str | os.PathLike[str], columns: Iterable[str]) -> list[dict[str, str]]:
    """The rows of ``<root>/manifest.csv`` as dicts, checking only that ``columns`` are present.

    Raises:
        InputError: naming the file when it is missing, lacks one of ``columns`` or lists no rows.
    """
    root = Path(root)
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{path}: manifest not found ({root} is not a prepared or synthetic dataset folder)")
    # utf-8-sig: a spreadsheet's byte-order mark would otherwise glue itself to the first column's name.
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in columns if c not in fields]
        if missing:
            raise InputError(f"{path}: missing columns {missing}")
        rows = []
        for row in reader:
            # DictReader fills a short row with None and gathers a long row's extras under the key None.
            if None in row or None in row.values():
                given = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                raise InputError(
                    f"{path}: line {reader.line_num} has {given} fields, the header has {len(fields)}"
                )
            rows.append(row)
    if not rows:
        raise InputError(f"{path}: the manifest lists no slices")
    if "id" in fields:
        seen: set[str] = set()
        for row in rows:
            if row["id"] in seen:
                raise InputError(f"{path}: id {row['id']!r} is listed twice (ids must be unique)")
            seen.add(row["id"])
    return rows


def manifest_files(root: str | os.PathLike[str], column: str = "label", split: str = "train") -> list[Path]:
    """The files (``column``: ``label`` or ``image``) of one split of a dataset folder, in manifest order."""
    root = Path(root)
    rows = read_manifest_rows(root, ("split", column))
    files = [root / row[column] for row in rows if row["split"] == split]
    if not files:
        raise InputError(f"{root / MANIFEST}: no {split} rows")
    return files


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read ``<root>/manifest.csv``; raise InputError naming the file for anything malformed."""
    root = Path(root)
    path = root / MANIFEST
    rows = read_manifest_rows(root, REQUIRED_COLUMNS)

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


@contextmanager
def manifest_writer(
    path: str | os.PathLike[str], *, lineterminator: str = "\r\n"
) -> Iterator[csv.DictWriter]:
    """A CSV writer of manifest rows (dicts keyed by :data:`REQUIRED_COLUMNS`), header written.

    Rows are written as they come, so memory does not grow with the number of slices.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(REQUIRED_COLUMNS), lineterminator=lineterminator)
        writer.writeheader()
        yield writer


def manifest_header(lineterminator: str = "\r\n") -> str:
    """The header line of a manifest, for writers that append rows to a part file first."""
    return ",".join(REQUIRED_COLUMNS) + lineterminator


def write_manifest(
    folder: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], *, lineterminator: str = "\r\n"
) -> None:
    """Write ``<folder>/manifest.csv`` from manifest rows."""
    with manifest_writer(Path(folder) / MANIFEST, lineterminator=lineterminator) as writer:
        writer.writerows(rows)


def dataset_stats(
    *,
    source: str,
    size: int,
    splits: Mapping[str, int],
    class_counts: Iterable[int],
    **details: Any,
) -> dict[str, Any]:
    """The content of ``stats.json``: format, source, size, slice counts, per-class statistics.

    Args:
        source: ``real`` or ``synthetic``.
        size: side length of the slices.
        splits: slices per split (``train``, ``val``, ``test``).
        class_counts: (7,) pixel count per class of the training slices.
        details: image datasets add ``split_mode``, ``seed``, ``reduced_fraction``, ``train_max`` and
            ``train_mean``; they come after the splits, in the order given.

    ``class_weights`` is left out when no pixel was counted (a dataset of no slices).
    """
    counts = [int(c) for c in class_counts]
    total = sum(counts)
    stats: dict[str, Any] = {
        "format": DATASET_FORMAT,
        "source": source,
        "size": int(size),
        "num_slices": int(sum(splits.values())),
        "splits": {name: int(splits.get(name, 0)) for name in SPLITS},
        **details,
        "class_counts": counts,
        "class_frequencies": [float(c) / max(total, 1) for c in counts],
    }
    if total > 0:
        from synthseg.data.labels import class_weights_from_counts  # imports torch: not in prepare's workers

        stats["class_weights"] = [float(w) for w in class_weights_from_counts(np.asarray(counts))]
    return stats


def write_stats(folder: str | os.PathLike[str], stats: Mapping[str, Any]) -> None:
    """Write ``<folder>/stats.json`` (the output of :func:`dataset_stats`)."""
    (Path(folder) / STATS).write_text(json.dumps(dict(stats), indent=2) + "\n")


def write_provenance(folder: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Write ``<folder>/prepare.json``: how the folder was made (command, settings, code version)."""
    (Path(folder) / PROVENANCE).write_text(json.dumps(dict(record), indent=2, default=str) + "\n")


def read_provenance(root: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``<root>/prepare.json``, or None when the folder has none or it is not valid JSON."""
    path = Path(root) / PROVENANCE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


@dataclass(frozen=True)
class MaskItem:
    """One mask file of a folder: its id, label path and image path (None when the folder has no images)."""

    id: str
    label: Path
    image: Path | None = None


def list_masks(folder: str | os.PathLike[str], key: str | None = None) -> list[MaskItem]:
    """The masks of a dataset folder (manifest order) or of a plain folder of PNGs (name order).

    A dataset folder has ``manifest.csv``; a folder with ``labels/`` but no manifest is read from ``labels/``
    (images from ``images/<id>.png`` when present); otherwise every ``*.png`` of the folder is a mask.

    Args:
        key: the setting that named the folder, for errors (``masks`` -> ``masks=DIR: ...``).
    """
    folder = Path(folder)
    named = f"{key}={folder}" if key else str(folder)
    if not folder.is_dir():
        raise InputError(f"{named}: masks folder not found")
    items: list[MaskItem] = []
    if is_dataset_folder(folder):
        manifest = read_manifest(folder)
        for i in range(len(manifest)):
            image = folder / manifest.image[i] if manifest.image[i] else None
            items.append(
                MaskItem(
                    str(manifest.ids[i]),
                    folder / manifest.label[i],
                    image if image and image.is_file() else None,
                )
            )
    else:
        labels = folder / "labels" if (folder / "labels").is_dir() else folder
        for path in sorted(labels.glob("*.png")):
            image = folder / "images" / path.name if labels != folder else None
            items.append(MaskItem(path.stem, path, image if image is not None and image.is_file() else None))
    if not items:
        raise InputError(f"{named}: no label PNGs found (expected manifest.csv, labels/*.png or *.png)")
    return items


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
