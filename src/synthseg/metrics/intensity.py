"""Label-conditional intensity: does a synthetic image paint what its label map says?

For each class, the median over slices of the mean image value inside that class (slices without the class
left out), per sequence, in the prepared dataset's 16-bit units; synthetic against real. On T1c the real order
is enhancing rim > WM > GM > CSF; a SPADE that paints blobs gets the levels and the order wrong. Distances are
read in units of the real white-matter level (issue 26's target: within 0.15 x the real WM level, in the real
order, for WM, GM, CSF and enhancing tumor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from synthseg.data.labels import NUM_CLASSES, class_names

# The classes whose levels and order the check reads (enhancing tumor, WM, GM, CSF), and the class whose real
# level is the unit of the distances (WM).
CHECKED = (3, 4, 5, 6)
UNIT_CLASS = 4
TOLERANCE = 0.15  # issue 26: within 0.15 x the real WM level


def slice_class_means(labels: torch.Tensor, images: torch.Tensor, classes: int = NUM_CLASSES) -> np.ndarray:
    """(N, H, W) class indices and (N, S, H, W) images -> (N, S, classes) mean image value inside each class
    per slice and sequence (NaN where the slice holds no pixel of the class). One bincount per sequence."""
    n, channels = len(labels), images.shape[1]
    flat = labels.reshape(n, -1).long() + classes * torch.arange(n)[:, None]
    counts = torch.bincount(flat.reshape(-1), minlength=n * classes).reshape(n, classes).double()
    out = np.full((n, channels, classes), np.nan)
    for s in range(channels):
        sums = torch.bincount(
            flat.reshape(-1), weights=images[:, s].reshape(-1).double(), minlength=n * classes
        ).reshape(n, classes)
        means = torch.where(counts > 0, sums / counts.clamp_min(1), torch.nan)
        out[:, s] = means.numpy()
    return out


def class_levels(means: np.ndarray) -> np.ndarray:
    """(N, S, C) per-slice class means -> (S, C) median over the slices holding the class (NaN: none does)."""
    out = np.full(means.shape[1:], np.nan)
    for s in range(means.shape[1]):
        for c in range(means.shape[2]):
            values = means[:, s, c]
            values = values[np.isfinite(values)]
            if len(values):
                out[s, c] = float(np.median(values))
    return out


def wm_ratios(means: np.ndarray) -> np.ndarray:
    """(N, S, C) per-slice class means -> (S, C) median over the slices holding the class and WM of the class
    mean over the same slice's WM mean: a contrast that a scanner's gain does not move."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = means / means[:, :, UNIT_CLASS : UNIT_CLASS + 1]
    ratios[~np.isfinite(ratios)] = np.nan
    return class_levels(ratios)


def _order(levels: np.ndarray, names: list[str]) -> list[str]:
    """The checked classes from the brightest to the darkest (classes absent from the set left out)."""
    present = [c for c in CHECKED if np.isfinite(levels[c])]
    return [names[c] for c in sorted(present, key=lambda c: -levels[c])]


def _num(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def compare(
    synthetic: np.ndarray,
    real: np.ndarray,
    sequences: tuple[str, ...],
    baseline: tuple[np.ndarray, np.ndarray] | None = None,
    ratios: tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None] | None = None,
) -> dict[str, Any]:
    """Synthetic against real class levels, per sequence.

    Args:
        synthetic, real: (S, C) class levels (:func:`class_levels`).
        baseline: (S, C) levels of two disjoint real samples (halves split by case): the distance two real
            samples already have, in the same unit.
        ratios: (S, C) :func:`wm_ratios` of the synthetic and the real sample, and of the two real halves
            (or None): the same comparison free of each scan's grey-level gain.

    Returns:
        Per sequence: ``classes`` (per class name: ``synthetic``, ``real``, ``distance_over_real_wm``
        = |synthetic - real| / real WM level, ``within_tolerance``, and with a baseline
        ``real_baseline_distance_over_real_wm``), ``order_real`` / ``order_synthetic`` (the checked classes,
        brightest first), ``same_order``, ``within_tolerance`` (every checked class within 0.15 x the real WM
        level) and ``target_met`` (both).
    """
    names = class_names(NUM_CLASSES)
    result: dict[str, Any] = {}
    for s, seq in enumerate(sequences):
        unit = real[s, UNIT_CLASS]
        unit = unit if np.isfinite(unit) and unit > 0 else np.nan
        per_class: dict[str, Any] = {}
        for c in range(NUM_CLASSES):
            distance = abs(synthetic[s, c] - real[s, c]) / unit
            entry: dict[str, Any] = {
                "synthetic": _num(synthetic[s, c]),
                "real": _num(real[s, c]),
                "distance_over_real_wm": _num(distance),
                "within_tolerance": bool(distance <= TOLERANCE) if np.isfinite(distance) else None,
            }
            if baseline is not None:
                gap = abs(baseline[0][s, c] - baseline[1][s, c]) / unit
                entry["real_baseline_distance_over_real_wm"] = _num(gap)
            if ratios is not None:
                entry["over_wm_synthetic"] = _num(ratios[0][s, c])
                entry["over_wm_real"] = _num(ratios[1][s, c])
                if ratios[2] is not None:
                    entry["over_wm_real_baseline_distance"] = _num(
                        abs(ratios[2][0][s, c] - ratios[2][1][s, c])
                    )
            per_class[names[c]] = entry
        order_real, order_syn = _order(real[s], names), _order(synthetic[s], names)
        checked = [per_class[names[c]]["within_tolerance"] for c in CHECKED]
        within = all(v is True for v in checked)
        result[seq] = {
            "classes": per_class,
            "order_real": order_real,
            "order_synthetic": order_syn,
            "same_order": order_real == order_syn,
            "within_tolerance": within,
            "target_met": within and order_real == order_syn,
        }
    return {
        "by_sequence": result,
        "unit": "prepared 16-bit image values; distances in units of the real WM level",
        "tolerance": TOLERANCE,
        "checked_classes": [names[c] for c in CHECKED],
        "note": "per class, the median over slices of the mean image value inside the class; over_wm_*: the "
        "median over slices of the class mean over the same slice's WM mean (free of each scan's gain)",
    }
