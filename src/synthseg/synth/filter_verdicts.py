"""What each of ``synthseg filter``'s methods decides: the Z-score filter (against all reals or the reals of
nearby axial positions) and the PGAN critic. Each returns the verdict per mask, the scores behind it, the reals'
scores that calibrate it, and the fields filter.json records of it; :mod:`synthseg.synth.filter` reads the
folders, combines the verdicts and writes the output.

The masks are read through the callables the command passes in (its own readers, which check every file), so
this module reads no folder layout itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from synthseg.data.manifest import read_manifest
from synthseg.data.masks import MaskItem
from synthseg.errors import InputError
from synthseg.settings import resolve_device
from synthseg.synth.critic import critic_threshold, find_critic, load_critic
from synthseg.synth.zscore import (
    ReferenceStats,
    discarded_fraction,
    reference_statistics,
    scaled_threshold,
    zscore_norms,
)
from synthseg.synth.zscore_position import PositionReference, slice_span, zscore_norms_by_position

# The synthetic masks at the given indices, in that order.
Reader = Callable[[Sequence[int]], Iterator[np.ndarray]]
# Reference masks (brought to the comparison size), with the progress bar's description.
ReferenceReader = Callable[[Sequence[MaskItem], str], Iterator[np.ndarray]]


class FilterOptions(Protocol):
    """The settings the verdicts read (:class:`synthseg.synth.filter.FilterSettings`)."""

    masks: str
    reference: str
    reference_split: str
    reference_by: str
    position_window: float
    include_empty: bool
    threshold: float
    threshold_at: int | None
    threshold_quantile: float | None
    zero_std: str
    critic: str | None
    critic_quantile: float
    device: str
    batch_size: int


def describe(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {
        "min": float(values.min()),
        "median": float(np.median(values)),
        "p99": float(np.quantile(values, 0.99)),
        "max": float(values.max()),
    }


def item_positions(items: Sequence[MaskItem], key: str) -> np.ndarray:
    """(N,) the items' axial positions; one missing is one line naming the folder and the mask."""
    missing = next((item for item in items if item.position is None), None)
    if missing is not None:
        raise InputError(
            f"{key}: mask {missing.id} has no axial position (masks of a slice-conditional PGAN carry one in "
            "the manifest's position column; reals need case and slice): use reference_by=all"
        )
    return np.array([item.position for item in items], dtype=np.float64)


def reference_pass(
    refs: list[MaskItem], read_reference: ReferenceReader, include_empty: bool, batch_size: int
) -> tuple[ReferenceStats, list[MaskItem], int]:
    """Which reference masks take part, and their statistics: ``(stats, used, empty_excluded)``."""
    used: list[MaskItem] = []
    empty_excluded = 0

    def reference_masks() -> Iterator[np.ndarray]:
        nonlocal empty_excluded
        reals = read_reference(refs, "reference statistics")
        for item, mask in zip(refs, reals, strict=True):
            if not include_empty and not mask.any():
                empty_excluded += 1
                continue
            used.append(item)
            yield mask

    stats = reference_statistics(reference_masks(), batch_size=batch_size)
    return stats, used, empty_excluded


