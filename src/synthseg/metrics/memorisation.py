"""Memorisation: the nearest real training slice of every synthetic pair, by label map and by image.

Label-map agreement is the mean Dice over the classes present in either map (background excluded; two maps
with nothing but background agree fully, 1.0). Image agreement is the Pearson correlation of the pixels; with
several sequences, the mean over sequences of each sequence's correlation (one matrix product: each sequence
standardised on its own, the rows concatenated and scaled by 1/sqrt(S)). The
search is two-pass: every synthetic slice against the whole real training set at a small size
(``search_size``, majority-vote labels and block-mean images) with matrix products, then the best
``candidates`` of each pass re-scored at the common full size. No loop over images in Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from synthseg.data.labels import NUM_CLASSES, colorize, resize_labels
from synthseg.utils.visual import grid, to_gray_rgb


class Rows(Protocol):
    """What the search reads the real slices from: an array (memory-mapped allowed) or a lazy view of one."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> Any: ...


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
    """(N, S, H, W) -> (N, S H W) rows whose products are the mean over sequences of the Pearson correlations.

    Each sequence is made zero-mean and unit-norm on its own, then the S parts are concatenated and scaled by
    1/sqrt(S): a row times another is the mean of the S per-sequence correlations (one sequence: the plain
    Pearson correlation). A constant sequence contributes 0.
    """
    flat = images.reshape(len(images), images.shape[1], -1).float()
    flat = flat - flat.mean(2, keepdim=True)
    flat = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)
    if flat.shape[1] > 1:
        flat = flat / flat.shape[1] ** 0.5
    return flat.reshape(len(images), -1)


# Rows per step when label maps are expanded one-hot for majority-vote downsampling (about 2**23 pixels:
# ~235 MB of float one-hot at 7 classes), so memory does not grow with the set.
PIXELS_PER_STEP = 2**23


def read_rows(
    labels: Rows, images: Rows, rows: np.ndarray | slice, size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of (M, R, R) label and (M, R, R) or (M, S, R, R) image arrays (memory-mapped allowed) at side
    ``size`` (divides R).

    Returns:
        (labels (n, size, size) int64 by majority vote, images (n, S, size, size) float32 block means; S = 1
        for (M, R, R) images), downsampled in steps of bounded memory.
    """
    picked_labels = np.asarray(labels[rows])
    picked_images = np.asarray(images[rows], dtype=np.float32)
    if picked_images.ndim == 3:
        picked_images = picked_images[:, None]
    channels = picked_images.shape[1]
    factor = picked_labels.shape[-1] // size
    step = max(1, PIXELS_PER_STEP // max(picked_labels[0].size, 1)) if len(picked_labels) else 1
    out_labels, out_images = [], []
    for i in range(0, len(picked_labels), step):
        lab = torch.from_numpy(picked_labels[i : i + step].astype(np.int64))
        img = torch.from_numpy(picked_images[i : i + step])
        if factor > 1:
            lab, img = resize_labels(lab, lab.shape[-1] // factor, NUM_CLASSES), F.avg_pool2d(img, factor)
        out_labels.append(lab)
        out_images.append(img)
    if not out_labels:
        return torch.zeros(0, size, size, dtype=torch.long), torch.zeros(0, channels, size, size)
    return torch.cat(out_labels), torch.cat(out_images)


def _shrink(labels: torch.Tensor, images: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    small_labels, small_images = read_rows(labels.numpy(), images.numpy(), slice(None), size)
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

    def split(self, n: int) -> tuple[Nearest, Nearest]:
        """The first ``n`` queries and the rest."""
        return (
            Nearest(self.dice[:n], self.dice_index[:n], self.corr[:n], self.corr_index[:n]),
            Nearest(self.dice[n:], self.dice_index[n:], self.corr[n:], self.corr_index[n:]),
        )


@torch.inference_mode()
def nearest_real(
    labels: torch.Tensor,
    images: torch.Tensor,
    real_labels: Rows,
    real_images: Rows,
    *,
    exclude: np.ndarray | None = None,
    search_size: int = 32,
    candidates: int = 8,
    chunk: int = 2048,
) -> Nearest:
    """Nearest real slice of every query slice.

    Args:
        labels: (N, S, S) query label maps; images: (N, C, S, S) query images of C sequences (any
            intensity scale).
        real_labels: (M, R, R) real label maps, R a multiple of S (a memory-mapped array is read in chunks).
        real_images: (M, C, R, R) real images of the same sequences ((M, R, R): one).
        exclude: (N,) real row of each query to skip (the query itself, for the real-to-real baseline).
        search_size: side of the first pass (divides S).
        candidates: real slices per query re-scored at size S.
    """
    size = labels.shape[-1]
    search_size = min(search_size, size)
    query_labels, query_images = _shrink(labels, images, search_size)
    best_dice = best_corr = None
    chunk = max(1, min(chunk, PIXELS_PER_STEP // max(real_labels.shape[-1] ** 2, 1)))
    for start in range(0, len(real_labels), chunk):
        small_labels, small_images = read_rows(
            real_labels, real_images, slice(start, start + chunk), search_size
        )
        small_labels, small_images = small_labels.reshape(len(small_labels), -1), standardize(small_images)
        dice = dice_matrix(query_labels, small_labels)
        corr = query_images @ small_images.T
        if exclude is not None:
            cols = torch.arange(start, start + len(small_labels))[None]
            own = torch.from_numpy(np.asarray(exclude))[:, None] == cols
            dice[own], corr[own] = -1.0, -2.0
        best_dice = _merge_top(best_dice, dice, start, candidates)
        best_corr = _merge_top(best_corr, corr, start, candidates)
    assert best_dice is not None and best_corr is not None
    # Re-score the candidates at the common size S, a few queries at a time (their candidates read then).
    flat_labels = labels.long().reshape(len(labels), -1)
    flat_images = standardize(images)
    dice = torch.empty_like(best_dice[0])
    corr = torch.empty_like(best_corr[0])
    step = max(1, 2**22 // max(flat_labels.shape[1] * candidates, 1))  # bounds the (step, k, P) temporaries
    for s in range(0, len(labels), step):
        part = slice(s, s + step)
        rows = torch.unique(torch.cat([best_dice[1][part].reshape(-1), best_corr[1][part].reshape(-1)]))
        lookup = torch.full((len(real_labels),), -1, dtype=torch.long)
        lookup[rows] = torch.arange(len(rows))
        cand_labels, cand_images = read_rows(real_labels, real_images, rows.numpy(), size)
        cand_labels, cand_images = cand_labels.reshape(len(rows), -1), standardize(cand_images)
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
        [to_gray_rgb(images[i]), colorize(labels[i]), to_gray_rgb(real_images[j]), colorize(real_labels[j])]
        for i, j in zip(shown, nearest.dice_index[shown], strict=True)
    ]
    picture = grid(rows)
    zoom = max(1, 128 // max(labels.shape[-1], 1))  # small demo slices: enlarge (nearest) so they can be read
    imsave(path, picture.repeat(zoom, axis=0).repeat(zoom, axis=1))
    return [int(i) for i in shown]
