"""The one writer of images to the logger: what a module's ``log_images()`` returns.

Every module prepares its images in one method, ``log_images() -> {tag: (H, W, 3) uint8}``; this callback
writes them after each validation (the U-Net and SPADE), and :func:`write_images` at each PGAN tick.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


def image_writer(trainer: pl.Trainer) -> Any | None:
    """The logger's image sink (TensorBoard's ``SummaryWriter``), or None when images go nowhere."""
    experiment = getattr(trainer.logger, "experiment", None) if trainer.logger is not None else None
    return experiment if hasattr(experiment, "add_image") else None


def write_images(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
    """Write ``pl_module.log_images()`` on global rank 0; not even asked for when there is no image sink."""
    writer = image_writer(trainer)
    log_images = getattr(pl_module, "log_images", None)
    if writer is None or not trainer.is_global_zero or not callable(log_images):
        return
    for tag, image in log_images().items():
        writer.add_image(tag, image, trainer.global_step, dataformats="HWC")


class ImageLogger(pl.Callback):
    """Writes the module's ``log_images()`` after every validation (not the sanity check)."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            write_images(trainer, pl_module)
