"""What PGAN's critic sees: reals at the stage's resolution, and the generator's output, in either label encoding.

``index`` (official): class indices 0..C-1 map linearly to [-1, 1]; lower levels of detail are the official
rounded block means (``lowres_labels=average``) or a majority vote per block (``majority``), faded in as the
official ``process_reals`` does (see :mod:`synthseg.models.pgan`).

``onehot``: one channel per class. Reals are one-hot; their lower levels of detail are class fractions, the
block means of the one-hot maps (``average``: invents no class), or the one-hot majority vote (``majority``);
during a fade-in they blend with their 2x2 block mean (class fractions again), nearest-upsampled, as the
generator blends its previous stage. The generator's output is class probabilities (softmax). A critic could
tell exact one-hot reals from probabilities by their entropy alone, so two kinds of remedy are offered:

- on the fakes (``onehot_fakes``): ``softmax`` (the probabilities as they are), ``straight_through`` (the
  argmax as one-hot in the forward pass, the softmax's gradient in the backward pass), ``gumbel`` (a
  Gumbel-softmax sample at ``temperature``: soft, random) and ``gumbel_hard`` (its argmax, straight-through);
- on the reals (``onehot_reals``): ``exact``, ``smooth`` (label smoothing: ``(1 - e) y + e / C``) or ``noise``
  (``y + e u``, ``u`` uniform per pixel and class, renormalised to sum 1).

``e`` is ``real_noise``. Random numbers come from the training generator (saved in the checkpoint).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from synthseg.data.labels import (
    LABEL_ENCODINGS,
    block_mean_labels,
    class_fractions,
    index_values,
    labels_to_net,
    labels_to_onehot,
    resize_labels,
    values_to_net,
)
from synthseg.progressive import GrowthStage

ONEHOT_FAKES = ("softmax", "straight_through", "gumbel", "gumbel_hard")
ONEHOT_REALS = ("exact", "smooth", "noise")


def check_label_settings(
    networks: tuple[nn.Module, ...],
    label_encoding: str,
    condition: str,
    classes: int,
    onehot_fakes: str = "softmax",
    onehot_reals: str = "noise",
    temperature: float = 1.0,
    real_noise: float = 0.1,
) -> None:
    """Raise a ValueError naming a setting out of its choices or range, or a network built for other ones."""
    if temperature <= 0 or not 0 <= real_noise <= 1:
        raise ValueError(f"onehot_temperature must be > 0, real_noise in [0, 1]: {temperature}, {real_noise}")
    for name, value, allowed in (
        ("label_encoding", label_encoding, LABEL_ENCODINGS),
        ("onehot_fakes", onehot_fakes, ONEHOT_FAKES),
        ("onehot_reals", onehot_reals, ONEHOT_REALS),
    ):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    for net in networks:
        found = (getattr(net, "label_encoding", "index"), getattr(net, "condition", "none"))
        built_classes = getattr(net, "classes", classes) if label_encoding == "onehot" else classes
        if (*found, built_classes) != (label_encoding, condition, classes):
            raise ValueError(
                f"the {type(net).__name__} is built for label_encoding={found[0]}, condition={found[1]}, "
                f"classes={built_classes}; the model asks for {label_encoding}, {condition}, {classes}"
            )
    orders = {getattr(net, "index_order", "paper") for net in networks}
    if len(orders) > 1:
        raise ValueError(
            f"the generator and the discriminator are built for different index_order: {sorted(orders)}"
        )


def _fade(reals: Tensor, stage: GrowthStage) -> Tensor:
    """Blend with the 2x2 block mean, nearest-upsampled, during a fade-in (official ``process_reals``)."""
    if stage.alpha >= 1.0 or stage.resolution <= 4:
        return reals
    low = F.avg_pool2d(reals, 2).repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
    return torch.lerp(low, reals, stage.alpha)


def index_reals(
    labels: Tensor, stage: GrowthStage, classes: int, lowres_labels: str, order: str = "paper"
) -> Tensor:
    """Class indices (N, h, w) -> faded index-coded reals (N, 1, r, r) at the stage's resolution.

    ``average``: the official reals, block means rounded (uint8 levels of detail), faded with the unrounded
    2x2 means. ``majority``: majority votes, faded with their majority-vote half-resolution copy. Batches
    prefetched before a resolution change still come at the old size; they are resized here. ``order``: the
    coding's value order (``INDEX_ORDERS``); block means are taken of the places on that line.
    """
    res = stage.resolution
    if lowres_labels == "average":
        if labels.shape[-1] < res:  # only a batch prefetched before set_resolution: nearest up
            labels = resize_labels(labels, res, classes)
        # torch.round and numpy's rint both round halves to even.
        places = block_mean_labels(index_values(labels, classes, order), res).round()
        return _fade(values_to_net(places, classes), stage)
    labels = resize_labels(labels, res, classes)
    reals = labels_to_net(labels, classes, order)
    if stage.alpha < 1.0 and res > 4:
        low = resize_labels(resize_labels(labels, res // 2, classes), res, classes)
        reals = torch.lerp(labels_to_net(low, classes, order), reals, stage.alpha)
    return reals


def onehot_reals(labels: Tensor, stage: GrowthStage, classes: int, lowres_labels: str) -> Tensor:
    """Class indices (N, h, w) -> faded one-hot reals (N, C, r, r): class fractions (``average``) or the
    one-hot majority vote (``majority``) below full resolution; each pixel sums to 1."""
    res = stage.resolution
    if labels.shape[-1] < res:  # a batch prefetched before set_resolution: nearest up
        labels = resize_labels(labels, res, classes)
    if lowres_labels == "average":
        return _fade(class_fractions(labels, res, classes), stage)
    labels = resize_labels(labels, res, classes)
    reals = labels_to_onehot(labels, classes)
    if stage.alpha < 1.0 and res > 4:
        low = resize_labels(resize_labels(labels, res // 2, classes), res, classes)
        reals = torch.lerp(labels_to_onehot(low, classes), reals, stage.alpha)
    return reals


def soften_reals(reals: Tensor, mode: str, amount: float, rng: torch.Generator) -> Tensor:
    """The ``onehot_reals`` remedy on one-hot reals (N, C, r, r): ``exact``, ``smooth`` or ``noise``."""
    if mode == "exact" or amount <= 0:
        return reals
    if mode == "smooth":
        return reals * (1.0 - amount) + amount / reals.shape[1]
    noisy = reals + amount * torch.rand(reals.shape, generator=rng).to(reals.device, reals.dtype)
    return noisy / noisy.sum(dim=1, keepdim=True)


class _StraightThrough(torch.autograd.Function):
    """Exactly the one-hot argmax forward (no rounding residue), the identity backward."""

    @staticmethod
    def forward(ctx: object, probabilities: Tensor) -> Tensor:
        index = probabilities.argmax(dim=1, keepdim=True)
        return torch.zeros_like(probabilities).scatter_(1, index, 1.0)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        return grad


def _hard(probabilities: Tensor) -> Tensor:
    """One-hot of the argmax in the forward pass, the probabilities' gradient in the backward pass."""
    return _StraightThrough.apply(probabilities)


def fakes_for_critic(probabilities: Tensor, mode: str, temperature: float, rng: torch.Generator) -> Tensor:
    """The ``onehot_fakes`` remedy on the generator's class probabilities (N, C, r, r)."""
    if mode == "softmax":
        return probabilities
    if mode == "straight_through":
        return _hard(probabilities)
    uniform = torch.rand(probabilities.shape, generator=rng).to(probabilities.device, probabilities.dtype)
    gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
    logits = torch.log(probabilities.float().clamp_min(1e-12))
    sample = torch.softmax((logits + gumbel) / temperature, dim=1).to(probabilities.dtype)
    return _hard(sample) if mode == "gumbel_hard" else sample
