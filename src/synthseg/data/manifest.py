"""The dataset folder (layout in docs/dataset_layout.md): its one reader and writer.

Every command that reads or writes a prepared or synthetic dataset folder goes through this module: the
manifest (``manifest.csv``), the statistics (``stats.json``, with the format tag), the provenance
(``prepare.json``); ``data/masks.py`` lists a folder's masks through it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.labels import NUM_CLASSES
from synthseg.data.names import DatasetPaths, check_id
from synthseg.data.sequences import DEFAULT_SEQUENCES, check_sequences, is_flat
from synthseg.errors import InputError

# The format tags of stats.json; the only place they are spelled out. /1: T1c alone, flat ``images/<id>.png``;
# /2: any other sequences, ``images/<seq>/<id>.png`` and per-sequence statistics.
DATASET_FORMAT = "synthseg-dataset/1"
DATASET_FORMAT_MULTI = "synthseg-dataset/2"
_FORMAT_NAME = DATASET_FORMAT.rpartition("/")[0]
_NEWEST_FORMAT = 2
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
# Optional last column (0.3.0): the normalised axial position a conditional PGAN made a synthetic mask at.
# Manifests without it (real datasets, older synthetic ones) read as before.
POSITION_COLUMN = "position"


def image_columns(sequences: Iterable[str] = DEFAULT_SEQUENCES) -> tuple[str, ...]:
    """The manifest's image columns: ``image`` for T1c alone, else ``image_<seq>`` per sequence in order."""
    sequences = tuple(sequences)
    return ("image",) if is_flat(sequences) else tuple(f"image_{s}" for s in sequences)


def manifest_columns(
    sequences: Iterable[str] = DEFAULT_SEQUENCES, *, position: bool = False
) -> tuple[str, ...]:
    """The manifest's columns for a dataset of ``sequences`` (:data:`REQUIRED_COLUMNS` for T1c alone), with
    :data:`POSITION_COLUMN` last when ``position`` (masks of a slice-conditional PGAN)."""
    at = REQUIRED_COLUMNS.index("image")
    columns = (*REQUIRED_COLUMNS[:at], *image_columns(sequences), *REQUIRED_COLUMNS[at + 1 :])
    return (*columns, POSITION_COLUMN) if position else columns


def image_relpath(sid: str, seq: str, sequences: Iterable[str] = DEFAULT_SEQUENCES) -> str:
    """The image path of slice ``sid``, sequence ``seq``, relative to the dataset root.

    ``images/<sid>.png`` in a T1c-only dataset, ``images/<seq>/<sid>.png`` otherwise.
    """
    sequences = tuple(sequences)
    if seq not in sequences:
        raise ValueError(f"sequence {seq!r} is not one of the dataset's {list(sequences)}")
    return f"images/{sid}.png" if is_flat(sequences) else f"images/{seq}/{sid}.png"


