"""What the three LightningModules share: their data summary, DDP settings, and the one image writer.

- :func:`data_summary`: models learn about their data from one typed summary (the model side of the
  model-data contract).
- :func:`allow_unused_parameters`: DDP settings the GAN modules need, applied from their ``setup()``.
- :func:`set_hparams`: hyperparameters changed after construction (the fast paths ``auto`` chose).
- :class:`ImageLogger` / :func:`write_images`: every module prepares its images in one method,
  ``log_images() -> {tag: (H, W, 3) uint8}``; the callback writes them after each validation (the U-Net and
  SPADE), and :func:`write_images` at each PGAN tick.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy

from synthseg.data.datamodule import DataSummary


def data_summary(trainer: Any) -> DataSummary | None:
    """The trainer's DataModule summary, read once in a model's ``setup()``; None when the model is used
    without a DataModule that provides one (a bare ``trainer.fit(model, dataloader)``, notebooks)."""
    datamodule = getattr(trainer, "datamodule", None)
    summary = getattr(datamodule, "summary", None)
    return summary() if callable(summary) else None


def allow_unused_parameters(trainer: pl.Trainer) -> None:
    """Let DDP skip parameters a step does not use.

    A GAN step backpropagates through one network at a time (the other is toggled off), and PGAN's blocks of
    the resolutions not yet grown take no part at all, so DDP must not wait for their gradients. Called from
    ``setup()``, which runs before the strategy wraps the model.
    """
    strategy = trainer.strategy
    ddp_kwargs = getattr(strategy, "_ddp_kwargs", None)
    if isinstance(strategy, DDPStrategy) and isinstance(ddp_kwargs, dict):
        ddp_kwargs["find_unused_parameters"] = True


def set_hparams(module: pl.LightningModule, **values: Any) -> None:
    """Change recorded hyperparameters after construction (the fast paths ``auto`` chose): the checkpoint's
    ``hyper_parameters`` and the logger's copy both show the values the run used."""
    module.hparams.update(values)
    initial = getattr(module, "_hparams_initial", None)
    if initial is not None:
        initial.update(values)


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
