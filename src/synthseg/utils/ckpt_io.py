"""Lightning checkpoint I/O that writes atomically (a crash mid-save never leaves a truncated checkpoint), and a
callback that leaves ``last.ckpt`` holding the final state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from synthseg.utils.atomic import atomic_path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to a temporary sibling, then renames it over the target (``last.ckpt`` stays loadable)."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)

    def load_checkpoint(
        self, path: Any, map_location: Any = "cpu", weights_only: bool | None = None
    ) -> dict[str, Any]:
        # Checkpoints hold only tensors and primitives: always load them that way.
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class LastCheckpointAtEnd(Callback):
    """Rewrites every ``ModelCheckpoint``'s ``last.ckpt`` when training ends, so it holds the final state.

    Lightning's ModelCheckpoint decides whether to refresh ``last.ckpt`` after the final validation from
    bookkeeping it does not checkpoint, so a resumed run could end with ``last.ckpt`` a few steps behind the
    weights it finished with (an uninterrupted run of the same config would not).
    """

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
                path = callback.format_checkpoint_name({}, callback.CHECKPOINT_NAME_LAST)
                trainer.save_checkpoint(path)
                callback.last_model_path = path
