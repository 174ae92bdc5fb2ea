"""Lightning checkpoint I/O that writes atomically (a crash mid-save never leaves a truncated checkpoint), a
callback that leaves ``last.ckpt`` holding the final state, and a ``ModelCheckpoint`` that keeps its best
checkpoints across a resume."""

from __future__ import annotations

import os
import shutil
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


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)  # instant, and no second copy on disk
    except OSError:
        shutil.copy2(src, dst)


class ResumableModelCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` that remembers the best checkpoints of the run it resumes.

    A resume writes into a new run folder; Lightning's ``ModelCheckpoint`` then reloads only
    ``best_model_path`` and forgets the scores, so the first validation after the resume becomes "best" even
    when it is worse than a checkpoint saved before the crash. Here the kept checkpoints are linked (or
    copied) into the new folder and the reloaded state points there, so it reloads in full.
    """

    @property
    def state_key(self) -> str:
        # Saved under Lightning's own name, so checkpoints of either class resume into the other.
        return super().state_key.replace(type(self).__qualname__, ModelCheckpoint.__qualname__, 1)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir, new_dir = state_dict.get("dirpath"), self.dirpath
        kept = {Path(path): score for path, score in (state_dict.get("best_k_models") or {}).items()}
        if (
            self.monitor
            and old_dir
            and new_dir
            and old_dir != new_dir
            and kept
            and all(p.is_file() for p in kept)
        ):
            moved = {str(p): str(Path(new_dir) / p.name) for p in kept}
            for old, new in moved.items():
                _link_or_copy(Path(old), Path(new))
            state_dict = {
                **state_dict,
                "dirpath": new_dir,
                "best_k_models": {moved[str(p)]: score for p, score in kept.items()},
                "best_model_path": moved.get(state_dict.get("best_model_path", ""), ""),
                "kth_best_model_path": moved.get(state_dict.get("kth_best_model_path", ""), ""),
            }
        super().load_state_dict(state_dict)


class RecordInCheckpoint(Callback):
    """Writes ``record`` (primitive values only: checkpoints load with ``weights_only=True``) into every
    checkpoint under ``key``: the settings that shape training, which a resume compares with its own config
    (``synthseg.train_checks.check_resume``)."""

    def __init__(self, key: str, record: dict[str, Any]) -> None:
        self.key = key
        self.record = dict(record)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[self.key] = dict(self.record)
