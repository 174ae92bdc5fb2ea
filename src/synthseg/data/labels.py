"""The 7-class label convention, its reductions to 4 and 2 classes, resizing and the GAN value coding.

Classes (7): 0 background, 1 NCR/NET, 2 edema, 3 enhancing tumor, 4 WM, 5 GM, 6 CSF.
4 classes: tissue (4, 5, 6) set to 0. 2 classes: any tumor (1, 2, 3) -> 1, the rest 0.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

NUM_CLASSES = 7
LabelArray = TypeVar("LabelArray", np.ndarray, torch.Tensor)
CLASS_NAMES: tuple[str, ...] = ("background", "NCR/NET", "edema", "enhancing", "WM", "GM", "CSF")
TUMOR_CLASSES = (1, 2, 3)
TISSUE_CLASSES = {"WM": 4, "GM": 5, "CSF": 6}
VALID_CLASS_COUNTS = (2, 4, 7)

# The paper's Fig. 1 colours: black BG, red NCR/NET, yellow ED, orange ET, white WM, grey GM, blue CSF.
PALETTE = np.array(
    [
        [0, 0, 0],
        [220, 30, 30],
        [250, 220, 40],
        [250, 140, 20],
        [255, 255, 255],
        [140, 140, 140],
        [40, 90, 230],
    ],
    dtype=np.uint8,
)

# Lookup tables from the 7-class index to the reduced index.
_REDUCE = {
    7: np.arange(7, dtype=np.uint8),
    4: np.array([0, 1, 2, 3, 0, 0, 0], dtype=np.uint8),
    2: np.array([0, 1, 1, 1, 0, 0, 0], dtype=np.uint8),
}


def check_num_classes(classes: int) -> int:
    """Return ``classes`` if it is one of 7, 4, 2; else raise a ValueError naming the value."""
    if int(classes) not in VALID_CLASS_COUNTS:
        raise ValueError(f"classes must be one of {VALID_CLASS_COUNTS}, got {classes}")
    return int(classes)


def reduce_labels(labels: np.ndarray | torch.Tensor, classes: int) -> np.ndarray | torch.Tensor:
    """Map 7-class indices to ``classes`` (7, 4 or 2) classes; works on numpy arrays and torch tensors."""
    table = _REDUCE[check_num_classes(classes)]
    if isinstance(labels, torch.Tensor):
        return torch.as_tensor(table, device=labels.device)[labels.long()].to(labels.dtype)
    return table[labels]


def class_names(classes: int) -> tuple[str, ...]:
    """Names of the classes of the 7-, 4- or 2-class problem."""
    classes = check_num_classes(classes)
    if classes == 7:
        return CLASS_NAMES
    if classes == 4:
        return CLASS_NAMES[:4]
    return ("background", "tumor")


def palette(classes: int) -> np.ndarray:
    """RGB colours (classes x 3, uint8) for the 7-, 4- or 2-class problem; 2-class tumor is red."""
    classes = check_num_classes(classes)
    if classes == 2:
        return PALETTE[[0, 1]]
    return PALETTE[:classes]


def colorize(labels: np.ndarray, classes: int = 7) -> np.ndarray:
    """Label map (H, W) of indices (any integer dtype) -> RGB image (H, W, 3) uint8 in the paper's colours."""
    return palette(classes)[np.clip(np.asarray(labels, dtype=np.int64), 0, classes - 1)]


_VOTE_PIXELS = 1 << 24  # label pixels per chunk of the vote: its int64 copy stays at 128 MiB, whatever N


