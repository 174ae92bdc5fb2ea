"""Small image helpers for TensorBoard grids and PNG figures."""

from __future__ import annotations

import numpy as np


def to_gray_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W) image of any range -> (H, W, 3) uint8, scaled to its own min..max."""
    image = np.asarray(image, dtype=np.float32)
    lo, hi = float(image.min()), float(image.max())
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    return np.repeat((scaled * 255 + 0.5).astype(np.uint8)[..., None], 3, axis=-1)


def grid(rows: list[list[np.ndarray]], pad: int = 2) -> np.ndarray:
    """Tile equally sized (H, W, 3) uint8 tiles into one (rows*H, cols*W, 3) image with ``pad`` pixels of gap."""
    if not rows or not rows[0]:
        raise ValueError("grid needs at least one tile")
    h, w, _ = rows[0][0].shape
    cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (h + pad) - pad, cols * (w + pad) - pad, 3), 32, dtype=np.uint8)
    for i, row in enumerate(rows):
        for j, tile in enumerate(row):
            out[i * (h + pad) : i * (h + pad) + h, j * (w + pad) : j * (w + pad) + w] = tile
    return out
