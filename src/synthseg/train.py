"""``train(cfg)``: build the DataModule, the model and the Trainer from a composed config, fit and test.

Kept apart from the Hydra wrapper so that tests call it on the real composed config.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from synthseg import __version__
from synthseg.errors import InputError
from synthseg.utils.atomic import write_text_atomic

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


def _primitive_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


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

    datamodule: pl.LightningDataModule = instantiate(cfg.data, _convert_="all")
    model: pl.LightningModule = instantiate(cfg.model, _convert_="partial")
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    metrics: dict[str, float] = {}
    ckpt_path = resolve_ckpt_path(cfg)
    if cfg.get("train", True):
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        metrics.update(_primitive_metrics(trainer.callback_metrics))
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if cfg.get("test", False):
        test_ckpt = best or (ckpt_path if not cfg.get("train", True) else None)
        trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt or None, weights_only=True)
        metrics.update(_primitive_metrics(trainer.callback_metrics))

    if trainer.is_global_zero:
        results = {
            "version": __version__,
            "task_name": cfg.task_name,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "data_stats": getattr(datamodule, "stats", {}),
            "best_checkpoint": best,
            "metrics": metrics,
        }
        details = getattr(model, "results_details", None)
        if callable(details):
            results.update(details())
        write_text_atomic(output_dir / "results.json", json.dumps(results, indent=2, default=str))
        log.info("results written to %s", output_dir / "results.json")
    return metrics


def train_main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, and return the metric named by ``optimized_metric`` to sweepers."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