def _majority_vote(labels: torch.Tensor, factor: int, classes: int) -> torch.Tensor:
    """Majority class per ``factor`` x ``factor`` block of (N, H, W) indices; ties go to the higher class."""
    n, h, w = labels.shape
    if n and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(
            f"label values must lie in 0..{classes - 1}, found {int(labels.min())}..{int(labels.max())}"
        )
    out = torch.empty((n, h // factor, w // factor), dtype=labels.dtype)
    step = max(1, _VOTE_PIXELS // max(h * w, 1))
    for start in range(0, n, step):
        part = labels[start : start + step].long()
        # (blocks, factor^2) class indices, counted per block by one scatter: no (N, classes, H, W) one-hot
        blocks = part.reshape(len(part), h // factor, factor, w // factor, factor).permute(0, 1, 3, 2, 4)
        blocks = blocks.reshape(-1, factor * factor)
        ones = torch.ones(1, dtype=torch.int32).expand_as(blocks)
        counts = torch.zeros(len(blocks), classes, dtype=torch.int32).scatter_add_(1, blocks, ones)
        # argmax takes the first maximum: over the flipped classes, the highest class among the tied
        votes = classes - 1 - counts.flip(1).argmax(dim=1)
        out[start : start + step] = votes.reshape(len(part), h // factor, w // factor).to(labels.dtype)
    return out


def resize_labels(labels: LabelArray, size: int, classes: int = NUM_CLASSES) -> LabelArray:
    """Class indices (H, W) or (N, H, W), numpy or torch -> side ``size``: majority vote down, nearest up.

    Averaging class indices (what image pyramids do) would invent classes that are not there; the majority
    class keeps labels valid, and the tie rule (ties go to the higher class) keeps thin tumor and CSF
    structures at low resolutions. The one rule for the DataModule's low-resolution labels, PGAN's faded
    reals, generated masks and the filter's reduced reference.
    """
    current = int(labels.shape[-1])
    if current == size:
        return labels
    if isinstance(labels, np.ndarray):
        out = resize_labels(torch.from_numpy(labels.astype(np.int64)), size, classes)
        return out.numpy().astype(labels.dtype)
    batch = labels if labels.dim() == 3 else labels[None]
    if current > size:
        if current % size:
            raise ValueError(f"label size {current} is not a multiple of {size}")
        batch = _majority_vote(batch, current // size, classes)
    else:
        if size % current:
            raise ValueError(f"size {size} is not a multiple of the label size {current}")
        factor = size // current
        batch = batch.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)
    return batch if labels.dim() == 3 else batch[0]


LOWRES_LABELS = ("average", "majority")


def block_mean_labels(labels: torch.Tensor, size: int) -> torch.Tensor:
    """Class indices or values (N, H, W) -> float means of their blocks (N, ``size``, ``size``), unrounded.

    The official progressive GAN's lower levels of detail (tkarras ``dataset_tool.py``) are block means of the
    full-resolution image: repeated 2x2 means, which equal one mean over each block. For label maps such a
    mean is not a class (0 and 6 average to 3); :func:`resize_labels` (majority vote) keeps labels valid.
    """
    current = int(labels.shape[-1])
    if current < size or current % size:
        raise ValueError(f"label size {current} cannot be block-averaged to {size}")
    factor = current // size
    values = labels.float()
    if factor == 1:
        return values
    return torch.nn.functional.avg_pool2d(values.unsqueeze(1), factor).squeeze(1)


# The index coding's value order: the class at each of the values -1 ... 1, in turn. ``paper``: the class
# indices themselves (the paper and the official code). ``anatomical`` (beyond the paper): background, CSF,
# GM, WM, edema, enhancing, NCR/NET, so that a smooth transition between two classes that touch in real maps
# passes through classes that also lie between them (background -> brain through CSF and GM, never through
# tumor; WM -> tumor core through edema and the enhancing rim). Of the 720 orders that start with background
# it passes the fewest tumor pixels (tied) and the fewest of any class on the demo cohort's 4-adjacent pairs
# (benchmarks/bench_label_order.py, docs/masks.md).
INDEX_ORDERS: dict[str, tuple[int, ...]] = {
    "paper": tuple(range(NUM_CLASSES)),
    "anatomical": (0, 6, 5, 4, 2, 3, 1),
}


def classes_in_order(order: str, classes: int) -> tuple[int, ...]:
    """The classes in value order for ``order``; a ValueError for an unknown name or class count."""
    if order not in INDEX_ORDERS:
        raise ValueError(f"index_order must be one of {tuple(INDEX_ORDERS)}, got {order!r}")
    if order == "paper":
        return tuple(range(classes))
    if classes != NUM_CLASSES:
        raise ValueError(f"index_order={order} is defined for {NUM_CLASSES} classes, got {classes}")
    return INDEX_ORDERS[order]


def index_values(labels: torch.Tensor, classes: int, order: str = "paper") -> torch.Tensor:
    """Class indices (N, H, W) -> each class's place on the index coding's line (same shape, int64)."""
    in_order = classes_in_order(order, classes)
    if order == "paper":  # the identity: no lookup on the faithful path
        return labels.long()
    ranks = torch.argsort(torch.tensor(in_order))  # class -> its place
    return ranks.to(labels.device)[labels.long()]


def values_to_net(values: torch.Tensor, classes: int) -> torch.Tensor:
    """Places on the line (N, H, W), any real values in [0, classes-1] -> network values (N, 1, H, W)."""
    return (values.float() * (2.0 / (classes - 1)) - 1.0).unsqueeze(1)


def labels_to_net(labels: torch.Tensor, classes: int, order: str = "paper") -> torch.Tensor:
    """Class indices (N, H, W) -> network values (N, 1, H, W) in [-1, 1]: the first class of ``order``
    (``INDEX_ORDERS``; ``paper``: class 0) -> -1, the last -> 1."""
    return values_to_net(index_values(labels, classes, order), classes)


def net_to_labels(x: torch.Tensor, classes: int, order: str = "paper") -> torch.Tensor:
    """Network values -> class indices (N, H, W) uint8, for either label encoding (told apart by the channels).

    ``index`` (N, 1, H, W): the linear map back, rounded and clipped, then the class at that place of
    ``order``. ``onehot`` (N, ``classes``, H, W), one channel per class (probabilities, or anything whose
    largest channel is the class): the argmax (``order`` does not apply).
    """
    if x.shape[1] > 1:
        if x.shape[1] != classes:
            raise ValueError(f"one channel per class expected ({classes}), got {x.shape[1]} channels")
        return x.argmax(dim=1).to(torch.uint8)
    values = (x[:, 0].float() + 1.0) * ((classes - 1) / 2.0)
    places = values.round().clamp(0, classes - 1)
    in_order = classes_in_order(order, classes)
    if order == "paper":  # the identity: the paper's decoding as it was
        return places.to(torch.uint8)
    return torch.tensor(in_order, dtype=torch.uint8, device=x.device)[places.long()]


LABEL_ENCODINGS = ("index", "onehot")


def labels_to_onehot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Class indices (N, H, W) -> one-hot network values (N, classes, H, W) float32 (the ``onehot`` encoding)."""
    return torch.nn.functional.one_hot(labels.long(), classes).permute(0, 3, 1, 2).float()


def class_fractions(labels: torch.Tensor, size: int, classes: int) -> torch.Tensor:
    """Class indices (N, H, W) -> the share of each class in every block (N, classes, ``size``, ``size``).

    The block mean of the one-hot maps: the ``onehot`` encoding's lower levels of detail, which, unlike the
    block mean of class indices, invent no class (a pixel between WM and CSF is half WM, half CSF, never GM).
    Each pixel's fractions sum to 1.
    """
    current = int(labels.shape[-1])
    if current < size or current % size:
        raise ValueError(f"label size {current} cannot be block-averaged to {size}")
    onehot = labels_to_onehot(labels, classes)
    factor = current // size
    return onehot if factor == 1 else torch.nn.functional.avg_pool2d(onehot, factor)


def class_weights_from_counts(counts: np.ndarray | list[float]) -> np.ndarray:
    """Weighted-Dice class weights: inverse class frequency, normalised to sum 1.

    The paper computes its weights "over the training set" without giving the formula; inverse frequency is
    the usual choice for weighted Dice. A class absent from the training set gets weight 0 (it cannot be
    learned, and an infinite weight would make the loss meaningless). This is the one place the formula lives.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or (counts < 0).any():
        raise ValueError(f"class counts must be a 1-D array of non-negative numbers, got {counts}")
    inv = np.zeros_like(counts)
    present = counts > 0
    inv[present] = 1.0 / counts[present]
    if inv.sum() == 0:
        raise ValueError("class counts are all zero: no labelled pixels to compute class weights from")
    return inv / inv.sum()