def check_format(stats: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a stats.json written by a newer synthseg (one line naming the file)."""
    tag = str(stats.get("format", ""))
    name, _, version = tag.rpartition("/")
    if name == _FORMAT_NAME and version.isdigit() and int(version) > _NEWEST_FORMAT:
        raise InputError(
            f"{path}: format {tag} is newer than this synthseg reads ({_FORMAT_NAME}/{_NEWEST_FORMAT} at most): "
            "update synthseg"
        )


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
    images: np.ndarray  # (N, S) str, relative to root, one column per sequence ("" where a slice has none)
    label: np.ndarray  # (N,) str, relative to root
    counts: np.ndarray  # (N, 7) int64 pixel count per class
    sequences: tuple[str, ...] = DEFAULT_SEQUENCES  # the dataset's sequences, in its order
    recorded_position: np.ndarray | None = (
        None  # (N,) float32 ``position`` column (NaN: empty), None: no column
    )

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def image(self) -> np.ndarray:
        """(N,) image paths of the first sequence: the ``image`` column of a T1c-only dataset."""
        return self.images[:, 0]

    def rows(self, split: str) -> np.ndarray:
        """Row indices of one split, in manifest order."""
        return np.flatnonzero(self.split == split)

    def positions(self) -> np.ndarray:
        """(N,) float32 normalised axial position of every slice in its case: 0 first, 1 last, NaN unknown.

        ``(slice - first) / (last - first)`` over the case's slices listed in the manifest (all splits: the
        paper splits slices, not cases), i.e. over the case's slice count for a case prepared whole; 0.5 for
        a case of one slice. A row with a recorded ``position`` (the masks of a slice-conditional PGAN) has
        that one; other rows without a slice index (synthetic ones, ``slice=-1``) are NaN.
        """
        out = np.full(len(self), np.nan, dtype=np.float32)
        known = self.slice >= 0
        if self.recorded_position is not None:
            recorded = np.isfinite(self.recorded_position)
            out[recorded] = self.recorded_position[recorded]
            known &= ~recorded
        cases, inverse = np.unique(self.case[known], return_inverse=True)
        first = np.full(len(cases), np.iinfo(np.int64).max)
        last = np.full(len(cases), -1)
        np.minimum.at(first, inverse, self.slice[known])
        np.maximum.at(last, inverse, self.slice[known])
        span = (last - first)[inverse]
        offset = self.slice[known] - first[inverse]
        out[known] = np.where(span > 0, offset / np.maximum(span, 1), 0.5)
        return out


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
        lines = []
        for row in reader:
            # DictReader fills a short row with None and gathers a long row's extras under the key None.
            if None in row or None in row.values():
                given = sum(v is not None for k, v in row.items() if k is not None) + len(row.get(None) or [])
                raise InputError(
                    f"{path}: line {reader.line_num} has {given} fields, the header has {len(fields)}"
                )
            rows.append(row)
            lines.append(reader.line_num)
    if not rows:
        raise InputError(f"{path}: the manifest lists no slices")
    _check_names(root, path, fields, rows, lines)
    return rows


def _check_names(
    root: Path, path: Path, fields: Sequence[str], rows: list[dict[str, str]], lines: list[int]
) -> None:
    """Every id a plain, unique file name and every file path inside ``root`` (synthseg.data.names): a row
    naming ``../../victim`` or ``/elsewhere`` is refused before any reader or writer uses it."""
    columns = [c for c in fields if c == "label" or c == "image" or c.startswith("image_")]
    paths = DatasetPaths(root)
    seen: set[str] = set()
    for row, line in zip(rows, lines, strict=True):
        where = f"{path}: line {line}"
        if "id" in row:
            sid = check_id(row["id"], where)
            if sid in seen:
                raise InputError(f"{path}: id {sid!r} is listed twice (ids must be unique)")
            seen.add(sid)
        for column in columns:
            paths.check(row[column], where, column)


def manifest_files(root: str | os.PathLike[str], column: str = "label", split: str = "train") -> list[Path]:
    """The files (``column``: ``label``, ``image`` or ``image_<seq>``) of one split of a dataset folder, in
    manifest order."""
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
    _check_format_if_present(root)
    rows = read_manifest_rows(root, [c for c in REQUIRED_COLUMNS if c != "image"])
    sequences = _manifest_sequences(path, list(rows[0]))

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
    recorded = None
    if POSITION_COLUMN in rows[0]:
        try:
            recorded = np.array([float(v) if v else np.nan for v in column(POSITION_COLUMN)], np.float32)
        except ValueError as err:
            raise InputError(f"{path}: the position column holds a non-number ({err})") from None
        if (np.abs(recorded[np.isfinite(recorded)] - 0.5) > 0.5).any():
            raise InputError(f"{path}: a position lies outside [0, 1]")
    return Manifest(
        root=root,
        ids=column("id"),
        case=column("case"),
        slice=ints["slice"],
        split=split,
        source=column("source"),
        reduced=ints["reduced"].astype(bool),
        empty=ints["empty"].astype(bool),
        images=np.stack([column(c) for c in image_columns(sequences)], axis=1),
        label=column("label"),
        counts=np.stack([ints[c] for c in COUNT_COLUMNS], axis=1),
        sequences=sequences,
        recorded_position=recorded,
    )


def _manifest_sequences(path: Path, columns: list[str]) -> tuple[str, ...]:
    """The sequences a manifest's header names: ``image`` (T1c alone) or ``image_<seq>`` columns, in order."""
    if "image" in columns:
        return DEFAULT_SEQUENCES
    named = [c.removeprefix("image_") for c in columns if c.startswith("image_")]
    if not named:
        raise InputError(f"{path}: missing columns ['image']")
    return check_sequences(named, f"{path}: image columns")


