"""DDP settings the GAN modules need, applied from their ``setup()``."""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.strategies import DDPStrategy


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
