"""Built-in 3-class tissue segmentation (CSF, GM, WM) of a skull-stripped T1c brain, in the manner of FSL FAST.

FAST (Zhang, Brady & Smith 2001) fits a hidden Markov random field model with expectation-maximisation: each
tissue class has a Gaussian intensity distribution, a Potts prior rewards neighbours of the same class, and a
smooth multiplicative bias field is estimated along the way. This module does the same with plain numpy:

1. a Gaussian mixture fitted by EM to the intensities inside the brain (tumour voxels excluded);
2. alternating rounds of mean-field updates of the class posteriors under a Potts prior over the 6-neighbourhood
   (neighbour counts as shifted sums), re-estimation of the class means and of one shared spread from those
   posteriors (the class proportions from the intensity mixture alone), and re-estimation of the bias field
   (a weighted, heavily smoothed ratio of the image to the fitted class means).

Typical use on a BraTS-style case: ``segment_tissue(t1ce, t1ce > 0, exclude=seg > 0)``.

Output follows FAST's ``pveseg`` convention: 0 outside the brain (and in excluded voxels), 1 CSF, 2 GM, 3 WM,
the classes ordered by mean intensity (T1 contrast: CSF darkest, WM brightest).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from synthseg.errors import InputError

CSF, GM, WM = 1, 2, 3
_EPS = 1e-6


def _gmm_1d(
    values: np.ndarray, means: np.ndarray, iterations: int = 50, bins: int = 512
) -> tuple[np.ndarray, ...]:
    """EM for a 1-D Gaussian mixture on the histogram of ``values``, starting from ``means``.

    Args:
        values: (N,) samples.
        means: (K,) starting means.
        bins: histogram bins (EM on bin centres weighted by counts: the cost no longer grows with N).

    Returns:
        (means, sigmas, weights), each (K,), sorted by mean.
    """
    k = len(means)
    counts, edges = np.histogram(values, bins=bins)
    x = ((edges[:-1] + edges[1:]) / 2)[:, None]
    counts = counts.astype(np.float64)[:, None]
    mu = means.astype(np.float64).copy()
    spread = values.std() / k + _EPS
    sigma = np.full(k, spread)
    weight = np.full(k, 1.0 / k)
    floor = edges[1] - edges[0]
    for _ in range(iterations):
        log_p = -0.5 * ((x - mu) / sigma) ** 2 - np.log(sigma) + np.log(weight)
        log_p -= log_p.max(1, keepdims=True)
        resp = np.exp(log_p)
        resp *= counts / resp.sum(1, keepdims=True)
        total = resp.sum(0) + _EPS
        mu = (resp * x).sum(0) / total
        sigma = np.sqrt((resp * (x - mu) ** 2).sum(0) / total) + floor
        weight = total / total.sum()
    order = np.argsort(mu)
    return mu[order], sigma[order], weight[order]


def _neighbour_sum(q: np.ndarray) -> np.ndarray:
    """Sum of each class map over the 6 face neighbours (zero beyond the edges).

    Args:
        q: (K, X, Y, Z) float32.

    Returns:
        (K, X, Y, Z) float32.
    """
    out = np.zeros_like(q)
    out[:, 1:] += q[:, :-1]
    out[:, :-1] += q[:, 1:]
    out[:, :, 1:] += q[:, :, :-1]
    out[:, :, :-1] += q[:, :, 1:]
    out[:, :, :, 1:] += q[:, :, :, :-1]
    out[:, :, :, :-1] += q[:, :, :, 1:]
    return out


def _smooth_bias(log_ratio: np.ndarray, weight: np.ndarray, sigma_mm: float, factor: int = 4) -> np.ndarray:
    """Weighted Gaussian smoothing of ``log_ratio`` at 1/``factor`` resolution (the bias field is very smooth).

    Args:
        log_ratio: (X, Y, Z) log(image / model), meaningful where ``weight`` > 0.
        weight: (X, Y, Z) confidence of each voxel (0 outside the region).
        sigma_mm: Gaussian width in voxels of the full grid.

    Returns:
        (X, Y, Z) float32 smoothed log bias field.
    """
    shape = log_ratio.shape
    padded = [int(np.ceil(n / factor)) * factor for n in shape]
    pad = [(0, p - n) for p, n in zip(padded, shape, strict=True)]
    num = np.pad(log_ratio * weight, pad)
    den = np.pad(weight, pad)
    small = [p // factor for p in padded]

    def block_sum(a: np.ndarray) -> np.ndarray:
        return a.reshape(small[0], factor, small[1], factor, small[2], factor).sum((1, 3, 5))

    num_s = ndimage.gaussian_filter(block_sum(num), sigma_mm / factor, mode="constant")
    den_s = ndimage.gaussian_filter(block_sum(den), sigma_mm / factor, mode="constant")
    field = num_s / np.maximum(den_s, _EPS * den_s.max() + _EPS)
    full = ndimage.zoom(field, factor, order=1, mode="nearest", grid_mode=True)
    return full[: shape[0], : shape[1], : shape[2]].astype(np.float32)


def segment_tissue(
    image: np.ndarray,
    brain_mask: np.ndarray,
    exclude: np.ndarray | None = None,
    *,
    beta: float = 0.5,
    iterations: int = 8,
    bias_sigma: float = 30.0,
    tied_variance: bool = True,
    seed: int = 0,
) -> np.ndarray:
    """Segment a skull-stripped T1(c) brain into CSF, GM and WM (hidden MRF + EM, as FSL FAST does).

    Args:
        image: (X, Y, Z) intensities, any real dtype.
        brain_mask: (X, Y, Z) bool (or 0/1), the brain.
        exclude: optional (X, Y, Z) bool, voxels left out of the model and of the output (e.g. tumour).
        beta: strength of the Potts prior (per agreeing face neighbour, in log-probability units); 0 turns
            the spatial prior off (plain Gaussian mixture).
        iterations: rounds of (mean-field update, parameter update, bias update).
        bias_sigma: width (voxels) of the Gaussian that smooths the bias field estimate; 0 turns bias
            correction off.
        tied_variance: one intensity spread shared by the three classes. Partial-volume voxels (CSF/GM at
            the cortex, GM/WM at every boundary) widen the darker classes' fitted spread so that they swallow
            the edges of the brighter class; a shared spread puts each boundary midway between class means,
            which is where an argmax of partial volumes puts it.
        seed: seed of the voxel sample the starting mixture is fitted to.

    Returns:
        (X, Y, Z) uint8: 0 outside the brain and in ``exclude``, 1 CSF, 2 GM, 3 WM.

    Raises:
        InputError: shapes differ, the image holds NaN/inf in the brain, or too few brain voxels.
    """
    image = np.asarray(image)
    brain_mask = np.asarray(brain_mask).astype(bool)
    if image.ndim != 3 or brain_mask.shape != image.shape:
        raise InputError(f"image {image.shape} and brain mask {brain_mask.shape} must be the same 3-D shape")
    region = brain_mask.copy()
    if exclude is not None:
        exclude = np.asarray(exclude).astype(bool)
        if exclude.shape != image.shape:
            raise InputError(f"exclude mask {exclude.shape} does not match the image {image.shape}")
        region &= ~exclude
    if beta < 0 or iterations < 0:
        raise ValueError(f"beta and iterations must be >= 0, got beta={beta}, iterations={iterations}")
    labels = np.zeros(image.shape, dtype=np.uint8)
    if region.sum() < 100:
        raise InputError(f"only {int(region.sum())} brain voxels to segment: is the brain mask empty?")

    # Work inside the bounding box of the region.
    nz = np.argwhere(region)
    box = tuple(slice(int(a), int(b) + 1) for a, b in zip(nz.min(0), nz.max(0), strict=True))
    roi = region[box]
    raw = image[box].astype(np.float32)
    values = raw[roi]
    if not np.isfinite(values).all():
        raise InputError("the image holds NaN or infinite values inside the brain")
    # Scale to a robust unit so the numbers behave the same for every scanner.
    scale = np.float32(np.percentile(values, 99) + _EPS)
    raw = np.where(roi, raw / scale, 0).astype(np.float32)
    values = raw[roi]

    rng = np.random.default_rng(seed)
    sample = values if len(values) <= 200_000 else rng.choice(values, 200_000, replace=False)
    mu, sigma, weight = _gmm_1d(values, np.percentile(sample, [15, 50, 85]))

    bias = np.zeros_like(raw)  # log bias field
    y = raw
    q = None
    roi_f = roi.astype(np.float32)
    for step in range(max(iterations, 1)):
        # E-step: class log-likelihoods plus the Potts prior from the neighbours' current posteriors.
        v = y[roi]
        mu32, sigma32 = mu.astype(np.float32)[:, None], sigma.astype(np.float32)[:, None]
        flat = (
            -0.5 * ((v[None, :] - mu32) / sigma32) ** 2
            - np.log(sigma32)
            + np.log(weight).astype(np.float32)[:, None]
        )
        # Class proportions come from the intensity mixture alone: estimated from the MRF posteriors, which
        # already favour the locally common class, they would let a small class shrink away round by round.
        weight = _softmax(flat).astype(np.float64).mean(1)
        log_like = np.zeros((3, *roi.shape), dtype=np.float32)
        log_like[:, roi] = flat
        if q is None:
            q = _softmax(log_like) * roi_f
        for _ in range(2 if iterations else 0):
            q = _softmax(log_like + np.float32(beta) * _neighbour_sum(q)) * roi_f
        # M-step: class parameters from the posteriors.
        # (float64 and centred: float32 sums of squares cancel badly over millions of voxels)
        w = q[:, roi].astype(np.float64)
        total = w.sum(1) + _EPS
        mu = (w @ v.astype(np.float64)) / total
        var = np.einsum("kn,kn->k", w, (v[None, :] - mu[:, None].astype(np.float32)) ** 2) / total
        sigma = np.sqrt(var) + 1e-4
        if tied_variance:
            sigma[:] = np.sqrt((var * total).sum() / total.sum()) + 1e-4
        # Bias: the smooth part of log(observed / expected), the latter from the fitted class means.
        if bias_sigma > 0 and step < min(iterations - 1, 4):
            expected = np.tensordot(mu.astype(np.float32), q, axes=(0, 0))
            ratio = np.where(roi, np.log(np.maximum(raw, _EPS) / np.maximum(expected, _EPS)), 0)
            bias = _smooth_bias(ratio.astype(np.float32), roi_f, bias_sigma)
            # The field's mean is not identifiable apart from the class means: pin it to zero, or it drifts.
            bias -= bias[roi].mean()
            y = np.where(roi, raw * np.exp(-bias), 0).astype(np.float32)

    order = np.argsort(mu)  # darkest -> CSF, brightest -> WM
    best = np.argmax(q, axis=0)
    rank = np.empty(3, dtype=np.uint8)
    rank[order] = np.arange(1, 4, dtype=np.uint8)
    labels[box] = np.where(roi, rank[best], 0)
    return labels


def _softmax(log_p: np.ndarray) -> np.ndarray:
    """Normalise (K, ...) log-probabilities over the first axis."""
    p = np.exp(log_p - log_p.max(0, keepdims=True))
    return p / p.sum(0, keepdims=True)


def dice_per_class(
    pred: np.ndarray, truth: np.ndarray, classes: tuple[int, ...] = (CSF, GM, WM)
) -> dict[int, float]:
    """Dice of each class value between two label volumes of the same shape."""
    out = {}
    for c in classes:
        a, b = pred == c, truth == c
        denom = a.sum() + b.sum()
        out[c] = float(2 * (a & b).sum() / denom) if denom else 1.0
    return out