def _check_format_if_present(root: Path) -> None:
    path = root / STATS
    try:
        stats = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return  # a missing or broken stats.json is reported by its own readers
    if isinstance(stats, dict):
        check_format(stats, path)


class ManifestWriter:
    """Writes manifest rows, each id checked first (synthseg.data.names): no writer makes a manifest that its
    readers would refuse."""

    def __init__(self, writer: csv.DictWriter, path: Path) -> None:
        self._writer, self._path, self._rows = writer, path, 0

    def writerow(self, row: Mapping[str, Any]) -> None:
        self._rows += 1
        check_id(str(row["id"]), f"{self._path}: row {self._rows}")
        self._writer.writerow(row)

    def writerows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        for row in rows:
            self.writerow(row)


@contextmanager
def manifest_writer(
    path: str | os.PathLike[str],
    *,
    lineterminator: str = "\r\n",
    sequences: Iterable[str] = DEFAULT_SEQUENCES,
    position: bool = False,
) -> Iterator[ManifestWriter]:
    """A writer of manifest rows (dicts keyed by :func:`manifest_columns`), header written.

    Rows are written as they come, so memory does not grow with the number of slices.
    """
    columns = list(manifest_columns(sequences, position=position))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator=lineterminator)
        writer.writeheader()
        yield ManifestWriter(writer, Path(path))


def manifest_header(
    lineterminator: str = "\r\n", sequences: Iterable[str] = DEFAULT_SEQUENCES, position: bool = False
) -> str:
    """The header line of a manifest, for writers that append rows to a part file first."""
    return ",".join(manifest_columns(sequences, position=position)) + lineterminator


def write_manifest(
    folder: str | os.PathLike[str],
    rows: Iterable[Mapping[str, Any]],
    *,
    lineterminator: str = "\r\n",
    sequences: Iterable[str] = DEFAULT_SEQUENCES,
    position: bool = False,
) -> None:
    """Write ``<folder>/manifest.csv`` from manifest rows (``position``: with :data:`POSITION_COLUMN`)."""
    with manifest_writer(
        Path(folder) / MANIFEST, lineterminator=lineterminator, sequences=sequences, position=position
    ) as writer:
        writer.writerows(rows)


