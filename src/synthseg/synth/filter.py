"""The Z-score filter of generated label maps (paper section 3.4).

Every synthetic mask is compared pixel by pixel with the real training masks: the per-pixel mean and standard
deviation of the real masks over the batch axis give a z-image ``(mask - mean) / std``; the Euclidean norm of the
vectorised z-image measures how far the mask lies from the real set, and a mask is kept when that norm is at
most a threshold (500 in the paper, at 256x256).

Decisions (argued in docs/filter.md):

- Pixels where the real standard deviation is 0 (every real mask has the same class there, usually background
  at the image border) use a floor instead of 0: the smallest non-zero standard deviation ``N`` integer masks
  can show, ``sqrt(N - 1) / N`` (one mask of ``N`` differing by one class). A synthetic mask painting anything
  there is treated as if the reference held one such mask, which is suspicious in proportion to the evidence
  against it. ``zero_std="exclude"`` drops those pixels from the norm instead.
- The threshold is stated at ``threshold_at`` (256) pixels of side and scaled linearly with the side length,
  because the norm grows with the square root of the pixel count; or it is a quantile of the real norms.
- Empty real masks are in the reference by default, as the paper compares with "the entirety of the real
  dataset"; ``include_empty=False`` leaves them out (the GAN was trained on non-empty masks only).

The statistics live in :mod:`synthseg.synth.zscore` (re-exported here), the figures in
:mod:`synthseg.synth.filter_plots`; this module does the folder-to-folder work of ``synthseg filter``
(:func:`run`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from synthseg.data.labels import NUM_CLASSES, resize_labels
from synthseg.data.manifest import (
    MANIFEST,
    PROVENANCE,
    MaskItem,
    check_distinct,
    dataset_stats,
    list_masks,
    read_manifest,
    read_provenance,
    synthetic_row,
    write_manifest,
    write_provenance,
    write_stats,
)
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.settings import Settings, check_choice, check_positive
from synthseg.synth.filter_plots import plot_calibration, plot_montage
from synthseg.synth.zscore import (
    PAPER_DISCARDED,
    REFERENCE_SPLITS,
    ZERO_STD_MODES,
    ReferenceStats,
    RunningMoments,
    discarded_fraction,
    effective_std,
    filter_masks,
    reference_statistics,
    scaled_threshold,
    zscore_norms,
)
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output

__all__ = [
    "PAPER_DISCARDED",
    "REFERENCE_SPLITS",
    "ZERO_STD_MODES",
    "FilterSettings",
    "MaskItem",
    "ReferenceStats",
    "RunningMoments",
    "discarded_fraction",
    "effective_std",
    "filter_masks",
    "list_masks",
    "main",
    "read_mask",
    "reference_items",
    "reference_statistics",
    "read_norms",
    "read_summary",
    "run",
    "scaled_threshold",
    "zscore_norms",
]


def read_mask(path: Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read an 8-bit label PNG (H, W) and check its values are 7-class indices."""
    mask = read_png(path, bitdepth=8, shape=shape)
    if mask.size and mask.max() >= NUM_CLASSES:
        raise InputError(f"{path}: label value {int(mask.max())} is not one of the 7 classes 0..6")
    return mask


def reference_items(reference: str | os.PathLike[str], split: str = "train") -> list[MaskItem]:
    """The real masks of a prepared dataset's training split (``train``) or reduced training split."""
    if split not in REFERENCE_SPLITS:
        raise InputError(f"reference_split must be one of {REFERENCE_SPLITS}, got {split!r}")
    manifest = read_manifest(reference)
    rows = manifest.rows("train")
    if split == "reduced":
        rows = rows[manifest.reduced[rows]]
    rows = rows[manifest.source[rows] == "real"]
    if rows.size == 0:
        raise InputError(f"{reference}: no real masks in the {split} split")
    root = Path(reference)
    return [MaskItem(str(manifest.ids[i]), root / manifest.label[i]) for i in rows]


