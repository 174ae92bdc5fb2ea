"""Beyond the paper: a frozen real-data U-Net reads SPADE's images and is asked to find their label maps.

SPADE's own evaluation segments its images with a network trained on real ones (Park et al. 2019); OASIS
(Schönfeld et al. 2021) turns that reading into the training signal, and task-driven image synthesis does the
same with a fixed segmenter. Here the segmenter is the pipeline's own full_real U-Net (a run folder or a
network snapshot), frozen and kept in eval mode: the generator gets the cross-entropy of the U-Net's
prediction on each generated image against the label map it was painted from, with the image passed through
exactly what the U-Net saw in training (16-bit units, then its ``image_norm``). docs/spade.md, "A segmenter
term", has the measurements.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from synthseg.data.labels import reduce_labels
from synthseg.errors import InputError

BALANCES = ("pixels", "sqrt", "classes")


def zscore_brain_torch(images: torch.Tensor) -> torch.Tensor:
    """:func:`synthseg.data.dataset.zscore_brain` in torch, differentiable in the image values: each channel
    of (B, S, H, W) 16-bit-unit images to zero mean and unit std over its non-zero pixels, 0 outside. The
    generator's values are not yet rounded to the PNG's whole units: a pixel is brain when it would round to at
    least 1 (the written PNG's ``> 0``)."""
    brain = (images >= 0.5).to(images.dtype).detach()
    count = brain.sum(dim=(-2, -1), keepdim=True).clamp_min(1)
    mean = (images * brain).sum(dim=(-2, -1), keepdim=True) / count
    var = (((images - mean) * brain) ** 2).sum(dim=(-2, -1), keepdim=True) / count
    floor = 1e-3 * mean.detach().clamp_min(1.0)
    std = torch.maximum(torch.sqrt(var + 1e-12), floor)
    return torch.where(brain > 0, (images - mean) / std, torch.zeros_like(images))


class SegmenterLoss:
    """Cross-entropy of a frozen U-Net's reading of generated images against their label maps.

    Not an ``nn.Module`` on purpose: the U-Net must not join the SPADE module's parameters, state dict or
    train/eval switches (its batch norms stay in eval mode; its weights are never saved with SPADE's).

    Args:
        path: a full_real U-Net run folder (``results.json``) or a U-Net network snapshot.
        balance: ``pixels`` (the plain mean over pixels: the tissue classes dominate), ``classes`` (the
            mean over the classes in the batch of each class's mean cross-entropy, so a rare tumor class
            counts as much as white matter) or ``sqrt`` (between the two: each pixel weighted by one over
            the square root of its class's pixel count in the batch).

    Shapes:
        ``fake`` (B, S, H, W) in [-1, 1], ``train_max`` (S,) SPADE's 16-bit maxima, ``labels`` (B, H, W)
        7-class indices -> a scalar.
    """

    def __init__(self, path: str | os.PathLike[str], balance: str = "pixels") -> None:
        from synthseg.metrics.features import build_extractor

        if balance not in BALANCES:
            raise InputError(f"model.segmenter_balance={balance!r}: expected one of {list(BALANCES)}")
        self.balance = balance

        extractor = build_extractor("unet", path)
        self.source = extractor.source
        self.net: nn.Module = extractor.segmenter.eval().requires_grad_(False)
        self.classes = int(extractor.classes)
        self.norm = extractor.norm
        self.resolution = extractor.resolution
        self.sequences = extractor.sequences
        if self.norm == "paper" and (extractor.train_max is None or extractor.train_mean is None):
            raise InputError(f"model.segmenter={path}: records no train_max / train_mean to normalise with")
        # (1, S, 1, 1) each, for ``paper``: image / train_max - train_mean, as the U-Net's DataModule did
        self.unet_max, self.unet_mean = (
            None if values is None else torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)
            for values in (extractor.train_max, extractor.train_mean)
        )

    def check(self, image_size: int, sequences: tuple[str, ...]) -> None:
        """One line when the U-Net cannot read the generator's images as they are painted."""
        if self.resolution is not None and self.resolution != image_size:
            raise InputError(
                f"model.segmenter={self.source}: the U-Net trained at {self.resolution} px, the generator paints "
                f"{image_size} px"
            )
        if self.sequences is not None and tuple(self.sequences) != tuple(sequences):
            raise InputError(
                f"model.segmenter={self.source}: the U-Net reads {list(self.sequences)}, the generator paints "
                f"{list(sequences)}"
            )

    def to(self, device: torch.device) -> SegmenterLoss:
        self.net.to(device)
        if self.unet_max is not None and self.unet_mean is not None:
            self.unet_max, self.unet_mean = self.unet_max.to(device), self.unet_mean.to(device)
        return self

    def unet_input(self, fake: torch.Tensor, train_max: torch.Tensor) -> torch.Tensor:
        """Generated images in [-1, 1] -> the U-Net's training input (16-bit units, then its norm)."""
        top = train_max.to(fake.device, torch.float32).reshape(1, -1, 1, 1)
        units = (fake.float().clamp(-1, 1) + 1) * 0.5 * top
        if self.norm == "zscore":
            return zscore_brain_torch(units)
        return units / self.unet_max - self.unet_mean

    def __call__(self, fake: torch.Tensor, train_max: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = self.net(self.unet_input(fake, train_max))
        target = reduce_labels(labels.long(), self.classes)
        weight = None
        if self.balance != "pixels":
            counts = torch.bincount(target.reshape(-1), minlength=self.classes).float().clamp_min(1)
            weight = 1.0 / (counts if self.balance == "classes" else counts.sqrt())
        return F.cross_entropy(logits.float(), target, weight=weight)
