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
- Empty real masks are left out of the reference by default: the GAN was trained on non-empty masks only.

The core functions (:func:`reference_statistics`, :func:`zscore_norms`, :func:`filter_masks`) work on any
iterable of ``(H, W)`` arrays so the synthesis pipeline can call them on masks in memory; :func:`run_filter`
does the folder-to-folder work of ``synthseg filter``.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from synthseg.data.dataset import downsample_labels
from synthseg.data.labels import CLASS_NAMES, NUM_CLASSES, PALETTE, class_weights_from_counts, colorize
from synthseg.data.manifest import MANIFEST, REQUIRED_COLUMNS, read_manifest, synthetic_row
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output

ZERO_STD_MODES = ("floor", "exclude")
REFERENCE_SPLITS = ("train", "reduced")
# The paper's discarded fractions of synthetic masks (section 4.2), for the summary.
PAPER_DISCARDED = {"full": 0.00597, "reduced": 0.01882}


@dataclass(frozen=True)
class ReferenceStats:
    """Per-pixel statistics of the real label maps over the batch axis.

    Attributes:
        mean: (H, W) float64 mean class index per pixel.
        std: (H, W) float64 population standard deviation (ddof 0) per pixel.
        count: number of real masks.
    """

    mean: np.ndarray
    std: np.ndarray
    count: int

    @property
    def zero_std_floor(self) -> float:
        """Smallest non-zero std ``count`` integer masks can show: one of them differs by 1 from the rest."""
        return float(np.sqrt(self.count - 1) / self.count) if self.count > 1 else 0.0

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.mean.shape[0]), int(self.mean.shape[1]))


