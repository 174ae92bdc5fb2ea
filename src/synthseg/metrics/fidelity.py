"""Distribution distances on features: Fréchet distance, KID (torchmetrics) and k-NN precision / recall.

FD and KID use torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` with an identity
feature module over features computed once (by :mod:`synthseg.metrics.features`), so the matrix square root
and the unbiased MMD are torchmetrics' own. Precision / recall follow Kynkäänniemi et al. (2019): a sample
is inside a set's manifold when it lies within the distance to the k-th nearest neighbour of some member.

FD of n samples per set is biased upwards by about c / n (c grows with the square of the feature dimension),
so plain FD values of different set sizes cannot be compared. :func:`frechet_distance_inf` is the unbiased
extrapolation FD∞ of Chong & Forsyth (2020): FD at several subset sizes, a straight line in 1/n, its
intercept. It needs every subset to hold more samples than the features have dimensions, so the features
are first averaged in groups of neighbouring channels down to at most ``dims`` (:func:`pool_features`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
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


def pool_features(features: torch.Tensor, dims: int) -> torch.Tensor:
    """(N, D) features -> (N, D') with D' <= ``dims``: means over groups of ceil(D / dims) neighbouring channels.

    A U-Net's pooled encoder vector is five levels of w, 2w, 4w, 8w, 16w channels: a group size that divides w
    (width 64 to 248 dimensions: groups of 8) never mixes two levels. ``D <= dims`` returns the features as
    they are.
    """
    if dims < 1:
        raise ValueError(f"dims must be at least 1, got {dims}")
    width = features.shape[1]
    group = math.ceil(width / dims)
    if group == 1:
        return features
    return F.adaptive_avg_pool1d(features[:, None, :], math.ceil(width / group))[:, 0]


def frechet_distance_inf(
    real: torch.Tensor, fake: torch.Tensor, *, points: int = 15, low: float = 0.5, seed: int = 0
) -> float:
    """FD∞ (Chong & Forsyth 2020): FD of seeded random subsets of ``points`` sizes from ``low`` x n to n
    (n the smaller set), fitted by least squares as ``FD(m) = FD∞ + slope / m``; the intercept.

    Both sets are subsampled to the same m. The fit holds where every subset has more samples than the
    features have dimensions (measured: within 5 % of the true FD on Gaussians with m >= D, off by 2.5x with
    m = D / 2; :func:`pool_features` first).

    Raises:
        ValueError: when the smallest subset would hold no more samples than the features have dimensions.
    """
    n = min(len(real), len(fake))
    sizes = np.unique(np.linspace(math.ceil(low * n), n, points).astype(np.int64))
    if sizes[0] <= real.shape[1] or len(sizes) < 2:
        raise ValueError(
            f"FD∞ needs subsets larger than the feature dimension {real.shape[1]}: "
            f"the smallest is {int(sizes[0])} of n = {n}"
        )
    gen = torch.Generator().manual_seed(seed)
    values = []
    for m in sizes.tolist():
        pick_real = torch.randperm(len(real), generator=gen)[:m]
        pick_fake = torch.randperm(len(fake), generator=gen)[:m]
        values.append(frechet_distance(real[pick_real], fake[pick_fake]))
    design = np.stack([np.ones(len(sizes)), 1.0 / sizes], axis=1)
    intercept, _slope = np.linalg.lstsq(design, np.asarray(values), rcond=None)[0]
    return float(intercept)


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


def feature_distances(
    real: torch.Tensor, fake: torch.Tensor, *, seed: int = 0, k: int = 3, subsets: int = 100, dims: int = 124,
    lap: Callable[[str], None] | None = None,
) -> dict[str, float | None]:  # fmt: skip
    """Every feature-based figure of ``fake`` against ``real``: ``fd`` (plain, biased by set size), ``fd_inf``
    (FD∞ on features pooled to at most ``dims``; None where the sets are too small for it), ``kid``,
    ``kid_std`` (over subsets of min(1000, n)), ``precision``, ``recall`` (k-NN manifolds).

    ``lap(stage)`` is called after FD and KID (``fd_kid``) and after precision / recall (``precision_recall``).
    """
    lap = lap or (lambda stage: None)
    fd = frechet_distance(real, fake)
    try:
        fd_inf: float | None = frechet_distance_inf(
            pool_features(real, dims), pool_features(fake, dims), seed=seed
        )
    except ValueError:
        fd_inf = None
    kid, kid_std = kernel_distance(real, fake, subset_size=1000, subsets=subsets, seed=seed)
    lap("fd_kid")
    precision, recall = precision_recall(real, fake, k=k)
    lap("precision_recall")
    return {
        "fd": fd, "fd_inf": fd_inf, "kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall,
    }  # fmt: skip
