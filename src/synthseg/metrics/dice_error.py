"""The U-Net's evaluation Dice error, reduced as Keras' ``evaluate`` reduces it, or over the whole set.

The paper's "Dice error" is its weighted Dice loss on the test set, as Keras' ``model.evaluate`` reports it:
the set is cut into consecutive batches (``batch_size=32`` by default), the loss is computed per batch, and
the per-batch losses are averaged weighted by batch size (the last batch may be smaller). ``batch_mean`` does
exactly that, independent of the DataLoader's batch size and of how DDP shards the set: the metric keeps the
per-slice Dice sums with each slice's dataset index and groups them in index order at the end. ``dataset``
is one weighted Dice over the whole set (sums over every slice first), the reduction of
:class:`synthseg.losses.dice.WeightedDiceError`.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from synthseg.losses.dice import weighted_dice_from_sums

EVAL_REDUCTIONS = ("batch_mean", "dataset")


def batch_mean_dice_error(
    intersection: torch.Tensor, total: torch.Tensor, weights: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Keras ``evaluate``: the weighted Dice loss of each run of ``batch_size`` slices, averaged weighted by size.

    Args:
        intersection, total: (N, C) per-slice sums ``sum(y_c * p_c)`` and ``sum(y_c + p_c)``, in dataset order.
        weights: (C,) class weights.
        batch_size: slices per evaluation batch.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    count = intersection.shape[0]
    if count == 0:
        raise ValueError("no slices to evaluate")
    losses, sizes = [], []
    for start in range(0, count, batch_size):
        stop = min(start + batch_size, count)
        losses.append(
            weighted_dice_from_sums(intersection[start:stop].sum(0), total[start:stop].sum(0), weights)
        )
        sizes.append(stop - start)
    size = torch.tensor(sizes, dtype=intersection.dtype, device=intersection.device)
    return (torch.stack(losses) * size).sum() / count


class EvalDiceError(Metric):
    """The weighted Dice error of an evaluation set, reduced ``batch_mean`` (Keras) or over the ``dataset``.

    Args:
        weights: (C,) class weights (replace ``weights`` in place before an epoch to change them).
        reduction: ``batch_mean`` or ``dataset``.
        batch_size: slices per evaluation batch for ``batch_mean`` (Keras ``evaluate``'s default 32).

    ``update(probs, target, index)`` takes (B, C, H, W) probabilities and one-hot targets and the slices'
    dataset indices (B,); a slice seen twice (every DDP process evaluating the whole set) counts once.
    """

    full_state_update = False

    def __init__(
        self, weights: torch.Tensor | list[float], reduction: str = "batch_mean", batch_size: int = 32
    ):
        super().__init__()
        if reduction not in EVAL_REDUCTIONS:
            raise ValueError(f"eval_reduction must be one of {EVAL_REDUCTIONS}, got {reduction!r}")
        if isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"eval_batch_size must be a positive integer, got {batch_size!r}")
        self.reduction = reduction
        self.batch_size = int(batch_size)
        self.register_buffer("weights", torch.as_tensor(weights, dtype=torch.float64), persistent=False)
        self.add_state("index", [], dist_reduce_fx="cat")
        self.add_state("intersection", [], dist_reduce_fx="cat")
        self.add_state("total", [], dist_reduce_fx="cat")

    def update(self, probs: torch.Tensor, target: torch.Tensor, index: torch.Tensor) -> None:
        if probs.shape != target.shape or probs.ndim < 3:
            raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} must match")
        dims = tuple(range(2, probs.ndim))
        probs, target = probs.double(), target.double()
        self.index.append(torch.as_tensor(index, device=probs.device).reshape(-1).long())
        self.intersection.append((probs * target).sum(dims))
        self.total.append((probs + target).sum(dims))

    def compute(self) -> torch.Tensor:
        index = dim_zero_cat(self.index)
        intersection, total = dim_zero_cat(self.intersection), dim_zero_cat(self.total)
        # Dataset order, each slice once.
        order = torch.argsort(index, stable=True)
        index, intersection, total = index[order], intersection[order], total[order]
        first = torch.ones_like(index, dtype=torch.bool)
        first[1:] = index[1:] != index[:-1]
        intersection, total = intersection[first], total[first]
        weights = self.weights.to(total)
        if self.reduction == "dataset":
            return weighted_dice_from_sums(intersection.sum(0), total.sum(0), weights)
        return batch_mean_dice_error(intersection, total, weights, self.batch_size)