class RunningMoments:
    """Streaming per-pixel mean and variance over batches (Chan et al.'s pairwise merge of Welford moments).

    Memory is constant in the number of masks: one (H, W) mean and one (H, W) sum of squared deviations.
    """

    def __init__(self, shape: tuple[int, int]) -> None:
        self.count = 0
        self.mean = np.zeros(shape, dtype=np.float64)
        self.m2 = np.zeros(shape, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        """Merge a batch (B, H, W) of masks into the running moments."""
        batch = np.asarray(batch, dtype=np.float64)
        if batch.ndim != 3 or batch.shape[1:] != self.mean.shape:
            raise ValueError(
                f"expected a batch of shape (B, {self.mean.shape[0]}, {self.mean.shape[1]}), got {batch.shape}"
            )
        n_b = batch.shape[0]
        if n_b == 0:
            return
        mean_b = batch.mean(axis=0)
        m2_b = ((batch - mean_b) ** 2).sum(axis=0)
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self.mean
        # Chan's merge: exact for any split of the data into batches, no catastrophic cancellation.
        self.mean += delta * (n_b / n)
        self.m2 += m2_b + delta**2 * (n_a * n_b / n)
        self.count = n

    def result(self) -> ReferenceStats:
        """The statistics so far; the std is the population std (ddof 0), as ``np.std`` computes it."""
        if self.count == 0:
            raise ValueError("no masks were seen")
        return ReferenceStats(mean=self.mean.copy(), std=np.sqrt(self.m2 / self.count), count=self.count)


def _batches(masks: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Group (H, W) masks into (B, H, W) batches; a (B, H, W) array item is split as well."""
    buffer: list[np.ndarray] = []
    for item in masks:
        item = np.asarray(item)
        for mask in item if item.ndim == 3 else (item,):
            if mask.ndim != 2:
                raise ValueError(f"a mask must be 2-D (H, W), got shape {mask.shape}")
            buffer.append(mask)
            if len(buffer) == batch_size:
                yield np.stack(buffer)
                buffer = []
    if buffer:
        yield np.stack(buffer)


def reference_statistics(masks: Iterable[np.ndarray], *, batch_size: int = 64) -> ReferenceStats:
    """Per-pixel mean and std over the batch axis of real masks, computed streaming.

    Args:
        masks: (H, W) label maps (or (B, H, W) batches), all of one size.
        batch_size: masks merged per step; only changes speed and memory, not the result.

    Returns:
        The :class:`ReferenceStats` of all masks.
    """
    moments: RunningMoments | None = None
    for batch in _batches(masks, batch_size):
        if moments is None:
            moments = RunningMoments(batch.shape[1:])
        moments.update(batch)
    if moments is None:
        raise InputError("the reference set holds no masks")
    return moments.result()


def effective_std(stats: ReferenceStats, zero_std: str = "floor") -> np.ndarray:
    """The (H, W) divisor of the z-score: the real std, with its zeros handled per ``zero_std``.

    ``floor`` replaces zeros by :attr:`ReferenceStats.zero_std_floor`; ``exclude`` leaves them as ``inf``,
    which makes the z-score 0 there (the pixel does not count).
    """
    if zero_std not in ZERO_STD_MODES:
        raise InputError(f"zero_std must be one of {ZERO_STD_MODES}, got {zero_std!r}")
    zero = stats.std == 0
    if zero_std == "floor":
        if stats.count < 2:
            raise InputError("the reference set needs at least 2 masks to estimate a standard deviation")
        return np.where(zero, stats.zero_std_floor, stats.std)
    return np.where(zero, np.inf, stats.std)


def zscore_norms(
    masks: Iterable[np.ndarray], stats: ReferenceStats, *, zero_std: str = "floor", batch_size: int = 64
) -> np.ndarray:
    """L2 norm of the z-image of every mask with respect to the real statistics.

    Args:
        masks: (H, W) label maps (or (B, H, W) batches) of the reference's size.
        stats: statistics of the real masks (:func:`reference_statistics`).
        zero_std: ``floor`` or ``exclude``, see :func:`effective_std`.
        batch_size: masks per vectorised step.

    Returns:
        (N,) float64 norms ``||(mask - mean) / std||_2`` in input order.
    """
    std = effective_std(stats, zero_std)
    inv_std = 1.0 / std  # 0 where excluded
    norms: list[np.ndarray] = []
    for batch in _batches(masks, batch_size):
        if batch.shape[1:] != stats.shape:
            raise InputError(
                f"mask size {batch.shape[1]}x{batch.shape[2]} differs from the reference's {stats.shape[0]}x{stats.shape[1]}"
            )
        z = (batch.astype(np.float64) - stats.mean) * inv_std
        norms.append(np.sqrt((z * z).reshape(len(batch), -1).sum(axis=1)))
    return np.concatenate(norms) if norms else np.zeros(0, dtype=np.float64)


def filter_masks(
    masks: Iterable[np.ndarray],
    stats: ReferenceStats,
    threshold: float,
    *,
    zero_std: str = "floor",
    batch_size: int = 64,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the masks whose z-score norm is at most ``threshold``.

    Returns:
        ``(keep, norms)``: (N,) bool, True for a kept mask, and the (N,) float64 norms.
    """
    norms = zscore_norms(masks, stats, zero_std=zero_std, batch_size=batch_size)
    return norms <= threshold, norms


def scaled_threshold(threshold: float, side: int, threshold_at: int | None = 256) -> float:
    """``threshold`` stated at ``threshold_at`` pixels of side, scaled linearly to masks of ``side`` pixels.

    The norm's mean square over the real set equals the number of pixels with non-zero deviation, so the norm
    grows with the square root of the pixel count, i.e. linearly with the side of a square mask.
    ``threshold_at=None`` uses ``threshold`` as given.
    """
    if threshold_at is None:
        return float(threshold)
    return float(threshold) * side / int(threshold_at)


def discarded_fraction(norms: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """Fraction of ``norms`` (N,) above each threshold (T,) (a mask is discarded when its norm exceeds it)."""
    norms = np.sort(np.asarray(norms, dtype=np.float64))
    thresholds = np.asarray(thresholds, dtype=np.float64)
    if norms.size == 0:
        return np.zeros_like(thresholds)
    return 1.0 - np.searchsorted(norms, thresholds, side="right") / norms.size


# ----------------------------------------------------------------------------------------------------------
# Folders


@dataclass(frozen=True)
class MaskItem:
    """One mask file of the input: its id, label path and image path (None when the input has no images)."""

    id: str
    label: Path
    image: Path | None = None


def list_masks(folder: str | os.PathLike[str]) -> list[MaskItem]:
    """The masks of a dataset folder (manifest order) or of a plain folder of PNGs (name order).

    A dataset folder has ``manifest.csv``; a folder with ``labels/`` but no manifest is read from ``labels/``
    (images from ``images/<id>.png`` when present); otherwise every ``*.png`` of the folder is a mask.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: masks folder not found")
    if (folder / MANIFEST).is_file():
        manifest = read_manifest(folder)
        items = []
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
        items = []
        for path in sorted(labels.glob("*.png")):
            image = folder / "images" / path.name if labels != folder else None
            items.append(MaskItem(path.stem, path, image if image is not None and image.is_file() else None))
    if not items:
        raise InputError(f"{folder}: no label PNGs found (expected manifest.csv, labels/*.png or *.png)")
    return items


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
            mask = downsample_labels(mask, factor)
        yield mask


@dataclass
class FilterReport:
    """What :func:`run_filter` measured and wrote."""

    ids: list[str]
    norms: np.ndarray  # (N,) synthetic norms
    keep: np.ndarray  # (N,) bool
    real_norms: np.ndarray  # (M,) norms of the reference masks
    threshold: float
    summary: dict[str, Any] = field(default_factory=dict)


def _plot_calibration(
    path: Path, norms: np.ndarray, real_norms: np.ndarray, threshold: float, side: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(float(np.max(norms, initial=0.0)), float(np.max(real_norms, initial=0.0)), threshold) * 1.05
    grid = np.linspace(0.0, max(top, 1.0), 500)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    syn = discarded_fraction(norms, threshold) * 100
    real = discarded_fraction(real_norms, threshold) * 100
    ax.plot(grid, discarded_fraction(norms, grid) * 100, label=f"synthetic masks ({syn:.3f} % at threshold)")
    ax.plot(grid, discarded_fraction(real_norms, grid) * 100, label=f"real masks ({real:.3f} % at threshold)")
    ax.axvline(threshold, color="k", linestyle="--", linewidth=1, label=f"threshold {threshold:.1f}")
    ax.set_xlabel(f"threshold on the z-score norm ({side}x{side} masks)")
    ax.set_ylabel("discarded (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_ylim(0, 100)
    ax.set_title("Z-score filter: fraction of masks discarded against the threshold")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_montage(path: Path, masks: list[np.ndarray], titles: list[str], columns: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not masks:
        fig, ax = plt.subplots(figsize=(4, 1.5), dpi=120)
        ax.axis("off")
        ax.text(0.5, 0.5, "no mask was discarded", ha="center", va="center")
        fig.savefig(path)
        plt.close(fig)
        return
    rows = (len(masks) + columns - 1) // columns
    cols = min(columns, len(masks))
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(2.0 * cols, 7.0), 2.2 * rows + 0.8), dpi=120, squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, mask, title in zip(axes.ravel(), masks, titles, strict=False):
        ax.imshow(colorize(mask), interpolation="nearest")
        ax.set_title(title, fontsize=7)
    handles = [
        Patch(facecolor=PALETTE[c] / 255, edgecolor="0.5", label=name) for c, name in enumerate(CLASS_NAMES)
    ]
    fig.legend(
        handles=handles, loc="lower center", ncol=len(handles) if cols >= 4 else 4, fontsize=7, frameon=False
    )
    fig.suptitle("Masks discarded by the Z-score filter (norm in the titles)", fontsize=9)
    fig.tight_layout(rect=(0, 0.08 if cols >= 4 else 0.14, 1, 0.95))
    fig.savefig(path)
    plt.close(fig)


def _manifest_row(item: MaskItem, counts: np.ndarray, has_images: bool) -> dict[str, Any]:
    return synthetic_row(item.id, counts, has_image=has_images)


def run_filter(
    masks: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    reference_split: str = "train",
    include_empty: bool = False,
    threshold: float = 500.0,
    threshold_at: int | None = 256,
    threshold_quantile: float | None = None,
    zero_std: str = "floor",
    batch_size: int = 64,
    montage: int = 24,
    overwrite: bool = False,
    progress: bool = True,
    config: dict[str, Any] | None = None,
) -> FilterReport:
    """Filter a folder of generated masks against a prepared dataset; write the kept ones as a dataset folder.

    The output folder (written atomically) holds ``labels/`` (and ``images/`` when the input has them),
    ``manifest.csv`` (``source=synthetic``), ``stats.json``, ``prepare.json`` (provenance), ``filter.json``
    (the summary), ``norms.csv`` (every mask's norm and verdict), ``filter_calibration.png`` (discarded
    fractions of synthetic and real masks against the threshold) and ``filter_discarded.png`` (a montage of
    discarded masks in the paper's colours, its Fig. 4).
    """
    masks, reference, output = Path(masks), Path(reference), Path(output)
    if zero_std not in ZERO_STD_MODES:
        raise InputError(f"zero_std must be one of {ZERO_STD_MODES}, got {zero_std!r}")
    if threshold_quantile is not None and not 0.0 < float(threshold_quantile) <= 1.0:
        raise InputError(f"threshold_quantile must be in (0, 1], got {threshold_quantile}")
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    output = check_output(output, command="filter", inputs=[masks, reference], overwrite=overwrite)

    items = list_masks(masks)
    refs = reference_items(reference, reference_split)

    # Pass 1 over the reference: which masks take part, and their statistics (at the masks' size).
    # Masks smaller than the reference by an integer factor (a GAN trained at a lower resolution) are
    # compared at their own size; otherwise at the reference's, and any mask of another size is an error.
    shape = read_mask(refs[0].label).shape
    first = read_mask(items[0].label).shape
    if first[0] == first[1] and shape[0] == shape[1] and shape[0] % first[0] == 0:
        shape = first
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
    side = shape[0]

    # Pass 2: the real norms, for calibration (the reals are scored against statistics that include them).
    real_norms = zscore_norms(
        _read_all(used, shape, "real norms", progress, reduce=True),
        stats,
        zero_std=zero_std,
        batch_size=batch_size,
    )

    if threshold_quantile is not None:
        used_threshold = float(np.quantile(real_norms, float(threshold_quantile)))
    else:
        used_threshold = scaled_threshold(threshold, side, threshold_at)

    # Pass 3: the synthetic norms, with the class counts for the manifest.
    counts = np.zeros((len(items), NUM_CLASSES), dtype=np.int64)

    def synthetic_masks() -> Iterator[np.ndarray]:
        for i, mask in enumerate(_read_all(items, shape, "synthetic norms", progress)):
            counts[i] = np.bincount(mask.ravel(), minlength=NUM_CLASSES)[:NUM_CLASSES]
            yield mask

    keep, norms = filter_masks(
        synthetic_masks(), stats, used_threshold, zero_std=zero_std, batch_size=batch_size
    )
    kept = [item for item, k in zip(items, keep, strict=True) if k]
    discarded = [i for i, k in enumerate(keep) if not k]
    has_images = all(item.image is not None for item in items)

    syn_fraction = float(discarded_fraction(norms, used_threshold))
    real_fraction = float(discarded_fraction(real_norms, used_threshold))
    summary: dict[str, Any] = {
        "masks": str(masks),
        "reference": str(reference),
        "reference_split": reference_split,
        "include_empty": bool(include_empty),
        "size": side,
        "threshold": used_threshold,
        "threshold_setting": {
            "threshold": float(threshold),
            "threshold_at": threshold_at,
            "threshold_quantile": threshold_quantile,
        },
        "zero_std": zero_std,
        "zero_std_floor": stats.zero_std_floor,
        "zero_std_pixels": int((stats.std == 0).sum()),
        "reference_count": stats.count,
        "reference_empty_excluded": empty_excluded,
        "synthetic_count": len(items),
        "kept": len(kept),
        "discarded": len(discarded),
        "synthetic_discarded_fraction": syn_fraction,
        "real_discarded_fraction": real_fraction,
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

    needed = sum(
        item.label.stat().st_size + (item.image.stat().st_size if has_images and item.image else 0)
        for item in kept
    )
    check_free_space(output.parent, needed, "the filtered masks")
    with claim_output(
        output, command="filter", inputs=[masks, reference], overwrite=overwrite, later=DATASET_LATER
    ) as tmp:
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
            rows.append(_manifest_row(item, counts[i], has_images))
        with open(tmp / MANIFEST, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(REQUIRED_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)
        with open(tmp / "norms.csv", "w", newline="") as handle:
            norm_writer = csv.writer(handle)
            norm_writer.writerow(["id", "norm", "kept"])
            norm_writer.writerows(
                [item.id, f"{norm:.6g}", int(k)] for item, norm, k in zip(items, norms, keep, strict=True)
            )
        class_counts = counts[keep].sum(axis=0)
        stats_json: dict[str, Any] = {
            "format": "synthseg-dataset/1",
            "source": "synthetic",
            "size": side,
            "num_slices": len(kept),
            "splits": {"train": len(kept), "val": 0, "test": 0},
            "class_counts": [int(c) for c in class_counts],
            "class_frequencies": [float(c) / max(int(class_counts.sum()), 1) for c in class_counts],
        }
        if class_counts.sum() > 0:
            stats_json["class_weights"] = [float(w) for w in class_weights_from_counts(class_counts)]
        (tmp / "stats.json").write_text(json.dumps(stats_json, indent=2) + "\n")
        provenance: dict[str, Any] = {
            "command": "filter",
            "config": config or {},
            "filter": {
                k: summary[k]
                for k in ("threshold", "zero_std", "reference", "reference_split", "kept", "discarded")
            },
        }
        if (masks / "prepare.json").is_file():
            try:
                provenance["input"] = json.loads((masks / "prepare.json").read_text())
            except json.JSONDecodeError:
                provenance["input"] = None
        from synthseg import __version__

        provenance["version"] = __version__
        (tmp / "prepare.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
        (tmp / "filter.json").write_text(json.dumps(summary, indent=2) + "\n")
        _plot_calibration(tmp / "filter_calibration.png", norms, real_norms, used_threshold, side)
        shown = discarded[: max(int(montage), 0)]
        _plot_montage(
            tmp / "filter_discarded.png",
            [read_mask(items[i].label, shape) for i in shown],
            [f"{items[i].id}\n{norms[i]:.0f}" for i in shown],
        )
    return FilterReport([item.id for item in items], norms, keep, real_norms, used_threshold, summary)


def _describe(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "p99": float(np.quantile(values, 0.99)),
        "max": float(values.max()),
    }


def main(cfg: Any) -> dict[str, Any]:
    """``synthseg filter``: the composed config of ``conf/filter.yaml``."""
    from omegaconf import OmegaConf

    report = run_filter(
        cfg.masks,
        cfg.reference,
        cfg.output,
        reference_split=str(cfg.reference_split),
        include_empty=bool(cfg.include_empty),
        threshold=float(cfg.threshold),
        threshold_at=None if cfg.threshold_at is None else int(cfg.threshold_at),
        threshold_quantile=None if cfg.threshold_quantile is None else float(cfg.threshold_quantile),
        zero_std=str(cfg.zero_std),
        batch_size=int(cfg.batch_size),
        montage=int(cfg.montage),
        overwrite=bool(cfg.overwrite),
        progress=bool(cfg.get("progress", True)),
        config=OmegaConf.to_container(cfg, resolve=True),  # type: ignore[arg-type]
    )
    s = report.summary
    print(
        f"synthseg filter: kept {s['kept']} of {s['synthetic_count']} masks "
        f"({100 * s['synthetic_discarded_fraction']:.3f} % discarded) at threshold {s['threshold']:.1f}; "
        f"the same threshold would discard {100 * s['real_discarded_fraction']:.3f} % of the "
        f"{s['reference_count']} real masks.\n  output: {cfg.output} (filter.json, filter_calibration.png, filter_discarded.png)"
    )
    return s
