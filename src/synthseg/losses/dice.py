"""Weighted Dice loss of the paper's U-Net and the matching whole-set metric."""

from __future__ import annotations

import torch
from torchmetrics import Metric


def dice_sums(probs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class sums over the batch: intersection sum(y_c * p_c) and total sum(y_c + p_c).

    Args:
        probs: (B, C, H, W) class probabilities (or one-hot predictions).
        target: (B, C, H, W) one-hot ground truth.

    Returns:
        Two (C,) tensors.
    """
    if probs.shape != target.shape:
        raise ValueError(f"probs {tuple(probs.shape)} and target {tuple(target.shape)} differ in shape")
    dims = (0, *range(2, probs.ndim))
    return (probs * target).sum(dims), (probs + target).sum(dims)


def weighted_dice_from_sums(
    intersection: torch.Tensor, total: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """1 - 2 * sum_c w_c I_c / sum_c w_c T_c."""
    return 1.0 - 2.0 * (weights * intersection).sum() / (weights * total).sum()


def weighted_dice_loss(probs: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The paper's weighted Dice loss over a whole batch.

    loss = 1 - 2 * sum_c w_c * sum(y_c * p_c) / sum_c w_c * sum(y_c + p_c)

    Args:
        probs: (B, C, H, W) softmax probabilities.
        target: (B, C, H, W) one-hot labels.
        weights: (C,) class weights.
    """
    intersection, total = dice_sums(probs, target)
    return weighted_dice_from_sums(intersection, total, weights.to(probs.dtype))


class WeightedDiceError(Metric):
    """The weighted Dice loss accumulated over a whole dataset (the paper's "Dice error"), DDP-reducible.

    Args:
        weights: (C,) class weights.
    """

    full_state_update = False

    def __init__(self, weights: torch.Tensor | list[float]) -> None:
        super().__init__()
        weights = torch.as_tensor(weights, dtype=torch.float64)
        self.register_buffer("weights", weights, persistent=False)
        self.add_state("intersection", torch.zeros(len(weights), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(weights), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, probs: torch.Tensor, target: torch.Tensor) -> None:
        intersection, total = dice_sums(probs.double(), target.double())
        self.intersection += intersection
        self.total += total

    def compute(self) -> torch.Tensor:
        return weighted_dice_from_sums(self.intersection, self.total, self.weights.to(self.total))
