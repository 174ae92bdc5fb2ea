"""HD95 of the BraTS regions per test subject, with MONAI's Hausdorff distance.

Per region and subject: 3-D over the subject's stacked test slices (in slice order) when the dataset is split
by subject, as MONAI computes it on a volume; else 2-D per slice, and the subject's value is the mean over its
slices where both truth and prediction are non-empty, with the slices where exactly one side is empty counted
beside it (``one_side_empty``) instead of being folded in at some fixed distance. Otherwise MONAI's
``compute_hausdorff_distance(percentile=95)`` (the function behind ``HausdorffDistanceMetric``): the larger of
the two directed 95th percentiles of distances between the masks' boundary pixels.

Where one figure must stand for an empty side (3-D: the region is empty in the whole prediction or truth; 2-D:
a subject none of whose slices has both sides non-empty): ``empty="brats"`` gives BraTS' 373.13 (the
diagonal of its 240 x 240 x 155 1 mm volume), ``empty="diagonal"`` the diagonal of the image (2-D) or of the
stacked volume (3-D). Both empty: 0. Distances are in pixels of the slices on disk (1 mm for BraTS and the demo
cohort; ``spacing``: the downsampling factor in-plane, 1 between slices).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

BRATS_EMPTY = 373.13  # BraTS' HD95 where one side is empty: the diagonal of 240 x 240 x 155 at 1 mm
EMPTY_RULES = ("brats", "diagonal")
UNIT = "pixels of the slices on disk (1 mm for BraTS and the demo cohort)"


def empty_value(shape: Sequence[int], spacing: Sequence[float], empty: str = "brats") -> float:
    """The figure standing for an empty side: BraTS' 373.13 or the diagonal of ``shape`` at ``spacing``."""
    if empty not in EMPTY_RULES:
        raise ValueError(f"empty must be one of {list(EMPTY_RULES)}, got {empty!r}")
    if empty == "brats":
        return BRATS_EMPTY
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def hd95(
    pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None, empty: str = "brats"
) -> float:
    """HD95 between two boolean masks of equal shape (2-D or 3-D); one side empty: :func:`empty_value`."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return empty_value(pred.shape, spacing, empty)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own deprecation notice, raised internally
        value = compute_hausdorff_distance(
            torch.from_numpy(pred)[None, None].float(),
            torch.from_numpy(truth)[None, None].float(),
            include_background=True,
            percentile=95,
            spacing=list(spacing),
        )
    return float(value.reshape(-1)[0])


def subject_hd95(
    pred: np.ndarray, truth: np.ndarray, *, volume: bool, scale: float = 1.0, empty: str = "brats"
) -> tuple[float, int]:
    """HD95 of one region of one subject from its (S, H, W) stacked masks (slices in order).

    Args:
        volume: 3-D over the stack (split by subject) or the mean of 2-D values over the slices where both
            sides are non-empty.
        scale: in-plane pixel size in native pixels (the downsampling factor of the evaluated slices).
        empty: the figure for an empty side (:func:`empty_value`).

    Returns:
        (HD95, the number of slices where exactly one side is empty). In 2-D those slices are counted, not
        averaged in; a subject with no slice where both sides hold the region, but some with one side, gets
        the empty figure.
    """
    one_side = int(sum(bool(p.any()) != bool(t.any()) for p, t in zip(pred, truth, strict=True)))
    if volume:
        return hd95(pred, truth, (1.0, scale, scale), empty), one_side
    both = [i for i in range(len(pred)) if pred[i].any() and truth[i].any()]
    if not both:
        return (empty_value(pred.shape[1:], (scale, scale), empty) if one_side else 0.0), one_side
    return float(np.mean([hd95(pred[i], truth[i], (scale, scale), empty) for i in both])), one_side


class HD95Accumulator:
    """Collects bit-packed region masks of test slices per subject; computes HD95 per subject at the end.

    ``add`` takes one batch; ``compute`` returns ``{case: [hd95 per region]}`` and ``{case: [slices with one
    side empty per region]}``.
    """

    def __init__(self) -> None:
        self.slices: dict[str, list[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.shape: tuple[int, ...] = ()

    def add(
        self, cases: Sequence[str], slice_index: Sequence[int], pred: torch.Tensor, truth: torch.Tensor
    ) -> None:
        """pred, truth: (B, R, H, W) boolean region masks of one batch."""
        self.shape = tuple(pred.shape[1:])
        p = np.packbits(pred.cpu().numpy().reshape(len(pred), -1), axis=1)
        t = np.packbits(truth.cpu().numpy().reshape(len(truth), -1), axis=1)
        for i, case in enumerate(cases):
            self.slices.setdefault(str(case), []).append((int(slice_index[i]), p[i], t[i]))

    def compute(
        self, *, volume: bool, scale: float = 1.0, empty: str = "brats"
    ) -> tuple[dict[str, list[float]], dict[str, list[int]]]:
        size = int(np.prod(self.shape))
        values: dict[str, list[float]] = {}
        counts: dict[str, list[int]] = {}
        for case, items in self.slices.items():
            items = sorted(items, key=lambda item: item[0])
            pred = np.stack([np.unpackbits(p, count=size) for _, p, _ in items]).reshape(-1, *self.shape)
            truth = np.stack([np.unpackbits(t, count=size) for _, _, t in items]).reshape(-1, *self.shape)
            found = [
                subject_hd95(pred[:, r], truth[:, r], volume=volume, scale=scale, empty=empty)
                for r in range(self.shape[0])
            ]
            values[case] = [value for value, _ in found]
            counts[case] = [count for _, count in found]
        return values, counts


def split_by_subject(case: np.ndarray, split: np.ndarray) -> bool:
    """True when no test subject has a slice in the training split (the dataset was split by subject)."""
    return not set(case[split == "test"]) & set(case[split == "train"])


@dataclass
class HD95Result:
    """HD95 per subject and region, the slices with one side empty per subject and region, and the mode."""

    values: dict[str, list[float]]
    one_side_empty: dict[str, list[int]]
    mode: str


def hd95_per_case(
    accumulator: HD95Accumulator, *, volume: bool, native_size: int, empty: str = "brats"
) -> HD95Result:
    """HD95 per subject and region from a test epoch's masks, with the mode used (``3d``, ``2d`` or ``none``).

    Args:
        volume: 3-D over a subject's stacked slices (the data were split by subject, :func:`split_by_subject`),
            else the 2-D mean over slices.
        native_size: side of the slices on disk (distances are given in its pixels).
        empty: the figure for an empty side (:func:`empty_value`).
    """
    if not accumulator.slices:
        return HD95Result({}, {}, "none")
    scale = native_size / accumulator.shape[-1]
    values, counts = accumulator.compute(volume=volume, scale=scale, empty=empty)
    return HD95Result(values, counts, "3d" if volume else "2d")
