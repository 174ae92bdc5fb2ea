"""The progressive-growing schedule of the mask GAN, counted in images shown (official TrainingSchedule).

Starting at ``initial_resolution``, each resolution trains stable for ``stable_kimg`` and then the next one
fades in for ``transition_kimg``; the minibatch and the tick length depend on the current resolution. Plain
Python: the trainer (:mod:`synthseg.models.pgan`) and generate-masks (for checkpoints that predate the
recorded stage) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# Official one-GPU presets (images per minibatch, kimg per tick), by resolution.
PAPER_BATCH_SIZES: dict[int, int] = {4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8}
PAPER_TICK_KIMG: dict[int, float] = {4: 160, 8: 140, 16: 120, 32: 100, 64: 80, 128: 60, 256: 40}
DEFAULT_BATCH_SIZE = 16  # official minibatch_base, for resolutions missing from the table
DEFAULT_TICK_KIMG = 160.0  # official tick_kimg_base
# ProgressiveSchedule's arguments besides the target resolution (PGAN's hyperparameters of the same names).
SCHEDULE_SETTINGS = ("initial_resolution", "stable_kimg", "transition_kimg", "batch_sizes", "tick_kimg")


# -------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class GrowthStage:
    """Where training stands after ``images`` images: the official TrainingSchedule's values."""

    images: int
    lod: float  # level of detail: log2(target / resolution), fractional while fading in
    resolution: int  # current (largest active) resolution
    alpha: float  # fade-in of ``resolution``: 0 just started, 1 done
    batch_size: int
    tick_kimg: float

    @property
    def kimg(self) -> float:
        return self.images / 1000.0

    @property
    def phase(self) -> tuple[int, int]:
        """Changes exactly when a resolution starts or ends its fade-in (the Adam reset points)."""
        return math.floor(self.lod), math.ceil(self.lod)


class ProgressiveSchedule:
    """The progressive-growing schedule in images shown.

    Args:
        target_resolution: final resolution (power of two).
        initial_resolution: first resolution (official 4).
        stable_kimg: kimg of stable training per resolution (official lod_training_kimg 600).
        transition_kimg: kimg of each fade-in (official lod_transition_kimg 600).
        batch_sizes: minibatch per resolution (missing ones: 16, the official base).
        tick_kimg: tick length per resolution (missing ones: 160 kimg, the official base).
    """

    def __init__(
        self,
        target_resolution: int,
        initial_resolution: int = 4,
        stable_kimg: float = 600.0,
        transition_kimg: float = 600.0,
        batch_sizes: Mapping[int, int] | None = None,
        tick_kimg: Mapping[int, float] | None = None,
    ) -> None:
        for name, res in (
            ("target_resolution", target_resolution),
            ("initial_resolution", initial_resolution),
        ):
            if res < 4 or res & (res - 1):
                raise ValueError(f"{name} must be a power of two >= 4, got {res}")
        if initial_resolution > target_resolution:
            raise ValueError(f"initial_resolution {initial_resolution} exceeds target {target_resolution}")
        if stable_kimg < 0 or transition_kimg < 0 or stable_kimg + transition_kimg <= 0:
            raise ValueError(
                f"stable_kimg/transition_kimg must be >= 0 with a positive sum, got "
                f"{stable_kimg}/{transition_kimg}"
            )
        self.target_log2 = int(math.log2(target_resolution))
        self.initial_log2 = int(math.log2(initial_resolution))
        self.stable_kimg = float(stable_kimg)
        self.transition_kimg = float(transition_kimg)
        self.batch_sizes = {int(k): int(v) for k, v in (batch_sizes or PAPER_BATCH_SIZES).items()}
        self.tick_kimg = {int(k): float(v) for k, v in (tick_kimg or PAPER_TICK_KIMG).items()}
        if any(v <= 0 for v in self.batch_sizes.values()) or any(v <= 0 for v in self.tick_kimg.values()):
            raise ValueError("batch sizes and tick lengths must be positive")

    def at(self, images: int) -> GrowthStage:
        """The stage after ``images`` images have been shown."""
        # Whole images, not float kimg, so phase boundaries fall exactly where they are configured.
        stable, transition = round(self.stable_kimg * 1000), round(self.transition_kimg * 1000)
        phase, within = divmod(int(images), stable + transition)
        lod = float(self.target_log2 - self.initial_log2 - phase)
        if transition > 0:
            lod -= max(within - stable, 0) / transition
        lod = max(lod, 0.0)
        resolution = 2 ** (self.target_log2 - math.floor(lod))
        alpha = 1.0 - (lod - math.floor(lod))
        return GrowthStage(
            images=int(images),
            lod=lod,
            resolution=resolution,
            alpha=alpha,
            batch_size=self.batch_sizes.get(resolution, DEFAULT_BATCH_SIZE),
            tick_kimg=self.tick_kimg.get(resolution, DEFAULT_TICK_KIMG),
        )