def dataset_stats(
    *,
    source: str,
    size: int,
    splits: Mapping[str, int],
    class_counts: Iterable[int],
    sequences: Iterable[str] = DEFAULT_SEQUENCES,
    train_max: float | Sequence[float] | None = None,
    train_mean: float | Sequence[float] | None = None,
    **details: Any,
) -> dict[str, Any]:
    """The content of ``stats.json``: format, source, size, slice counts, per-class statistics.

    Args:
        source: ``real`` or ``synthetic``.
        size: side length of the slices.
        splits: slices per split (``train``, ``val``, ``test``).
        class_counts: (7,) pixel count per class of the training slices.
        sequences: the dataset's sequences. T1c alone: format /1, ``train_max``/``train_mean`` scalars (a
            one-element list is unwrapped); otherwise format /2, a ``sequences`` list and
            ``train_max``/``train_mean`` as lists in that order.
        train_max, train_mean: image datasets' intensity statistics (none for mask-only datasets).
        details: image datasets add ``split_mode``, ``seed`` and ``reduced_fraction``; they come after the
            splits, in the order given, then ``sequences`` (format /2), ``train_max`` and ``train_mean``.

    ``class_weights`` is left out when no pixel was counted (a dataset of no slices).
    """
    sequences = tuple(sequences)
    flat = is_flat(sequences)
    image_stats: dict[str, Any] = {} if flat else {"sequences": list(sequences)}
    for name, value in (("train_max", train_max), ("train_mean", train_mean)):
        if value is None:
            continue
        values = np.asarray(value).ravel().tolist()  # python numbers, as json writes them
        if len(values) != len(sequences) and not (flat and len(values) == 1):
            raise ValueError(
                f"{name} has {len(values)} values for {len(sequences)} sequences {list(sequences)}"
            )
        image_stats[name] = values[0] if flat else values
    counts = [int(c) for c in class_counts]
    total = sum(counts)
    stats: dict[str, Any] = {
        "format": DATASET_FORMAT if flat else DATASET_FORMAT_MULTI,
        "source": source,
        "size": int(size),
        "num_slices": int(sum(splits.values())),
        "splits": {name: int(splits.get(name, 0)) for name in SPLITS},
        **details,
        **image_stats,
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


def named_file(root: Path, relpath: str) -> Path:
    """``root / relpath``, refused (naming the manifest) when it is not a file."""
    path = root / relpath
    if not path.is_file():
        raise InputError(f"{path}: file not found (named by {root / MANIFEST})")
    return path


def check_files(root: str | os.PathLike[str], manifest: Manifest | None = None) -> None:
    """Refuse, naming the first, a file the manifest of ``root`` names that does not exist (one ``stat`` each)."""
    root = Path(root)
    manifest = read_manifest(root) if manifest is None else manifest
    for i in range(len(manifest)):
        for relpath in (*manifest.images[i], manifest.label[i]):
            if relpath:
                named_file(root, str(relpath))


def check_distinct(named: Mapping[str, str | os.PathLike[str] | None]) -> None:
    """Refuse two settings (key -> folder) that name one dataset: the same folder (symlinks resolved), or two
    folders whose ``manifest.csv`` holds the same bytes (a copy). The real dataset given again as synthetic
    used to double every training slice."""
    seen: list[tuple[str, str, Path, str | None]] = []
    for key, value in named.items():
        if value is None or str(value) == "":
            continue
        folder = Path(value).expanduser().resolve()
        try:
            digest = hashlib.sha256((folder / MANIFEST).read_bytes()).hexdigest()
        except OSError:
            digest = None  # no manifest (yet): the folders are compared by path alone
        for other_key, other_value, other_folder, other_digest in seen:
            if folder == other_folder:
                raise InputError(f"{key}={value} is the same folder as {other_key}={other_value}")
            if digest is not None and digest == other_digest:
                raise InputError(
                    f"{key}={value} holds the same {MANIFEST} as {other_key}={other_value} (a copy of one "
                    "dataset); give two different datasets"
                )
        seen.append((key, str(value), folder, digest))


def read_stats(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read ``<root>/stats.json``; a format newer than this code reads is one line naming the file."""
    path = Path(root) / STATS
    if not path.is_file():
        raise InputError(f"{path}: dataset statistics not found")
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(stats, dict):
        raise InputError(f"{path}: expected a JSON object")
    check_format(stats, path)
    return stats


def dataset_sequences(root: str | os.PathLike[str]) -> tuple[str, ...]:
    """The sequences of a dataset folder from its stats.json (no ``sequences`` key: T1c alone, format /1)."""
    stats = read_stats(root)
    named = stats.get("sequences", list(DEFAULT_SEQUENCES))
    return check_sequences(named, f"{Path(root) / STATS}: sequences")


def synthetic_row(
    sid: str,
    counts: np.ndarray,
    *,
    has_image: bool,
    sequences: Iterable[str] = DEFAULT_SEQUENCES,
    position: float | None = None,
) -> dict[str, Any]:
    """The manifest row of one synthetic slice (``split=train``, ``source=synthetic``, no case or slice index).

    Args:
        sid: slice id (file stem of ``labels/<sid>.png`` and, with ``has_image``, of each sequence's image at
            :func:`image_relpath`).
        counts: (7,) pixel count per class of its label map.
        sequences: the dataset's sequences (its image columns).
        position: the normalised axial position it was generated at: the row gains :data:`POSITION_COLUMN`
            (write it with ``position=True``).
    """
    check_id(sid, "synthetic slice")
    sequences = tuple(sequences)
    images = {
        col: image_relpath(sid, seq, sequences) if has_image else ""
        for col, seq in zip(image_columns(sequences), sequences, strict=True)
    }
    return {
        "id": sid,
        "case": "synthetic",
        "slice": -1,
        "split": "train",
        "source": "synthetic",
        "reduced": 0,
        "empty": int(counts[1:].sum() == 0),
        **images,
        "label": f"labels/{sid}.png",
        **{col: int(c) for col, c in zip(COUNT_COLUMNS, counts, strict=True)},
        **({POSITION_COLUMN: format_position(position)} if position is not None else {}),
    }


def format_position(position: float) -> str:
    """A position as the manifest writes it: 8 decimals (float32 positions round-trip to within 5e-9)."""
    return f"{float(position):.8f}"
