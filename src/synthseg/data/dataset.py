"""Slice datasets over memory-mapped caches, with class reduction, normalization and resizing."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from synthseg.data.labels import reduce_labels, resize_labels

IMAGE_NORMS = ("paper", "tanh", "raw", "zscore")


def downsample_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Area (block-mean) downsampling of an (..., H, W) image by an integer factor."""
    if factor == 1:
        return image.astype(np.float32)
    *lead, h, w = image.shape
    blocks = image.reshape(*lead, h // factor, factor, w // factor, factor).astype(np.float32)
    return blocks.mean(axis=(-3, -1))


def zscore_brain(image: np.ndarray) -> np.ndarray:
    """Each channel of an (S, H, W) image to zero mean, unit std over its non-zero (brain) pixels; 0 outside."""
    brain = image > 0
    count = brain.sum(axis=(-2, -1), keepdims=True)
    safe = np.maximum(count, 1)
    mean = (image * brain).sum(axis=(-2, -1), keepdims=True) / safe
    var = (((image - mean) * brain) ** 2).sum(axis=(-2, -1), keepdims=True) / safe
    std = np.sqrt(var)
    return np.where(brain, (image - mean) / np.maximum(std, 1e-3 * np.maximum(mean, 1.0)), 0.0).astype(
        np.float32
    )


class SliceDataset(Dataset):
    """Slices from one or more (images, labels) memory-mapped arrays.

    Args:
        sources: list of (images (N, S, H, W) uint16 (or (N, H, W): one sequence), labels (N, H, W) uint8).
        items: (M, 2) int array of (source index, row) pairs this dataset serves.
        classes: 7, 4 or 2; labels are reduced on read.
        image_norm: "paper" (image / max - mean), "tanh" (image / max * 2 - 1), "raw" or "zscore" (each
            slice and sequence by the mean and std of its own non-zero (brain) pixels, 0 outside: per-image
            normalisation as nnU-Net does for MR, where scanners differ in grey-level scale).
        train_max, train_mean: normalization statistics of the training set in use, one per sequence served
            (a scalar for one).
        channels: per source, the indices of the sequences served, in order (None: all of each source).
        resolution: default output size (None: native); items may also ask for one per sample.
        one_hot: return labels as float one-hot (C, H, W) instead of int64 indices (H, W).
        augment: ``augment(image, label, rng) -> (image, label)`` applied at native size before resizing;
            its generator is seeded by (seed, epoch, index), so a resumed run sees the same augmentations.
        seed: seed of the augmentation generators.
        memo_bytes: without augmentation, slices resized to the dataset's own ``resolution`` (or to a smaller
            side an item asks for: PGAN's growing stages) are kept in memory after their first read, per
            (slice, side), when they fit in this many bytes in all (0: never), so later epochs skip the
            area/majority-vote resizing; what is served is the same either way.
        cases: per source, the case (subject) id of every row; items then carry ``"case"`` (test metrics are
            gathered per subject).
        slices: per source, the axial slice index of every row; items then carry ``"slice"`` (a subject's
            slices are stacked in order for 3-D HD95).
        positions: per source, the normalised axial position of every row in its case (0 first slice, 1
            last, NaN unknown; :meth:`synthseg.data.manifest.Manifest.positions`); items then carry
            ``"slice_position"`` (float32), what a slice-conditional GAN sees.

    Items are ``{"image": (S, H, W) float32, "label": (H, W) int64 or (C, H, W) float32, "index": int}``
    (plus ``"case"``: str with ``cases``, ``"slice"``: int with ``slices``, ``"slice_position"``: float32 with
    ``positions``, and ``"position"``: (2,) int64 epoch and sampler position when the
    key came from the sampler).
    """

    def __init__(
        self,
        sources: Sequence[tuple[np.ndarray, np.ndarray]],
        items: np.ndarray,
        *,
        classes: int,
        image_norm: str,
        train_max: float | Sequence[float],
        train_mean: float | Sequence[float],
        resolution: int | None = None,
        one_hot: bool = False,
        augment: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None,
        seed: int = 0,
        cases: Sequence[np.ndarray] | None = None,
        slices: Sequence[np.ndarray] | None = None,
        channels: Sequence[Sequence[int]] | None = None,
        memo_bytes: int = 1 << 30,
        positions: Sequence[np.ndarray] | None = None,
    ) -> None:
        if image_norm not in IMAGE_NORMS:
            raise ValueError(f"image_norm must be one of {IMAGE_NORMS}, got {image_norm!r}")
        self.sources = list(sources)
        self.items = np.asarray(items, dtype=np.int64).reshape(-1, 2)
        self.classes = classes
        self.image_norm = image_norm
        # float32, as the arithmetic always ran: a scalar for one sequence (any array shape normalises as
        # before), (S, 1, 1) for several (one value per channel of an (S, H, W) image)
        shape = (-1, 1, 1) if np.size(train_max) > 1 else ()
        self.train_max = np.asarray(train_max, np.float32).reshape(shape)
        self.train_mean = np.asarray(train_mean, np.float32).reshape(shape)
        self.channels = None if channels is None else [np.asarray(c, dtype=np.int64) for c in channels]
        self.resolution = resolution
        self.one_hot = one_hot
        self.augment = augment
        self.seed = seed
        self.cases = None if cases is None else [np.asarray(c) for c in cases]
        self.slices = None if slices is None else [np.asarray(s) for s in slices]
        self.positions = None if positions is None else [np.asarray(p, np.float32) for p in positions]
        self._memo: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None
        if augment is None and resolution and self.sources:
            images, labels = self.sources[0]
            served = (
                len(channels[0]) if channels is not None else (images.shape[1] if images.ndim == 4 else 1)
            )
            # Every smaller side a progressive schedule asks for adds at most a third more (1/4 + 1/16 + ...).
            if (
                labels.shape[-1] > resolution
                and len(self.items) * (4 * served + 1) * resolution**2 * 4 // 3 <= memo_bytes
            ):
                self._memo = {}

    def __len__(self) -> int:
        return len(self.items)

    def normalize(self, image: np.ndarray) -> np.ndarray:
        if self.image_norm == "paper":
            return image / self.train_max - self.train_mean
        if self.image_norm == "tanh":
            return image / self.train_max * 2.0 - 1.0
        if self.image_norm == "zscore":
            return zscore_brain(image)
        return image.copy()  # never the memoised array itself

    def __getitem__(self, key: int | tuple[int, ...]) -> dict[str, Any]:
        index, resolution, position = (
            (key, 0, None) if isinstance(key, int | np.integer) else (key[0], key[1], key[2:])
        )
        index = int(index)
        size = resolution or self.resolution
        # main process only: DataLoader workers would each fill a copy, and lose it with the worker
        memo = self._memo if self._memo is not None and size and size <= self.resolution else None
        if memo is not None and get_worker_info() is not None:
            memo = None
        if memo is not None and (index, size) in memo:
            image, label = memo[index, size]
        else:
            image, label = self._read(index, position, size)
            if memo is not None:
                memo[index, size] = (image, label)
        label_t = torch.from_numpy(reduce_labels(label, self.classes).astype(np.int64))
        out: dict[str, Any] = {
            "image": torch.from_numpy(np.ascontiguousarray(self.normalize(image), dtype=np.float32)),
            "label": torch.nn.functional.one_hot(label_t, self.classes).permute(2, 0, 1).float()
            if self.one_hot
            else label_t,
            "index": index,
        }
        source, row = self.items[index]
        if self.cases is not None:
            out["case"] = str(self.cases[source][row])
        if self.slices is not None:
            out["slice"] = int(self.slices[source][row])
        if self.positions is not None:
            out["slice_position"] = torch.tensor(self.positions[source][row])
        if position:
            out["position"] = torch.tensor(position, dtype=torch.int64)
        return out

    def slice_position(self, index: int) -> float:
        """Item ``index``'s normalised axial position (NaN unknown), without reading its slice."""
        if self.positions is None:
            raise ValueError("this dataset was built without positions")
        source, row = self.items[int(index)]
        return float(self.positions[source][row])

    def _read(self, index: int, position: Any, size: int | None) -> tuple[np.ndarray, np.ndarray]:
        """One item's (S, H, W) float32 image and (H, W) stored labels at side ``size`` (None: native)."""
        source, row = self.items[index]
        images, labels = self.sources[source]
        # (S, H, W): only the channels served are read from the memory map; an (N, H, W) source is one sequence
        picked = images[row] if images.ndim == 4 else images[row][None]
        if self.channels is not None:
            picked = picked[self.channels[source]]
        image = np.asarray(picked, dtype=np.float32)
        label = np.asarray(labels[row])
        if self.augment is not None:
            epoch = int(position[0]) if position else 0
            rng = np.random.default_rng((self.seed, epoch, index))
            image, label = self.augment(image, label, rng)
        size = size or image.shape[-1]
        if image.shape[-1] % size:
            raise ValueError(f"resolution {size} does not divide the slice size {image.shape[-1]}")
        return downsample_image(image, image.shape[-1] // size), resize_labels(label, size)
