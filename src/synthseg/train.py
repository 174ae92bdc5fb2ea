"""``train(cfg)``: build the DataModule, the model and the Trainer from a composed config, fit and test.

Kept apart from the Hydra wrapper so that tests call it on the real composed config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from synthseg import __version__
from synthseg.checkpoint import CheckpointError, check_init_args, safe_load
from synthseg.errors import InputError
from synthseg.utils.atomic import write_text_atomic
from synthseg.utils.ckpt_io import LastCheckpointAtEnd

log = logging.getLogger(__name__)


def find_last_checkpoint(search_root: Path) -> Path:
    """The newest ``last.ckpt`` under ``search_root`` (for ``ckpt_path=last``)."""
    candidates = sorted(search_root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise InputError(f"ckpt_path=last: no last.ckpt found under {search_root}")
    return candidates[-1]


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    ckpt = cfg.get("ckpt_path")
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        return str(find_last_checkpoint(Path(cfg.paths.log_dir) / cfg.task_name))
    if not Path(ckpt).is_file():
        raise InputError(f"ckpt_path={ckpt}: file not found")
    return str(ckpt)


def _shape(shape: Any) -> str:
    return "x".join(str(int(n)) for n in shape)


def check_checkpoint_fits(path: str, model: pl.LightningModule) -> None:
    """Refuse, in one line, a checkpoint that cannot be resumed into ``model``.

    Reads it with ``weights_only=True`` (a crafted pickle is refused before Lightning sees it) and compares
    its weights with the configured model's, so a checkpoint of another class count, resolution, width or
    model type is one error naming both values instead of a wall of size-mismatch lines.
    """
    ckpt = Path(path)
    obj = safe_load(ckpt)
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt}: not a training checkpoint (no state_dict)")
    # PGAN checkpoints record the generator's constructor arguments: name the setting itself.
    found_args = (obj.get("pgan") or {}).get("generator_init_args")
    generator = getattr(model, "generator", None)
    if isinstance(found_args, dict) and isinstance(getattr(generator, "init_args", None), dict):
        check_init_args(ckpt, found_args, generator.init_args)
    own = model.state_dict()

    # The output layer first: a different class count is the likeliest mismatch and the one to name.
    def differs(key: str) -> bool:
        return key in state and tuple(state[key].shape) != tuple(own[key].shape)

    outputs = ("head.weight", "head.bias", "class_weights")
    for key in sorted(own, key=lambda k: next((i for i, end in enumerate(outputs) if k.endswith(end)), 3)):
        if key.endswith(outputs) and differs(key) and state[key].shape[0] != own[key].shape[0]:
            raise CheckpointError(
                f"{ckpt}: checkpoint has {state[key].shape[0]} label classes ({key} {_shape(state[key].shape)}), "
                f"config asks for {own[key].shape[0]}"
            )
    for key in own:  # otherwise the first layer that differs, in the network's order
        if differs(key):
            raise CheckpointError(
                f"{ckpt}: checkpoint has {key} of shape {_shape(state[key].shape)}, the configured model has "
                f"{_shape(own[key].shape)} (a different width, channel count or resolution)"
            )
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{ckpt}: checkpoint does not fit the configured {type(model).__name__}: {len(missing)} weights "
            f"missing (e.g. {missing[:1]}), {len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )


def _build(node: Any, key: str, **kwargs: Any) -> Any:
    """``instantiate`` that turns a constructor's refusal of a setting into one line naming the config key.

    Hydra wraps every exception of a ``_target_`` in a multi-line ``InstantiationException``; an
    :class:`InputError` (bad data or setting) or a network's ``ValueError`` (impossible argument) is the
    user's to fix, so it becomes one :class:`InputError`, not a traceback.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, InputError):
            raise InputError(str(cause)) from None
        if isinstance(cause, ValueError):
            where = str(err).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(err) else key
            raise InputError(f"{where}: {cause}") from None
        raise


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        return
    try:
        os.link(src, dst)  # instant, and no second copy on disk
    except OSError:
        shutil.copy2(src, dst)


