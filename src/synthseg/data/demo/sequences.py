"""The demo cohort's T1, T2 and FLAIR: painted from the same tissue and tumour maps as its T1c.

Each sequence has its own contrast (relative to white matter), its own bias field and noise, and draws
from its own random generator, so the T1c of a seed stays what it was before these sequences existed:

- T1: WM > GM > CSF; the tumour is hypointense and does not enhance;
- T2: CSF brightest, edema bright, WM < GM; necrosis fluid-bright;
- FLAIR: CSF suppressed, edema bright, WM < GM, bright periventricular caps at the ventricles' ends.

Now and then one sequence gets a slightly different skull-strip mask (one voxel eroded or dilated), as real
releases sometimes have.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

# Per sequence, mean intensity relative to white matter: tissue (CSF, GM, WM) and tumour by BraTS label
# (1 necrosis, 2 edema, 4 enhancing tumour).
CONTRASTS: dict[str, dict[str, Any]] = {
    "t1": {"tissue": (0.32, 0.72, 1.0), "tumor": {2: 0.7, 4: 0.66, 1: 0.4}, "caps": 0.0},
    "t2": {"tissue": (2.4, 1.4, 1.0), "tumor": {2: 1.9, 4: 1.5, 1: 2.1}, "caps": 0.0},
    "flair": {"tissue": (0.18, 1.25, 1.0), "tumor": {2: 1.95, 4: 1.45, 1: 0.8}, "caps": 0.55},
}
OTHER_SEQUENCES = tuple(CONTRASTS)  # the order they are made in
# Chance that a case has one sequence with a slightly different skull-strip mask.
MASK_CHANGE_CHANCE = 0.3


def periventricular_caps(csf: np.ndarray, mask: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """A soft (float32 in [0, 1]) map of the rims at the front and back ends of the lateral ventricles.

    Args:
        csf, mask: template CSF partial volume and brain mask (X, Y, Z; Y runs anterior-posterior).
        depth: distance to the brain's edge, voxels (deep CSF is ventricle, not sulcus).
    """
    ventricles = (csf > 0.5) & (depth > 15)
    if not ventricles.any():
        return np.zeros(csf.shape, np.float32)
    rim = ndimage.binary_dilation(ventricles, iterations=4) & ~ventricles & (mask > 0)
    ys = np.flatnonzero(ventricles.any((0, 2)))
    front, back = np.percentile(ys, [20, 80])
    y = np.arange(csf.shape[1])[None, :, None]
    caps = rim & ((y < front) | (y > back))
    return np.clip(ndimage.gaussian_filter(caps.astype(np.float32), 1.2) * 2.0, 0.0, 1.0)


def paint_sequences(
    rng: np.random.Generator,
    scanner: Any,
    t1: np.ndarray,
    tissue: tuple[np.ndarray, np.ndarray, np.ndarray],
    caps: np.ndarray,
    seg: np.ndarray,
    sub: tuple[slice, ...],
    brain: np.ndarray,
    smooth_field: Any,
) -> dict[str, np.ndarray]:
    """T1, T2 and FLAIR (int16, box shape) of one case.

    Args:
        rng: the generator of these sequences (not the case's own: the T1c does not change).
        scanner: the institution (``wm_level``, ``noise``, ``bias``).
        t1: the template's T1, warped (detail, remapped per sequence).
        tissue: warped CSF, GM and WM partial volumes (zero outside ``brain``).
        caps: warped :func:`periventricular_caps`.
        seg, sub: BraTS labels of the box and the sub-box holding the tumour.
        brain: the brain mask of the box (the T1c's).
        smooth_field: ``smooth_field(rng, shape, knots, amplitude)`` (the cohort's bias-field maker).
    """
    csf, gm, wm = tissue
    box = brain.shape
    changed = OTHER_SEQUENCES[int(rng.integers(3))] if rng.random() < MASK_CHANGE_CHANCE else None
    out = {}
    for seq in OTHER_SEQUENCES:
        contrast = CONTRASTS[seq]
        level = np.float32(scanner.wm_level * rng.uniform(0.8, 1.25))
        mu = np.array(contrast["tissue"], np.float32) * rng.uniform(0.95, 1.05, 3).astype(np.float32) * level
        model = mu[0] * csf + mu[1] * gm + mu[2] * wm
        # The template's T1 (CSF ~0.39, GM ~0.65, WM ~0.87) remapped to this sequence's levels adds detail.
        detail = np.interp(t1, [0.0, 0.39, 0.65, 0.87, 1.0], [0.0, *mu, mu[2] * 1.05]).astype(np.float32)
        image = 0.6 * model + 0.4 * detail
        if contrast["caps"]:
            image *= 1 + np.float32(contrast["caps"] * rng.uniform(0.7, 1.2)) * caps
        labels = seg[sub]
        part = image[sub]
        grain = ndimage.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), 1.5)
        texture = 1 + 0.08 * grain / (grain.std() + 1e-6)
        for label, ratio in contrast["tumor"].items():
            soft = ndimage.gaussian_filter((labels == label).astype(np.float32), 0.8)
            value = np.float32(ratio * rng.uniform(0.92, 1.08)) * level
            part = part * (1 - soft) + value * texture * soft
        image[sub] = part
        image *= np.exp(smooth_field(rng, box, 3, scanner.bias * rng.uniform(0.7, 1.4)))
        sigma = np.float32(scanner.noise * rng.uniform(0.8, 1.3) * level)
        n1 = rng.standard_normal(box, dtype=np.float32)
        n2 = rng.standard_normal(box, dtype=np.float32)
        image = np.sqrt((image + sigma * n1) ** 2 + (sigma * n2) ** 2)
        mask = brain
        if seq == changed:  # a slightly different skull strip: one voxel in or out
            grow = rng.random() < 0.5
            mask = ndimage.binary_dilation(brain) if grow else ndimage.binary_erosion(brain)
            # newly included voxels: dim, like the dura and CSF a looser strip keeps
            image = np.where(mask & ~brain, np.float32(0.3) * level, image)
        out[seq] = np.where(mask, np.clip(np.rint(image), 1, 32767), 0).astype(np.int16)
    return out
