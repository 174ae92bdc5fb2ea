"""Z-score statistics of label maps (paper section 3.4): the numbers behind ``synthseg filter``.

See :mod:`synthseg.synth.filter` for the decisions; these functions work on any iterable of ``(H, W)`` arrays, so
the synthesis pipeline can call them on masks in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from synthseg.errors import InputError

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
