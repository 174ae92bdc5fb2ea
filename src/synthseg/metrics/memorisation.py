"""Memorisation: the nearest real training slice of every synthetic pair, by label map and by image.

Label-map agreement is the mean Dice over the classes present in either map (background excluded; two maps
with nothing but background agree fully, 1.0). Image agreement is the Pearson correlation of the pixels. The
search is two-pass: every synthetic slice against the whole real training set at a small size
(``search_size``, majority-vote labels and block-mean images) with matrix products, then the best
``candidates`` of each pass re-scored at the common full size. No loop over images in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from synthseg.data.labels import NUM_CLASSES, majority_downsample
from synthseg.utils.visual import grid, label_rgb, to_gray_rgb


def dice_matrix(a: torch.Tensor, b: torch.Tensor, classes: int = NUM_CLASSES) -> torch.Tensor:
    """(Na, P) and (Nb, P) class indices -> (Na, Nb) mean Dice over the foreground classes present in either."""
    total = torch.zeros(len(a), len(b))
    present = torch.zeros(len(a), len(b))
    for c in range(1, classes):
        fa, fb = (a == c).float(), (b == c).float()
        den = fa.sum(1)[:, None] + fb.sum(1)[None, :]
        has = den > 0
        total += torch.where(has, 2 * (fa @ fb.T) / den.clamp_min(1), 0.0)
        present += has
    return torch.where(present > 0, total / present.clamp_min(1), 1.0)


def paired_dice(a: torch.Tensor, b: torch.Tensor, classes: int = NUM_CLASSES) -> torch.Tensor:
    """(..., P) and (..., P) class indices, elementwise pairs -> (...) mean Dice over classes present."""
    shape = torch.broadcast_shapes(a.shape, b.shape)[:-1]
    total = torch.zeros(shape)
    present = torch.zeros(shape)
    for c in range(1, classes):
        fa, fb = a == c, b == c
        den = (fa.sum(-1) + fb.sum(-1)).float()
        has = den > 0
        total += torch.where(has, 2 * (fa & fb).sum(-1).float() / den.clamp_min(1), 0.0)
        present += has
    return torch.where(present > 0, total / present.clamp_min(1), 1.0)


def standardize(images: torch.Tensor) -> torch.Tensor:
    """(N, ...) -> (N, P) zero-mean, unit-norm rows, so a matrix product gives Pearson correlations."""
    flat = images.reshape(len(images), -1).float()
    flat = flat - flat.mean(1, keepdim=True)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _shrink(labels: torch.Tensor, images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    factor = labels.shape[-1] // size
    small_labels = majority_downsample(labels.long(), factor, NUM_CLASSES) if factor > 1 else labels.long()
    small_images = F.avg_pool2d(images.float(), factor) if factor > 1 else images.float()
    return small_labels.reshape(len(labels), -1), standardize(small_images)


def _merge_top(best: tuple[torch.Tensor, torch.Tensor] | None, scores: torch.Tensor, offset: int, k: int):
    index = torch.arange(offset, offset + scores.shape[1]).expand_as(scores)
    if best is not None:
        scores, index = torch.cat([best[0], scores], 1), torch.cat([best[1], index], 1)
    top = scores.topk(min(k, scores.shape[1]), dim=1)
    return top.values, index.gather(1, top.indices)


@dataclass
class Nearest:
    """Nearest real slice of each query: by label Dice and by image correlation (indices into the real set)."""

    dice: np.ndarray
    dice_index: np.ndarray
    corr: np.ndarray
    corr_index: np.ndarray


@torch.inference_mode()
def nearest_real(
    labels: torch.Tensor,
    images: torch.Tensor,
    real_labels: np.ndarray,
    real_images: np.ndarray,
    *,
    exclude: np.ndarray | None = None,
    search_size: int = 32,
    candidates: int = 8,
    chunk: int = 2048,
) -> Nearest:
    """Nearest real slice of every query slice.

    Args:
        labels: (N, S, S) query label maps; images: (N, 1, S, S) query images (any intensity scale).
        real_labels: (M, R, R) real label maps, R a multiple of S (a memory-mapped array is read in chunks).
        real_images: (M, R, R) real images.
        exclude: (N,) real row of each query to skip (the query itself, for the real-to-real baseline).
        search_size: side of the first pass (divides S).
        candidates: real slices per query re-scored at size S.
    """
    size = labels.shape[-1]
    search_size = min(search_size, size)
    factor = real_labels.shape[-1] // size
    query_labels, query_images = _shrink(labels, images, search_size)
    best_dice = best_corr = None
    for start in range(0, len(real_labels), chunk):
        rl = torch.from_numpy(np.asarray(real_labels[start : start + chunk]).astype(np.int64))
        ri = torch.from_numpy(np.asarray(real_images[start : start + chunk], dtype=np.float32))[:, None]
        small_labels, small_images = _shrink(rl, ri, search_size)
        dice = dice_matrix(query_labels, small_labels)
        corr = query_images @ small_images.T
        if exclude is not None:
            own = torch.from_numpy(np.asarray(exclude))[:, None] == torch.arange(start, start + len(rl))[None]
            dice[own], corr[own] = -1.0, -2.0
        best_dice = _merge_top(best_dice, dice, start, candidates)
        best_corr = _merge_top(best_corr, corr, start, candidates)
    assert best_dice is not None and best_corr is not None
    # Re-score the candidates at the common size S.
    rows = torch.unique(torch.cat([best_dice[1].reshape(-1), best_corr[1].reshape(-1)]))
    lookup = torch.full((len(real_labels),), -1, dtype=torch.long)
    lookup[rows] = torch.arange(len(rows))
    order = rows.numpy()
    cand_labels = torch.from_numpy(np.asarray(real_labels[order]).astype(np.int64))
    cand_images = torch.from_numpy(np.asarray(real_images[order], dtype=np.float32))[:, None]
    if factor > 1:
        cand_labels = majority_downsample(cand_labels, factor, NUM_CLASSES)
        cand_images = F.avg_pool2d(cand_images, factor)
    cand_labels = cand_labels.reshape(len(rows), -1)
    cand_images = standardize(cand_images)
    flat_labels = labels.long().reshape(len(labels), -1)
    flat_images = standardize(images)
    dice = torch.empty_like(best_dice[0])
    corr = torch.empty_like(best_corr[0])
    step = max(1, 2**22 // max(flat_labels.shape[1] * candidates, 1))  # bounds the (step, k, P) temporaries
    for s in range(0, len(labels), step):
        part = slice(s, s + step)
        dice[part] = paired_dice(flat_labels[part, None], cand_labels[lookup[best_dice[1][part]]])
        corr[part] = (flat_images[part, None] * cand_images[lookup[best_corr[1][part]]]).sum(-1)
    dice = torch.where(best_dice[0] < -0.5, -1.0, dice)  # keep excluded entries out
    corr = torch.where(best_corr[0] < -1.5, -2.0, corr)
    d_best, c_best = dice.max(1), corr.max(1)
    return Nearest(
        dice=d_best.values.numpy(),
        dice_index=best_dice[1].gather(1, d_best.indices[:, None])[:, 0].numpy(),
        corr=c_best.values.numpy(),
        corr_index=best_corr[1].gather(1, c_best.indices[:, None])[:, 0].numpy(),
    )


def _describe(values: np.ndarray) -> dict[str, float]:
    return {
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
    }


def summarize(
    synthetic: Nearest, real: Nearest, dice_threshold: float, corr_threshold: float
) -> dict[str, Any]:
    """Distributions of nearest-real agreement, synthetic vs the real-to-real baseline, and counts above thresholds."""
    return {
        "dice": {"synthetic": _describe(synthetic.dice), "real_to_real": _describe(real.dice)},
        "correlation": {"synthetic": _describe(synthetic.corr), "real_to_real": _describe(real.corr)},
        "dice_threshold": dice_threshold,
        "correlation_threshold": corr_threshold,
        "synthetic_above_dice": int((synthetic.dice >= dice_threshold).sum()),
        "synthetic_above_correlation": int((synthetic.corr >= corr_threshold).sum()),
        "synthetic_above_both": int(
            ((synthetic.dice >= dice_threshold) & (synthetic.corr >= corr_threshold)).sum()
        ),
        "real_fraction_above_dice": float((real.dice >= dice_threshold).mean()),
        "real_fraction_above_correlation": float((real.corr >= corr_threshold).mean()),
        "synthetic_count": len(synthetic.dice),
        "real_count": len(real.dice),
    }


def closest_pairs_figure(
    path: Path,
    labels: np.ndarray,
    images: np.ndarray,
    real_labels: np.ndarray,
    real_images: np.ndarray,
    nearest: Nearest,
    count: int = 8,
) -> list[int]:
    """PNG: the ``count`` synthetic pairs closest to a real slice (by label Dice), one row each:
    synthetic image | synthetic labels | nearest real image | real labels. Returns the rows shown.

    ``real_labels`` / ``real_images`` are already at the synthetic size, indexed like ``nearest.dice_index``.
    """
    from matplotlib.image import imsave

    shown = np.argsort(-nearest.dice, kind="stable")[:count]
    rows = [
        [to_gray_rgb(images[i]), label_rgb(labels[i]), to_gray_rgb(real_images[j]), label_rgb(real_labels[j])]
        for i, j in zip(shown, nearest.dice_index[shown], strict=True)
    ]
    imsave(path, grid(rows))
    return [int(i) for i in shown]
