"""The slices a quality measurement reads: a dataset folder's training rows, the real reference the generator
saw, and the one intensity range per sequence that both sets are scaled by.

- :class:`DatasetSlices`: a dataset folder's training slices as memory-mapped arrays (manifest order).
- :func:`reference_empty_rule`: whether the real reference keeps empty label maps. A PGAN trained with
  ``data.drop_empty: true`` (the paper's) never saw one, so by default (``auto``) the reference leaves them out
  as well; the rule is read from the PGAN run that made the synthetic set, reached through its provenance
  (``prepare.json``), else it is the PGAN config's default.
- :func:`recorded_range`: per sequence, the prepared dataset's training maximum from its ``stats.json``: a
  statistic of the dataset, never of the sample measured, so one bright voxel cannot move a figure.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthseg.data.cache import open_cache
from synthseg.data.manifest import read_manifest, read_provenance, read_stats
from synthseg.errors import InputError
from synthseg.metrics import memorisation

REAL_SPLITS = ("train", "reduced")
REFERENCE_EMPTY = ("auto", "include", "exclude")
# ``data.drop_empty`` of conf/model/pgan.yaml: what a PGAN run does when its config cannot be read.
PGAN_DROPS_EMPTY = True


class DatasetSlices:
    """A dataset folder's training slices: memory-mapped arrays and the rows in use (manifest order).

    :meth:`use` picks the sequences measured and opens the slice cache (built then if needed).
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", key: str = "") -> None:
        if split not in REAL_SPLITS:
            raise InputError(f"real_split={split!r}: expected one of {list(REAL_SPLITS)}")
        self.root = Path(root)
        self.named = f"{key}={self.root}" if key else str(self.root)
        manifest = read_manifest(self.root)
        rows = manifest.rows("train")
        if split == "reduced":
            rows = rows[manifest.reduced[rows]]
        if len(rows) < 2:
            raise InputError(f"{self.root}: fewer than 2 training slices ({len(rows)})")
        self.manifest = manifest
        self.sequences = manifest.sequences
        self.rows = rows
        self.ids = manifest.ids

    def drop_empty(self) -> int:
        """Leave the empty label maps out of the rows in use; returns how many were left out."""
        keep = ~self.manifest.empty[self.rows]
        if keep.sum() < 2:
            raise InputError(f"{self.named}: fewer than 2 non-empty training slices ({int(keep.sum())})")
        dropped = int((~keep).sum())
        self.rows = self.rows[keep]
        return dropped

    def use(self, sequences: tuple[str, ...], why: str) -> None:
        """Read only ``sequences``, in that order; one line naming the folder when it lacks one (``why``: who
        asks for them), before any cache is built."""
        missing = [s for s in sequences if s not in self.sequences]
        if missing:
            raise InputError(
                f"{self.named}: holds the sequences {list(self.sequences)}, not {missing} ({why})"
            )
        channels = [self.sequences.index(s) for s in sequences]
        paths = self.manifest.images[self.rows][:, channels]
        if (paths == "").any():
            raise InputError(
                f"{self.named}: its manifest lists label maps without images; quality needs pairs"
            )
        images, self.labels = open_cache(self.root, self.manifest)
        whole = channels == list(range(len(self.sequences)))
        # (N, S, H, W) of the sequences measured, read lazily from the memory map.
        self.images = RowView(images, channels=None if whole else np.asarray(channels))
        self.sequences = tuple(sequences)
        self.size = int(self.labels.shape[-1])

    def sample(self, count: int, seed: int) -> np.ndarray:
        """At most ``count`` rows, drawn without replacement with ``seed``, in manifest order."""
        if len(self.rows) <= count:
            return self.rows
        return np.sort(np.random.default_rng(seed).choice(self.rows, size=count, replace=False))

    def load(self, rows: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels (N, size, size) int64 majority-downsampled, images (N, S, size, size) float32 block means)."""
        return memorisation.read_rows(self.labels, self.images, rows, size)


class RowView:
    """Rows ``rows`` (None: all) and channels ``channels`` (None: all) of a (memory-mapped) array, indexed
    lazily: the whole real split is never loaded at once."""

    def __init__(
        self, array: np.ndarray | RowView, rows: np.ndarray | None = None, channels: np.ndarray | None = None
    ) -> None:
        self.array, self.rows, self.channels = array, rows, channels
        rest = array.shape[1:] if channels is None else (len(channels), *array.shape[2:])
        self.shape: tuple[int, ...] = (len(array) if rows is None else len(rows), *rest)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> np.ndarray:
        picked = np.asarray(self.array[index if self.rows is None else self.rows[index]])
        return picked if self.channels is None else picked[:, self.channels]


def common_size(synthetic: DatasetSlices, real: DatasetSlices) -> int:
    """The side both sets are measured at: the smaller one (one must divide the other)."""
    small, large = sorted((synthetic.size, real.size))
    if large % small:
        raise InputError(
            f"synthetic slices are {synthetic.size} px, real ones {real.size} px: one must divide the other"
        )
    return small


def recorded_range(real: DatasetSlices) -> tuple[float, ...]:
    """Per measured sequence, the real dataset's training maximum as its ``stats.json`` records it.

    The one intensity range for both sets (synthetic images are written in the same 16-bit units, scaled by
    the same maximum); one line naming the file when it records none or a non-positive one.
    """
    path = real.root / "stats.json"
    stats = read_stats(real.root)
    values = np.atleast_1d(np.asarray(stats.get("train_max", []), dtype=np.float64))
    order = real.manifest.sequences
    if len(values) != len(order) or not np.all(values > 0):
        raise InputError(
            f"{path}: records no positive train_max per sequence {list(order)} (got {stats.get('train_max')}); "
            "quality scales both sets by the real dataset's recorded range: re-run prepare"
        )
    return tuple(float(values[order.index(s)]) for s in real.sequences)


def _pgan_checkpoints(record: dict[str, Any] | None, depth: int = 0) -> list[Path]:
    """PGAN snapshot paths named in a provenance record, following ``masks`` folders a few levels back."""
    if not isinstance(record, dict) or depth > 3:
        return []
    found: list[Path] = []
    synth = record.get("synthesize")
    if isinstance(synth, dict) and isinstance(synth.get("pgan"), dict) and synth["pgan"].get("path"):
        found.append(Path(str(synth["pgan"]["path"])))
    if record.get("command") == "generate-masks" and record.get("checkpoint"):
        found.append(Path(str(record["checkpoint"])))
    found += _pgan_checkpoints(record.get("input"), depth + 1)
    if record.get("masks"):
        found += _pgan_checkpoints(read_provenance(str(record["masks"])), depth + 1)
    return found


def _run_drops_empty(checkpoint: Path) -> tuple[bool, str] | None:
    """``data.drop_empty`` of the PGAN run a snapshot or checkpoint belongs to (its ``results.json`` or
    ``.hydra/config.yaml``), with the file it came from; None when neither is there."""
    for run in (checkpoint.parent.parent, checkpoint.parent):  # snapshots/<file> or checkpoints/<file>
        results = run / "results.json"
        if results.is_file():
            try:
                data = json.loads(results.read_text()).get("config", {}).get("data", {})
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(data, dict) and "drop_empty" in data:
                return bool(data["drop_empty"]), str(results)
        hydra = run / ".hydra" / "config.yaml"
        if hydra.is_file():
            from omegaconf import OmegaConf

            data = OmegaConf.load(hydra).get("data") or {}
            if "drop_empty" in data:
                return bool(data["drop_empty"]), str(hydra)
    return None


def reference_empty_rule(synthetic: str | os.PathLike[str], setting: str) -> dict[str, Any]:
    """Whether the real reference of a synthetic set keeps its empty label maps, and why.

    Args:
        synthetic: the synthetic dataset folder (its ``prepare.json`` names the PGAN).
        setting: ``include`` / ``exclude`` (the user's word), or ``auto``: ``exclude`` when the PGAN run that
            made the set trained without empty maps (``data.drop_empty``), ``include`` when it trained with
            them; the PGAN config's default (``exclude``) when the run cannot be reached.

    Returns:
        ``{"rule": "include" | "exclude", "from": where it was read}``.
    """
    if setting not in REFERENCE_EMPTY:
        raise InputError(f"reference_empty must be one of {list(REFERENCE_EMPTY)}, got {setting!r}")
    if setting != "auto":
        return {"rule": setting, "from": "reference_empty"}
    for checkpoint in _pgan_checkpoints(read_provenance(synthetic)):
        found = _run_drops_empty(checkpoint)
        if found is not None:
            drops, source = found
            return {"rule": "exclude" if drops else "include", "from": f"{source}: data.drop_empty={drops}"}
    return {
        "rule": "exclude" if PGAN_DROPS_EMPTY else "include",
        "from": "the PGAN config's default data.drop_empty=true (no PGAN run reachable from "
        f"{Path(synthetic) / 'prepare.json'}; reference_empty=include|exclude says otherwise)",
    }
