"""Ratio-of-sums metrics over test subjects and their (paired) bootstrap intervals.

Every metric of the report is ``offset + scale * sum(numerator) / sum(denominator)`` over test subjects:
Dice of a class or region is ``2 * sum(I) / sum(T)`` with I the intersection and T the sum of the predicted
and true volumes, and the weighted Dice error is ``1 - 2 * sum_c w_c I_c / sum_c w_c T_c``. Subjects are the
resampling unit (slices of one subject are not independent), so the bootstrap draws subjects with
replacement and recomputes the sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RatioMetrics:
    """Per-subject sufficient statistics of M metrics.

    Attributes:
        names: (M,) metric names.
        numerator: (S, M) per-subject numerators.
        denominator: (S, M) per-subject denominators.
        offset: (M,) value added to the scaled ratio.
        scale: (M,) factor of the ratio.
    """

    names: tuple[str, ...]
    numerator: np.ndarray
    denominator: np.ndarray
    offset: np.ndarray
    scale: np.ndarray

    def values(self, weights: np.ndarray | None = None) -> np.ndarray:
        """Metric values from subject sums.

        Args:
            weights: (B, S) how often each subject is drawn in each of B resamples; None: every subject
                once (the point estimate).

        Returns:
            (M,) for ``weights=None``, else (B, M); NaN where a denominator sums to 0.
        """
        if weights is None:
            num, den = self.numerator.sum(axis=0), self.denominator.sum(axis=0)
        else:
            num, den = weights @ self.numerator, weights @ self.denominator
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
        return self.offset + self.scale * ratio


def resample_weights(num_subjects: int, samples: int, seed: int) -> np.ndarray:
    """(samples, num_subjects) draw counts: each row resamples the subjects with replacement."""
    if num_subjects < 1 or samples < 1:
        raise ValueError(f"need at least one subject and one sample, got {num_subjects}, {samples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_subjects, size=(samples, num_subjects))
    weights = np.zeros((samples, num_subjects))
    np.add.at(weights, (np.arange(samples)[:, None], draws), 1.0)
    return weights


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of (B, M) resampled values -> (low (M,), high (M,)); NaN-aware."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    tail = (1 - level) / 2 * 100
    with np.errstate(invalid="ignore"):
        low = np.nanpercentile(values, tail, axis=0) if np.isfinite(values).any() else np.nan
        high = np.nanpercentile(values, 100 - tail, axis=0) if np.isfinite(values).any() else np.nan
    return np.broadcast_to(low, values.shape[1:]).copy(), np.broadcast_to(high, values.shape[1:]).copy()


def bootstrap(
    metrics: RatioMetrics, weights: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile interval: (estimate (M,), low (M,), high (M,))."""
    low, high = percentile_interval(metrics.values(weights), level)
    return metrics.values(), low, high


def paired_bootstrap(
    metrics: RatioMetrics, reference: RatioMetrics, weights: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Difference ``metrics - reference`` with an interval from the same resampled subjects for both.

    The two must list the same subjects in the same order (rows of numerator/denominator).
    """
    if metrics.numerator.shape != reference.numerator.shape:
        raise ValueError(
            f"paired bootstrap needs the same subjects and metrics, got {metrics.numerator.shape} and "
            f"{reference.numerator.shape}"
        )
    diff = metrics.values(weights) - reference.values(weights)
    low, high = percentile_interval(diff, level)
    return metrics.values() - reference.values(), low, high
