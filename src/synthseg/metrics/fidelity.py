"""Distribution distances on features: Fréchet distance, KID (torchmetrics) and k-NN precision / recall.

FD and KID use torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with an identity
feature module over features computed once (by :mod:`synthseg.metrics.features`), so the matrix square root
and the unbiased MMD are torchmetrics' own. Precision / recall follow Kynkäänniemi et al. (2019): a sample
is inside a set's manifold when it lies within the distance to the k-th nearest neighbour of some member.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


class PrecomputedFeatures(nn.Module):
    """Identity over (B, D) features already extracted, so torchmetrics' metrics accept them as 'images'."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) features (N, M >= 2)."""
    metric = FrechetInceptionDistance(feature=PrecomputedFeatures(real.shape[1]), normalize=False)
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def kernel_distance(
    real: torch.Tensor, fake: torch.Tensor, *, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """KID: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets.

    ``subset_size`` is capped at the smaller set's size. Seeded: the subsets are the same on every run.
    """
    size = max(2, min(subset_size, len(real), len(fake)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*save all extracted features.*")  # bounded by max_images
        metric = KernelInceptionDistance(
            feature=PrecomputedFeatures(real.shape[1]), subsets=subsets, subset_size=size, normalize=False
        )
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def kth_neighbour_radii(features: torch.Tensor, k: int = 3, batch_size: int = 1024) -> torch.Tensor:
    """(N,) distance of each row to its k-th nearest other row (batched cdist, self excluded)."""
    if len(features) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} samples per set, got {len(features)}"
        )
    radii = []
    for start in range(0, len(features), batch_size):
        d = torch.cdist(features[start : start + batch_size], features)
        # The smallest distance is the row to itself (0): the k-th neighbour is the (k+1)-th smallest.
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor, batch_size: int) -> float:
    inside = []
    for start in range(0, len(queries), batch_size):
        d = torch.cdist(queries[start : start + batch_size], support)
        inside.append((d <= radii[None, :]).any(dim=1))
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: torch.Tensor, fake: torch.Tensor, k: int = 3, batch_size: int = 1024
) -> tuple[float, float]:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold)."""
    real, fake = real.double(), fake.double()
    precision = _coverage(fake, real, kth_neighbour_radii(real, k, batch_size), batch_size)
    recall = _coverage(real, fake, kth_neighbour_radii(fake, k, batch_size), batch_size)
    return precision, recall
