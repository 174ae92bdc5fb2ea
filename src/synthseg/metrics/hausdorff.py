"""HD95 of the BraTS regions per test subject, with MONAI's Hausdorff distance.

Per region and subject: 3-D over the subject's stacked test slices (in slice order) when the dataset is split
by subject, else 2-D per slice and the subject's value is the mean over its slices where truth or prediction
is non-empty (so empty slices do not pull it to zero). Empty conventions (BraTS): both empty -> 0; exactly one
empty -> the diagonal of the image (2-D) or of the stacked volume (3-D), in the same units. Otherwise MONAI's
``compute_hausdorff_distance(percentile=95)`` (the function behind ``HausdorffDistanceMetric``): the larger of
the two directed 95th percentiles of distances between the masks' boundary pixels. Distances are in pixels of
the native slice size (``spacing``: the downsampling factor in-plane, 1 between slices).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """HD95 between two boolean masks of equal shape (2-D or 3-D), BraTS empty conventions."""
    pred, truth = np.asarray(pred, dtype=bool), np.asarray(truth, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return math.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True)))
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


def subject_hd95(pred: np.ndarray, truth: np.ndarray, *, volume: bool, scale: float = 1.0) -> float:
    """HD95 of one region of one subject from its (S, H, W) stacked masks (slices in order).

    Args:
        volume: 3-D over the stack (split by subject) or the mean of 2-D values over non-empty slices.
        scale: in-plane pixel size in native pixels (the downsampling factor of the evaluated slices).
    """
    if volume:
        return hd95(pred, truth, (1.0, scale, scale))
    active = [i for i in range(len(pred)) if pred[i].any() or truth[i].any()]
    if not active:
        return 0.0
    return float(np.mean([hd95(pred[i], truth[i], (scale, scale)) for i in active]))


class HD95Accumulator:
    """Collects bit-packed region masks of test slices per subject; computes HD95 per subject at the end.

    ``add`` takes one batch; ``compute`` returns ``{case: [hd95 per region]}``.
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

    def compute(self, *, volume: bool, scale: float = 1.0) -> dict[str, list[float]]:
        size = int(np.prod(self.shape))
        out: dict[str, list[float]] = {}
        for case, items in self.slices.items():
            items = sorted(items, key=lambda item: item[0])
            pred = np.stack([np.unpackbits(p, count=size) for _, p, _ in items]).reshape(-1, *self.shape)
            truth = np.stack([np.unpackbits(t, count=size) for _, _, t in items]).reshape(-1, *self.shape)
            out[case] = [
                subject_hd95(pred[:, r], truth[:, r], volume=volume, scale=scale)
                for r in range(self.shape[0])
            ]
        return out


def split_by_subject(case: np.ndarray, split: np.ndarray) -> bool:
    """True when no test subject has a slice in the training split (the dataset was split by subject)."""
    return not set(case[split == "test"]) & set(case[split == "train"])


def hd95_per_case(
    accumulator: HD95Accumulator, *, volume: bool, native_size: int
) -> tuple[dict[str, list[float]], str]:
    """HD95 per subject and region from a test epoch's masks; the mode used (``3d`` or ``2d``).

    Args:
        volume: 3-D over a subject's stacked slices (the data were split by subject, :func:`split_by_subject`),
            else the 2-D mean over slices.
        native_size: side of the slices on disk (distances are given in its pixels).
    """
    if not accumulator.slices:
        return {}, "none"
    scale = native_size / accumulator.shape[-1]
    return accumulator.compute(volume=volume, scale=scale), "3d" if volume else "2d"