def _by_position(
    s: FilterOptions,
    refs: list[MaskItem],
    items: list[MaskItem],
    read_reference: ReferenceReader,
    read: Reader,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """``reference_by=position``: (synthetic norms, real norms, what filter.json records of the windows)."""
    manifest = read_manifest(s.reference)
    real = manifest.source == "real"
    span = slice_span(manifest.case[real], manifest.slice[real])
    half_width = float(s.position_window) / span
    ref_positions = item_positions(refs, f"reference={s.reference}")
    used: list[int] = []

    def pairs() -> Iterator[tuple[np.ndarray, float]]:
        for i, mask in enumerate(read_reference(refs, "reference statistics")):
            if s.include_empty or mask.any():
                used.append(i)
                yield mask, float(ref_positions[i])

    reference = PositionReference(pairs(), half_width)

    def read_used(indices: Sequence[int]) -> Iterator[np.ndarray]:
        return read_reference([refs[used[i]] for i in indices], "real norms")

    options = {"zero_std": s.zero_std, "batch_size": s.batch_size}
    real_norms, _ = zscore_norms_by_position(reference, ref_positions[used], read_used, **options)
    positions = item_positions(items, f"masks={s.masks}")
    norms, windows = zscore_norms_by_position(reference, positions, read, **options)
    in_window = np.array([reference.counts[w.lo : w.hi].sum() for w in windows], dtype=np.float64)
    details = {
        "reference_count": reference.count,
        "reference_empty_excluded": len(refs) - len(used),
        "position_window": float(s.position_window),
        "position_window_normalised": half_width,
        "slice_span": span,
        "reference_positions": len(reference.positions),
        "window_reference_count": describe(in_window),
        "windows_widened": int(sum(w.widened for w in windows)),
    }
    return norms, real_norms, details


def zscore_verdict(
    s: FilterOptions,
    refs: list[MaskItem],
    items: list[MaskItem],
    side: int,
    read_reference: ReferenceReader,
    read: Reader,
) -> dict[str, Any]:
    """The Z-score filter: ``keep``, ``norms``, ``real_norms`` and the summary fields of filter.json."""
    if s.reference_by == "position":
        norms, real_norms, details = _by_position(s, refs, items, read_reference, read)
    else:
        stats, used, empty_excluded = reference_pass(refs, read_reference, s.include_empty, s.batch_size)
        # The real norms, for calibration (the reals are scored against statistics that include them).
        options = {"zero_std": s.zero_std, "batch_size": s.batch_size}
        real_norms = zscore_norms(read_reference(used, "real norms"), stats, **options)
        norms = zscore_norms(read(range(len(items))), stats, **options)
        details = {
            "zero_std_floor": stats.zero_std_floor,
            "zero_std_pixels": int((stats.std == 0).sum()),
            "reference_count": stats.count,
            "reference_empty_excluded": empty_excluded,
        }
    if s.threshold_quantile is not None:
        threshold = float(np.quantile(real_norms, float(s.threshold_quantile)))
    else:
        threshold = scaled_threshold(s.threshold, side, s.threshold_at)
    summary = {
        "reference_split": s.reference_split,
        "reference_by": s.reference_by,
        "include_empty": bool(s.include_empty),
        "threshold": threshold,
        "threshold_setting": {
            "threshold": float(s.threshold),
            "threshold_at": s.threshold_at,
            "threshold_quantile": s.threshold_quantile,
        },
        "zero_std": s.zero_std,
        **details,
        "zscore_discarded_fraction": float(discarded_fraction(norms, threshold)),
        "real_discarded_fraction": float(discarded_fraction(real_norms, threshold)),
        "synthetic_norm": describe(norms),
        "real_norm": describe(real_norms),
        "real_norm_mean_square": float(np.mean(real_norms**2)) if real_norms.size else 0.0,
    }
    return {"keep": norms <= threshold, "norms": norms, "real_norms": real_norms, "summary": summary}


def critic_verdict(
    s: FilterOptions,
    reals: list[MaskItem],
    items: list[MaskItem],
    read_real: Callable[[MaskItem], np.ndarray],
    read: Reader,
) -> dict[str, Any]:
    """The critic filter against the real validation maps ``reals``: ``keep``, ``scores``, ``real_scores``
    and the ``critic`` entry of filter.json."""
    critic = load_critic(s.critic if s.critic else find_critic(s.masks))
    device = resolve_device(s.device)
    critic.network.to(device)
    conditional = critic.network.condition != "none"
    real_positions = item_positions(reals, f"reference={s.reference}") if conditional else None

    def read_reals() -> Iterator[np.ndarray]:
        return (read_real(item) for item in reals)

    try:
        critic.hold_stddev(read_reals(), real_positions, device)
        real_scores = critic.scores(read_reals(), real_positions, device, s.batch_size)
        threshold = critic_threshold(real_scores, float(s.critic_quantile))
        positions = item_positions(items, f"masks={s.masks}") if conditional else None
        scores = critic.scores(read(range(len(items))), positions, device, s.batch_size)
    except ValueError as err:  # a mask size the critic's resolution cannot be reached from
        raise InputError(f"critic {critic.source}: {err}") from None
    keep = scores >= threshold
    summary = {
        **critic.describe(),
        "quantile": float(s.critic_quantile),
        "threshold": threshold,
        "real_count": int(real_scores.size),
        "real_split": "val",
        "synthetic_discarded_fraction": float(np.mean(~keep)) if keep.size else 0.0,
        "real_discarded_fraction": float(np.mean(real_scores < threshold)),
        "synthetic_score": describe(scores),
        "real_score": describe(real_scores),
    }
    return {"keep": keep, "scores": scores, "real_scores": real_scores, "summary": summary}
