"""A resumable, seeded batch sampler whose batch size and resolution may change while training runs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.distributed as dist

# One item of a batch: (dataset index, resolution or 0 for native, epoch, position after this batch).
SampleKey = tuple[int, int, int, int]


class ResumableBatchSampler:
    """Yields global batches of a seeded per-epoch permutation, sharded over distributed ranks.

    The state is (epoch, position): the number of samples of the current epoch's permutation consumed.
    Each item carries the position *after* its batch, so the consumer can record exactly what was used
    (prefetching workers run ahead of training). ``endless=True`` chains epochs forever (PGAN counts
    images shown, not epochs).

    Args:
        num_items: dataset length.
        batch_size: global batch size (all ranks together); each rank gets ``batch_size / world_size``.
        seed: permutation seed; epoch ``e`` uses ``seed + e``.
        shuffle: permute each epoch (False: sequential order).
        drop_last: drop a final incomplete batch (not used with ``endless``).
        endless: never stop; batches run across epoch boundaries.
        resolution: resolution passed to the dataset with each index (0: native).
    """

    def __init__(
        self,
        num_items: int,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        endless: bool = False,
        resolution: int = 0,
    ) -> None:
        if num_items <= 0:
            raise ValueError(f"the sampler needs at least one item, got {num_items}")
        self.num_items = num_items
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.endless = endless
        self.resolution = resolution
        self.epoch = 0
        self.position = 0
        self._resuming = False
        self.set_batch_size(batch_size)

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def set_batch_size(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.batch_size = int(batch_size)

    def set_resolution(self, resolution: int) -> None:
        self.resolution = int(resolution)

    def _permutation(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng(self.seed + epoch).permutation(self.num_items)

    def __len__(self) -> int:
        if self.endless:
            raise TypeError("an endless sampler has no length")
        full, rest = divmod(self.num_items, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self) -> Iterator[list[SampleKey]]:
        rank, world = self._rank_world()
        if self.position and not self._resuming:
            # The previous epoch was cut short by its consumer (e.g. Lightning's limit_train_batches): a new
            # iteration is a new epoch. Only a restored state continues mid-epoch.
            self.epoch, self.position = self.epoch + 1, 0
        self._resuming = False
        epoch, position = self.epoch, self.position
        perm = self._permutation(epoch)
        while True:
            if position >= self.num_items:
                if not self.endless:
                    break
                epoch, position, perm = epoch + 1, 0, self._permutation(epoch + 1)
            batch_size = self.batch_size
            if batch_size % world:
                raise ValueError(f"global batch size {batch_size} is not divisible by {world} processes")
            take = perm[position : position + batch_size]
            new_epoch, new_position = epoch, position + len(take)
            while self.endless and len(take) < batch_size:
                # Complete the batch from the following epochs' permutations (the dataset may be smaller
                # than one batch).
                new_epoch, perm = new_epoch + 1, self._permutation(new_epoch + 1)
                new_position = min(batch_size - len(take), self.num_items)
                take = np.concatenate([take, perm[:new_position]])
            if not self.endless and len(take) < batch_size and self.drop_last:
                break
            epoch, position = new_epoch, new_position
            shard = take[rank::world]
            yield [(int(i), self.resolution, epoch, position) for i in shard]
        # A finite epoch ended: the next iteration starts the next epoch.
        self.epoch, self.position = epoch + 1, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "resolution": self.resolution,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self.batch_size = int(state.get("batch_size", self.batch_size))
        self.resolution = int(state.get("resolution", self.resolution))
        self._resuming = True

    def mark_consumed(self, epoch: int, position: int) -> None:
        """Record that training consumed the batch that ended at (epoch, position)."""
        if not self.endless and position >= self.num_items:
            epoch, position = epoch + 1, 0
        self.epoch, self.position = int(epoch), int(position)
