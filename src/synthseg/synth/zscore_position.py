"""Z-score statistics by axial position (``synthseg filter reference_by=position``).

The paper compares every synthetic mask with the entire real set (:mod:`synthseg.synth.zscore`); its discussion
proposes one GAN per range of 5 axial slices, because a mask near the top of the head and one through the
ventricles have little in common. A slice-conditional PGAN makes each mask at a known position, so each can be
compared with the reals of nearby positions instead: the **window** of a mask at normalised position ``p`` holds
the real masks whose normalised position lies within ``p ± w``, where ``w = position_window / span``, ``span``
being the median number of slice steps from a reference case's first slice to its last (154 for BraTS'
155-slice volumes: ``position_window=2`` is ±2 slices, the paper's 5-slice ranges centred on each mask). A
window holding fewer than 2 real masks grows to the next real position on whichever side is nearer until it
holds 2 (the count is reported).

The reals are grouped by their exact position (every case of one slice count puts its k-th slice at the same
``k / span``): per group the count, the per-pixel sum and sum of squares of the class indices, as integers.
A window's mean and population standard deviation then follow exactly from integer sums:
``mean = S1 / n``, ``std = sqrt(n S2 - S1^2) / n``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from synthseg.errors import InputError
from synthseg.synth.zscore import ReferenceStats, zscore_norms

REFERENCE_BY = ("all", "position")
MIN_WINDOW_COUNT = 2  # a standard deviation needs two masks
_TOLERANCE = 1e-6  # positions read back from a manifest's 8 decimals


def slice_span(case: np.ndarray, slice_index: np.ndarray) -> float:
    """The median over cases of ``last - first`` slice index (the slice steps that normalised positions span)."""
    known = slice_index >= 0
    if not known.any():
        raise InputError("the reference lists no slice indices: its positions are unknown")
    cases, inverse = np.unique(case[known], return_inverse=True)
    first = np.full(len(cases), np.iinfo(np.int64).max)
    last = np.full(len(cases), -1)
    np.minimum.at(first, inverse, slice_index[known])
    np.maximum.at(last, inverse, slice_index[known])
    return float(max(np.median(last - first), 1.0))


@dataclass(frozen=True)
class Window:
    """The reals of one window: the groups ``lo:hi`` of :class:`PositionReference` and whether it was widened."""

    lo: int
    hi: int
    widened: bool


class PositionReference:
    """Per-position integer moments of the real masks, and the windows of :func:`window`.

    Args:
        masks_and_positions: ``(mask (H, W) class indices, normalised position)`` pairs, streamed.
        half_width: ``w``, the window's half-width in normalised position.
    """

    def __init__(self, masks_and_positions: Iterable[tuple[np.ndarray, float]], half_width: float) -> None:
        if half_width < 0:
            raise InputError(f"position_window must be non-negative, got {half_width}")
        self.half_width = float(half_width)
        groups: dict[float, list[np.ndarray]] = {}
        counts: dict[float, int] = {}
        for mask, position in masks_and_positions:
            if not np.isfinite(position):
                raise InputError("a reference mask has no axial position")
            key = float(np.float32(position))
            mask64 = np.asarray(mask, dtype=np.int64)
            if key not in groups:
                groups[key] = [np.zeros_like(mask64), np.zeros_like(mask64)]
                counts[key] = 0
            groups[key][0] += mask64
            groups[key][1] += mask64 * mask64
            counts[key] += 1
        if not groups:
            raise InputError("the reference set holds no masks")
        self.positions = np.array(sorted(groups), dtype=np.float64)  # (U,) distinct real positions
        self.counts = np.array([counts[p] for p in self.positions], dtype=np.int64)
        self.sums = np.stack([groups[p][0] for p in self.positions])  # (U, H, W) int64
        self.squares = np.stack([groups[p][1] for p in self.positions])
        if self.counts.sum() < MIN_WINDOW_COUNT:
            raise InputError(f"the reference set needs at least {MIN_WINDOW_COUNT} masks")

    @property
    def count(self) -> int:
        return int(self.counts.sum())

    def window(self, position: float) -> Window:
        """The groups within ``position ± half_width``, grown to the nearer next position until they hold 2."""
        p = float(position)
        lo = int(np.searchsorted(self.positions, p - self.half_width - _TOLERANCE, side="left"))
        hi = int(np.searchsorted(self.positions, p + self.half_width + _TOLERANCE, side="right"))
        widened = False
        while self.counts[lo:hi].sum() < MIN_WINDOW_COUNT:
            widened = True
            left = p - self.positions[lo - 1] if lo > 0 else np.inf
            right = self.positions[hi] - p if hi < len(self.positions) else np.inf
            if left <= right:
                lo -= 1
            else:
                hi += 1
        return Window(lo, hi, widened)

    def statistics(self, window: Window) -> ReferenceStats:
        """Mean and population std of the window's masks, exact from the integer sums."""
        n = int(self.counts[window.lo : window.hi].sum())
        s1 = self.sums[window.lo : window.hi].sum(axis=0)
        s2 = self.squares[window.lo : window.hi].sum(axis=0)
        variance_n2 = n * s2 - s1 * s1  # n^2 var, an exact integer >= 0
        return ReferenceStats(mean=s1 / n, std=np.sqrt(variance_n2.astype(np.float64)) / n, count=n)


def zscore_norms_by_position(
    reference: PositionReference,
    positions: np.ndarray,
    read: Callable[[list[int]], Iterable[np.ndarray]],
    *,
    zero_std: str = "floor",
    batch_size: int = 64,
) -> tuple[np.ndarray, list[Window]]:
    """The z-score norm of every mask against the reals of its window.

    Args:
        reference: the real masks' per-position moments.
        positions: (N,) normalised positions of the masks.
        read: given indices into the masks, yields those masks (H, W) in that order; called once per window,
            so each window's statistics are computed once and the masks are read once.
        zero_std, batch_size: as :func:`synthseg.synth.zscore.zscore_norms`.

    Returns:
        (N,) float64 norms in input order, and each mask's window.
    """
    windows = [reference.window(p) for p in np.asarray(positions, dtype=np.float64)]
    by_window: dict[tuple[int, int], list[int]] = {}
    for i, w in enumerate(windows):
        by_window.setdefault((w.lo, w.hi), []).append(i)
    norms = np.zeros(len(windows), dtype=np.float64)
    for indices in by_window.values():
        stats = reference.statistics(windows[indices[0]])
        norms[indices] = zscore_norms(read(indices), stats, zero_std=zero_std, batch_size=batch_size)
    return norms, windows