def _read_all(
    items: Sequence[MaskItem],
    shape: tuple[int, int] | None,
    desc: str,
    progress: bool,
    *,
    reduce: bool = False,
) -> Iterator[np.ndarray]:
    """Read masks checking their size; with ``reduce``, larger reference masks are brought to ``shape``.

    A reference prepared at 256x256 serves masks of a GAN trained at a lower resolution (the demo): it is
    reduced by the DataModule's own rule (majority vote per block), so the filter sees the reals as the GAN did.
    """
    for item in tqdm(items, desc=desc, unit="mask", disable=not progress, leave=False):
        if not reduce or shape is None:
            yield read_mask(item.label, shape)
            continue
        mask = read_mask(item.label)
        if mask.shape != shape:
            factor = mask.shape[0] // shape[0]
            if mask.shape != (shape[0] * factor, shape[1] * factor) or factor < 1:
                raise InputError(
                    f"{item.label}: reference mask is {mask.shape[0]}x{mask.shape[1]}, the masks are "
                    f"{shape[0]}x{shape[1]} (not an integer reduction)"
                )
            mask = resize_labels(mask, mask.shape[-1] // factor)
        yield mask


def _comparison_shape(refs: list[MaskItem], items: list[MaskItem]) -> tuple[int, int]:
    """Masks smaller than the reference by an integer factor (a GAN trained at a lower resolution) are
    compared at their own size; otherwise at the reference's, and any mask of another size is an error."""
    shape = read_mask(refs[0].label).shape
    first = read_mask(items[0].label).shape
    if first[0] == first[1] and shape[0] == shape[1] and shape[0] % first[0] == 0:
        shape = first
    return (int(shape[0]), int(shape[1]))


def _reference_pass(
    refs: list[MaskItem], shape: tuple[int, int], include_empty: bool, batch_size: int, progress: bool
) -> tuple[ReferenceStats, list[MaskItem], int]:
    """Which reference masks take part, and their statistics: ``(stats, used, empty_excluded)``."""
    used: list[MaskItem] = []
    empty_excluded = 0

    def reference_masks() -> Iterator[np.ndarray]:
        nonlocal empty_excluded
        reals = _read_all(refs, shape, "reference statistics", progress, reduce=True)
        for item, mask in zip(refs, reals, strict=True):
            if not include_empty and not mask.any():
                empty_excluded += 1
                continue
            used.append(item)
            yield mask

    stats = reference_statistics(reference_masks(), batch_size=batch_size)
    return stats, used, empty_excluded


def _summary(
    masks: Path,
    reference: Path,
    settings: FilterSettings,
    stats: ReferenceStats,
    empty_excluded: int,
    items: list[MaskItem],
    keep: np.ndarray,
    norms: np.ndarray,
    real_norms: np.ndarray,
    threshold: float,
    side: int,
    has_images: bool,
) -> dict[str, Any]:
    """The content of filter.json."""
    discarded = [i for i, k in enumerate(keep) if not k]
    return {
        "masks": str(masks),
        "reference": str(reference),
        "reference_split": settings.reference_split,
        "include_empty": bool(settings.include_empty),
        "size": side,
        "threshold": threshold,
        "threshold_setting": {
            "threshold": float(settings.threshold),
            "threshold_at": settings.threshold_at,
            "threshold_quantile": settings.threshold_quantile,
        },
        "zero_std": settings.zero_std,
        "zero_std_floor": stats.zero_std_floor,
        "zero_std_pixels": int((stats.std == 0).sum()),
        "reference_count": stats.count,
        "reference_empty_excluded": empty_excluded,
        "synthetic_count": len(items),
        "kept": int(np.count_nonzero(keep)),
        "discarded": len(discarded),
        "synthetic_discarded_fraction": float(discarded_fraction(norms, threshold)),
        "real_discarded_fraction": float(discarded_fraction(real_norms, threshold)),
        "paper_synthetic_discarded_fraction": PAPER_DISCARDED,
        "synthetic_norm": _describe(norms),
        "real_norm": _describe(real_norms),
        "real_norm_mean_square": float(np.mean(real_norms**2)) if real_norms.size else 0.0,
        "images_copied": has_images,
        "discarded_ids": [items[i].id for i in discarded],
        "files": {
            "manifest": MANIFEST,
            "norms": "norms.csv",
            "calibration_plot": "filter_calibration.png",
            "discarded_montage": "filter_discarded.png",
        },
    }


def _write_kept(
    tmp: Path,
    items: list[MaskItem],
    keep: np.ndarray,
    counts: np.ndarray,
    norms: np.ndarray,
    side: int,
    has_images: bool,
) -> None:
    """The kept masks (and their images) copied byte for byte, their manifest, stats and every norm."""
    (tmp / "labels").mkdir()
    if has_images:
        (tmp / "images").mkdir()
    rows = []
    for i, item in enumerate(items):
        if not keep[i]:
            continue
        # Copy the files byte for byte: lossless, and faster than decoding and re-encoding.
        shutil.copyfile(item.label, tmp / "labels" / f"{item.id}.png")
        if has_images and item.image is not None:
            shutil.copyfile(item.image, tmp / "images" / f"{item.id}.png")
        rows.append(synthetic_row(item.id, counts[i], has_image=has_images))
    write_manifest(tmp, rows)
    with open(tmp / "norms.csv", "w", newline="") as handle:
        norm_writer = csv.writer(handle)
        norm_writer.writerow(["id", "norm", "kept"])
        norm_writer.writerows(
            [item.id, repr(float(norm)), int(k)] for item, norm, k in zip(items, norms, keep, strict=True)
        )
    kept = int(np.count_nonzero(keep))
    write_stats(
        tmp,
        dataset_stats(
            source="synthetic", size=side, splits={"train": kept}, class_counts=counts[keep].sum(axis=0)
        ),
    )


@dataclass(frozen=True)
class FilterSettings(Settings):
    """``conf/filter.yaml``; the keys are described there and in the module docstring."""

    REQUIRED = {"masks": "DIR", "reference": "DIR", "output": "DIR"}

    masks: str
    reference: str
    output: str
    reference_split: str = "train"
    include_empty: bool = True
    threshold: float = 500.0
    threshold_at: int | None = 256
    threshold_quantile: float | None = None
    zero_std: str = "floor"
    batch_size: int = 64
    montage: int = 24
    overwrite: bool = False
    progress: bool = True

    def check(self) -> None:
        check_choice("reference_split", self.reference_split, REFERENCE_SPLITS)
        if self.zero_std not in ZERO_STD_MODES:
            raise InputError(f"zero_std must be one of {ZERO_STD_MODES}, got {self.zero_std!r}")
        if self.threshold_quantile is not None and not 0.0 < float(self.threshold_quantile) <= 1.0:
            raise InputError(f"threshold_quantile must be in (0, 1], got {self.threshold_quantile}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {self.batch_size}")
        check_positive("threshold", self.threshold, allow_zero=True)
        check_positive("threshold_at", self.threshold_at)
        check_positive("montage", self.montage, allow_zero=True)

    def check_inputs(self) -> None:
        """Before any mask is read: the two folders are different datasets, every mask's file (and image) the
        masks' manifest names exists, and the reference has real training masks."""
        check_distinct({"masks": self.masks, "reference": self.reference})
        list_masks(self.masks, "masks")
        reference_items(self.reference, self.reference_split)


def run(settings: FilterSettings) -> Path:
    """Filter a folder of generated masks against a prepared dataset; write the kept ones as a dataset folder
    and return it.

    The output folder (written atomically) holds ``labels/`` (and ``images/`` when the input has them),
    ``manifest.csv`` (``source=synthetic``), ``stats.json``, ``prepare.json`` (provenance), ``filter.json``
    (the summary: threshold, counts, discarded fractions, the norms' spread), ``norms.csv`` (every mask's norm,
    lossless, and verdict), ``filter_calibration.png`` (discarded fractions of synthetic and real masks against
    the threshold) and ``filter_discarded.png`` (a montage of discarded masks in the paper's colours, its Fig. 4).
    """
    settings.check_inputs()
    masks, reference = Path(settings.masks), Path(settings.reference)
    overwrite, progress, batch_size = settings.overwrite, settings.progress, settings.batch_size
    zero_std, include_empty = settings.zero_std, settings.include_empty
    output = check_output(settings.output, command="filter", inputs=[masks, reference], overwrite=overwrite)
    items = list_masks(masks, "masks")
    refs = reference_items(reference, settings.reference_split)
    shape = _comparison_shape(refs, items)
    side = shape[0]

    # Pass 1 over the reference: which masks take part, and their statistics (at the masks' size).
    stats, used, empty_excluded = _reference_pass(refs, shape, include_empty, batch_size, progress)
    # Pass 2: the real norms, for calibration (the reals are scored against statistics that include them).
    real_norms = zscore_norms(
        _read_all(used, shape, "real norms", progress, reduce=True),
        stats,
        zero_std=zero_std,
        batch_size=batch_size,
    )
    if settings.threshold_quantile is not None:
        used_threshold = float(np.quantile(real_norms, float(settings.threshold_quantile)))
    else:
        used_threshold = scaled_threshold(settings.threshold, side, settings.threshold_at)

    # Pass 3: the synthetic norms, with the class counts for the manifest.
    counts = np.zeros((len(items), NUM_CLASSES), dtype=np.int64)

    def synthetic_masks() -> Iterator[np.ndarray]:
        for i, mask in enumerate(_read_all(items, shape, "synthetic norms", progress)):
            counts[i] = np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            yield mask

    keep, norms = filter_masks(
        synthetic_masks(), stats, used_threshold, zero_std=zero_std, batch_size=batch_size
    )
    has_images = all(item.image is not None for item in items)
    summary = _summary(
        masks,
        reference,
        settings,
        stats,
        empty_excluded,
        items,
        keep,
        norms,
        real_norms,
        used_threshold,
        side,
        has_images,
    )

    needed = sum(
        item.label.stat().st_size + (item.image.stat().st_size if has_images and item.image else 0)
        for item, k in zip(items, keep, strict=True)
        if k
    )
    check_free_space(output.parent, needed, "the filtered masks")
    with claim_output(
        output, command="filter", inputs=[masks, reference], overwrite=overwrite, later=DATASET_LATER
    ) as tmp:
        _write_kept(tmp, items, keep, counts, norms, side, has_images)
        provenance: dict[str, Any] = {
            "command": "filter",
            "config": dataclasses.asdict(settings),
            "filter": {
                k: summary[k]
                for k in ("threshold", "zero_std", "reference", "reference_split", "kept", "discarded")
            },
        }
        if (masks / PROVENANCE).is_file():
            provenance["input"] = read_provenance(masks)
        from synthseg import __version__

        provenance["version"] = __version__
        write_provenance(tmp, provenance)
        (tmp / "filter.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_calibration(tmp / "filter_calibration.png", norms, real_norms, used_threshold, side)
        shown = [i for i, k in enumerate(keep) if not k][: max(int(settings.montage), 0)]
        plot_montage(
            tmp / "filter_discarded.png",
            [read_mask(items[i].label, shape) for i in shown],
            [f"{items[i].id}\n{norms[i]:.0f}" for i in shown],
        )
    return output


def _describe(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "p99": float(np.quantile(values, 0.99)),
        "max": float(values.max()),
    }


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg filter`` (``conf/filter.yaml``)."""
    settings = FilterSettings.from_config(cfg)
    output = run(settings)
    s = read_summary(output)
    print(
        f"synthseg filter: kept {s['kept']} of {s['synthetic_count']} masks "
        f"({100 * s['synthetic_discarded_fraction']:.3f} % discarded) at threshold {s['threshold']:.1f}; "
        f"the same threshold would discard {100 * s['real_discarded_fraction']:.3f} % of the "
        f"{s['reference_count']} real masks.\n  output: {settings.output} (filter.json, filter_calibration.png, filter_discarded.png)"
    )
    return output


def read_summary(output: str | os.PathLike[str]) -> dict[str, Any]:
    """``<output>/filter.json``: what a filter run measured and kept (see :func:`run`)."""
    return json.loads((Path(output) / "filter.json").read_text())


def read_norms(output: str | os.PathLike[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``<output>/norms.csv``: every input mask's id, its z-score norm (float64, as computed) and whether it was
    kept, in input order."""
    with open(Path(output) / "norms.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ids = [row["id"] for row in rows]
    norms = np.array([float(row["norm"]) for row in rows], dtype=np.float64)
    return ids, norms, np.array([row["kept"] == "1" for row in rows], dtype=bool)
