"""Classical data augmentation of (image, label map) training slices: the control arm of Table 1.

The paper's discussion asks whether synthetic pairs help more than ordinary augmentation would; this module
is that ordinary augmentation: random left-right flips, small rotations and scaling, and a smooth elastic
deformation. All geometric steps are composed into one coordinate map and applied with a single resampling,
linear for the image and nearest-neighbour for the labels, so labels never take values that were not there.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


class ClassicalAugmentation:
    """Random flips, rotations, scaling and elastic deformation of a 2-D slice and its label map.

    Each transform is drawn independently with its own probability. Points that map from outside the slice
    become background (image 0, label 0), which is what lies outside the head in a skull-stripped slice.

    Args:
        flip_prob: probability of a left-right flip (mirroring the hemispheres; up-down flips are not
            anatomically plausible for axial slices and are off by default).
        vertical_flip_prob: probability of an up-down flip.
        rotate_prob: probability of a rotation about the slice centre.
        max_rotation: largest rotation in degrees (uniform in [-max_rotation, max_rotation]).
        scale_prob: probability of isotropic scaling about the slice centre.
        scale_range: (smallest, largest) scale factor, drawn uniformly.
        elastic_prob: probability of an elastic deformation.
        elastic_magnitude: standard deviation of the displacement, as a fraction of the slice side.
        elastic_sigma: smoothness of the displacement field (Gaussian sigma), as a fraction of the side.

    Raises:
        ValueError: for probabilities outside [0, 1], negative magnitudes, or an empty or non-positive
            scale range.
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        vertical_flip_prob: float = 0.0,
        rotate_prob: float = 0.5,
        max_rotation: float = 10.0,
        scale_prob: float = 0.5,
        scale_range: tuple[float, float] = (0.9, 1.1),
        elastic_prob: float = 0.3,
        elastic_magnitude: float = 0.01,
        elastic_sigma: float = 0.05,
    ) -> None:
        probs = {
            "flip_prob": flip_prob,
            "vertical_flip_prob": vertical_flip_prob,
            "rotate_prob": rotate_prob,
            "scale_prob": scale_prob,
            "elastic_prob": elastic_prob,
        }
        for name, value in probs.items():
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if max_rotation < 0 or elastic_magnitude < 0 or elastic_sigma <= 0:
            raise ValueError(
                "max_rotation and elastic_magnitude must be >= 0 and elastic_sigma > 0, got "
                f"{max_rotation}, {elastic_magnitude}, {elastic_sigma}"
            )
        low, high = (float(v) for v in scale_range)
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {scale_range}")
        self.flip_prob = flip_prob
        self.vertical_flip_prob = vertical_flip_prob
        self.rotate_prob = rotate_prob
        self.max_rotation = max_rotation
        self.scale_prob = scale_prob
        self.scale_range = (low, high)
        self.elastic_prob = elastic_prob
        self.elastic_magnitude = elastic_magnitude
        self.elastic_sigma = elastic_sigma

    def __call__(
        self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Augment one slice.

        Args:
            image: (H, W) or (S, H, W) float32 image (S sequences move together).
            label: (H, W) uint8 label map.
            rng: the source of randomness (a seeded generator makes the result repeatable).

        Returns:
            (image (H, W) or (S, H, W) float32, label (H, W) uint8), new arrays.
        """
        if image.ndim not in (2, 3) or label.ndim != 2 or image.shape[-2:] != label.shape:
            raise ValueError(
                f"image and label must have equal 2-D shapes (the image may be (S, H, W)), got {image.shape} and "
                f"{label.shape}"
            )
        image = np.asarray(image, dtype=np.float32)
        label = np.asarray(label, dtype=np.uint8)
        # Flips are exact permutations: no resampling needed.
        if rng.random() < self.flip_prob:
            image, label = image[..., :, ::-1], label[:, ::-1]
        if rng.random() < self.vertical_flip_prob:
            image, label = image[..., ::-1, :], label[::-1, :]

        angle = 0.0
        scale = 1.0
        if rng.random() < self.rotate_prob:
            angle = math.radians(rng.uniform(-self.max_rotation, self.max_rotation))
        if rng.random() < self.scale_prob:
            scale = rng.uniform(*self.scale_range)
        elastic = rng.random() < self.elastic_prob
        if angle == 0.0 and scale == 1.0 and not elastic:
            return image.copy(), label.copy()

        h, w = label.shape
        centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
        # Output pixel -> input coordinate: the inverse of "rotate by angle, then scale by scale".
        cos, sin = math.cos(angle), math.sin(angle)
        dy, dx = yy - centre[0], xx - centre[1]
        src_y = (cos * dy - sin * dx) / scale + centre[0]
        src_x = (sin * dy + cos * dx) / scale + centre[1]
        if elastic:
            side = float(max(h, w))
            for coords in (src_y, src_x):
                field = ndimage.gaussian_filter(rng.uniform(-1.0, 1.0, (h, w)), self.elastic_sigma * side)
                std = float(field.std())
                if std > 0:
                    coords += field / std * (self.elastic_magnitude * side)
        coords = np.stack([src_y, src_x])
        channels = image.reshape(-1, h, w)  # every sequence through the same coordinates
        out_image = np.stack(
            [ndimage.map_coordinates(c, coords, order=1, mode="constant", cval=0.0) for c in channels]
        ).reshape(image.shape)
        out_label = ndimage.map_coordinates(label, coords, order=0, mode="constant", cval=0)
        return out_image.astype(np.float32), out_label.astype(np.uint8)
