"""Label agreement: does a U-Net trained on real data find in a synthetic image the classes its label map says?

SPADE's own evaluation of what its images carry (Park et al. 2019, Sec. 4: a segmentation network trained on
real images segments the synthesized ones, scored against the label maps they were painted from), with the
pipeline's real-data U-Net as the segmenter and Dice per class instead of IoU. The same U-Net on real slices
it never trained on (the real dataset's test split) is the reference: the figure a synthetic set reaches when
its images say what their labels say as clearly as real ones. Pixels are pooled over all slices of a set, per
class; the mean runs over the foreground classes that occur in the set's label maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from synthseg.data.labels import class_names, reduce_labels

EVAL_SLICES = 64  # slices per U-Net call


@torch.inference_mode()
def confusion(
    segmenter: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: int,
    batch_size: int = EVAL_SLICES,
) -> np.ndarray:
    """(N, S, H, W) network inputs and (N, H, W) 7-class label maps -> (classes, classes) pixel counts, rows
    the label maps' classes (reduced to the segmenter's ``classes``), columns the segmenter's argmax."""
    device = next(segmenter.parameters()).device
    counts = np.zeros((classes, classes), np.int64)
    for i in range(0, len(images), batch_size):
        predicted = segmenter(images[i : i + batch_size].to(device)).argmax(1).cpu().numpy()
        truth = np.asarray(reduce_labels(labels[i : i + batch_size].numpy(), classes), np.int64)
        counts += np.bincount((truth * classes + predicted).ravel(), minlength=classes * classes).reshape(
            classes, classes
        )
    return counts


def class_dice(counts: np.ndarray) -> np.ndarray:
    """(C, C) confusion counts -> (C,) Dice per class (NaN for a class neither in the labels nor predicted)."""
    hits = np.diag(counts).astype(np.float64)
    total = counts.sum(0) + counts.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, 2 * hits / total, np.nan)


def summarize(counts: np.ndarray) -> dict[str, Any]:
    """One set's figures: Dice per class by name, their mean over the foreground classes its labels hold, and
    the confusion matrix (rows: label classes, columns: predicted)."""
    names = class_names(counts.shape[0])
    dice = class_dice(counts)
    present = counts.sum(1) > 0
    present[0] = False
    return {
        "dice": {name: (None if np.isnan(d) else float(d)) for name, d in zip(names, dice, strict=True)},
        "mean_dice": float(dice[present].mean()) if present.any() else None,
        "classes_in_labels": [name for name, p in zip(names, present, strict=True) if p],
        "confusion": counts.tolist(),
    }


def label_agreement(
    segmenter: nn.Module,
    classes: int,
    scale: Callable[[torch.Tensor], torch.Tensor],
    synthetic: tuple[torch.Tensor, torch.Tensor],
    real: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, Any]:
    """The figures of ``synthetic`` and of the ``real`` reference, each (labels (N, H, W), images (N, S, H, W)
    in 16-bit units); ``scale`` turns images into the segmenter's input (its training normalisation)."""
    syn = summarize(confusion(segmenter, scale(synthetic[1]), synthetic[0], classes))
    ref = None if real is None else summarize(confusion(segmenter, scale(real[1]), real[0], classes))
    return {
        "classes": classes,
        "mean_dice": syn["mean_dice"],
        "mean_dice_real": None if ref is None else ref["mean_dice"],
        "synthetic": syn,
        "real": ref,
        "synthetic_count": len(synthetic[0]),
        "real_count": 0 if real is None else len(real[0]),
    }