def keep_best_checkpoints_on_resume(callbacks: list[Any]) -> None:
    """Let a resumed run remember the best checkpoints of the run it continues.

    A resume writes into a new run folder; Lightning's ``ModelCheckpoint`` then reloads only
    ``best_model_path`` and forgets the scores, so the first validation after the resume becomes "best" even
    when it is worse than a checkpoint saved before the crash. Here the kept checkpoints are linked (or
    copied) into the new folder and the callback's state is rewritten to point there, so it reloads in full.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint

    for callback in callbacks:
        if not isinstance(callback, ModelCheckpoint) or callback.monitor is None:
            continue
        original = callback.load_state_dict

        def load_state_dict(state: dict[str, Any], cb: Any = callback, load: Any = original) -> None:
            old_dir, new_dir = state.get("dirpath"), cb.dirpath
            kept = {Path(path): score for path, score in (state.get("best_k_models") or {}).items()}
            if old_dir and new_dir and old_dir != new_dir and kept and all(p.is_file() for p in kept):
                moved = {str(p): str(Path(new_dir) / p.name) for p in kept}
                for old, new in moved.items():
                    _link_or_copy(Path(old), Path(new))
                state = {
                    **state,
                    "dirpath": new_dir,
                    "best_k_models": {moved[str(p)]: score for p, score in kept.items()},
                    "best_model_path": moved.get(state.get("best_model_path", ""), ""),
                    "kth_best_model_path": moved.get(state.get("kth_best_model_path", ""), ""),
                }
            load(state)

        callback.load_state_dict = load_state_dict


def _primitive_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


class ResultsWriter(pl.Callback):
    """Writes ``results.json`` from the process that ran fit or test, on global rank 0.

    Under ``ddp_spawn`` fit and test run in worker processes: only the metrics come back to the caller, not the
    data statistics or the model's per-subject test statistics, so the file is written where they exist.
    """

    def __init__(self, cfg: DictConfig, path: Path) -> None:
        self.config = OmegaConf.to_container(cfg, resolve=True)
        self.task_name = str(cfg.task_name)
        self.path = path
        self.metrics: dict[str, float] = {}

    def _write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.metrics.update(_primitive_metrics(trainer.callback_metrics))
        checkpoint = trainer.checkpoint_callback
        results = {
            "version": __version__,
            "task_name": self.task_name,
            "config": self.config,
            "data_stats": getattr(trainer.datamodule, "stats", {}),
            "best_checkpoint": getattr(checkpoint, "best_model_path", "") if checkpoint else "",
            "metrics": self.metrics,
        }
        details = getattr(pl_module, "results_details", None)
        if callable(details):
            results.update(details())
        write_text_atomic(self.path, json.dumps(results, indent=2, default=str))
        log.info("results written to %s", self.path)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write(trainer, pl_module)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and/or test the configured model; write ``results.json`` into the run's output folder.

    Returns:
        The metrics (``train/``, ``val/``, ``test/`` keys) as floats.
    """
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.get("torch_threads"):
        torch.set_num_threads(int(cfg.torch_threads))
    if cfg.get("float32_matmul_precision"):
        torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if "spawn" in str(cfg.trainer.get("strategy", "")):
        # Spawned DDP workers receive the model through shared memory; with the default file-descriptor
        # strategy PGAN's tensors fail to arrive ("unable to resize file"), with the file-system one they do.
        torch.multiprocessing.set_sharing_strategy("file_system")

    datamodule: pl.LightningDataModule = _build(cfg.data, "data", _convert_="all")
    model: pl.LightningModule = _build(cfg.model, "model", _convert_="partial")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    results_writer = ResultsWriter(cfg, output_dir / "results.json")
    callbacks.append(results_writer)
    callbacks.append(LastCheckpointAtEnd())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict[str, float] = {}
    ckpt_path = resolve_ckpt_path(cfg)
    if ckpt_path is not None:
        check_checkpoint_fits(ckpt_path, model)
        keep_best_checkpoints_on_resume(callbacks)
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(_primitive_metrics(trainer.callback_metrics))
        results_writer.metrics.update(metrics)  # carried into a spawned test process
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if cfg.get("test", False):
        test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
        trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt or None, weights_only=True)
        metrics.update(_primitive_metrics(trainer.callback_metrics))

    return metrics


def train_main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, and return the metric named by ``optimized_metric`` to sweepers."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
