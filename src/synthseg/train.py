"""``train(cfg)``: build the DataModule, the model and the Trainer from a composed config, fit and test.

Kept apart from the Hydra wrapper so that tests call it on the real composed config.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from synthseg import __version__
from synthseg.checkpoint import check_checkpoint_fits, resolve_ckpt_path
from synthseg.errors import InputError
from synthseg.models.fastpaths import RecordFastPaths, resolve_fast_paths, take_auto
from synthseg.train_checks import check_train_config, dataset_size
from synthseg.utils.atomic import write_text_atomic
from synthseg.utils.ckpt_io import LastCheckpointAtEnd
from synthseg.utils.fastpath import apply_fallbacks

log = logging.getLogger(__name__)


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


# (config path of a network's channel count, what it counts) filled from data.sequences when null.
CHANNEL_KEYS = (
    ("model.generator.output_nc", "SPADE generator outputs"),
    ("model.discriminator.output_nc", "SPADE discriminator image channels"),
    ("model.net.in_channels", "U-Net input channels"),
)


def fill_channels(cfg: DictConfig) -> None:
    """Set the networks' image channels to ``len(data.sequences)`` where the config leaves them ``null``.

    The user names the sequences once (``data.sequences``); an explicit count that disagrees with them is one
    line naming both keys.
    """
    sequences = list(OmegaConf.select(cfg, "data.sequences", default=None) or ["t1c"])
    for key, what in CHANNEL_KEYS:
        node_key, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, node_key, default=None)
        if not isinstance(node, DictConfig) or leaf not in node:
            continue
        value = node[leaf]
        if value is None:
            with open_dict(node):
                node[leaf] = len(sequences)
        elif int(value) != len(sequences):
            raise InputError(
                f"{key}={value} ({what}) disagrees with data.sequences={sequences} ({len(sequences)} "
                f"sequences): set {key}=null to follow data.sequences"
            )


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
        self.extra: dict[str, Any] = {}  # further top-level entries (the fast paths auto chose)

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
            **self.extra,
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


# Set in a process whose stdout other processes write to as well (the demo's stages side by side): two
# progress bars redrawing one terminal are unreadable, lines naming their run are not.
_shared_stdout = False


def share_stdout() -> None:
    """This process shares its stdout with others: one line per epoch naming the run, no progress bars."""
    global _shared_stdout
    _shared_stdout = True


def stdout_is_terminal() -> bool:
    """Whether stdout is a terminal this process has to itself (a progress bar's frames only make sense there)."""
    isatty = getattr(sys.stdout, "isatty", None)
    return not _shared_stdout and bool(isatty and isatty())


class EpochLines(pl.Callback):
    """One line per training epoch on stdout, in place of the progress bar when stdout is not a terminal.

    Lightning's bar redraws itself with carriage returns: in a log file (``synthseg demo > log``) that is
    megabytes of frames. PGAN's single endless epoch prints nothing here; its tick line is the log's line.
    """

    def __init__(self, label: str = "") -> None:
        self._start = time.perf_counter()
        self._prefix = f"{label}: " if label else ""

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = {
            k: v
            for k, v in _primitive_metrics(trainer.progress_bar_metrics).items()
            if not k.endswith("_step")
        }
        values = "".join(f"  {k.removesuffix('_epoch')} {v:.4g}" for k, v in sorted(shown.items()))
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        seconds = time.perf_counter() - self._start
        print(
            f"{self._prefix}epoch {trainer.current_epoch + 1}{total}{values}  ({seconds:.1f} s)", flush=True
        )


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit and/or test the configured model; write ``results.json`` into the run's output folder.

    Returns:
        The metrics (``train/``, ``val/``, ``test/`` keys) as floats.
    """
    check_train_config(cfg)  # before anything is built or written
    auto = take_auto(cfg)  # switches left to measurement: the model is built on the faithful values first
    apply_fallbacks(cfg)  # bf16 / torch.compile asked for where they cannot run: fp32 / eager, said once
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

    fill_channels(cfg)
    datamodule: pl.LightningDataModule = _build(cfg.data, "data", _convert_="all")
    model: pl.LightningModule = _build(cfg.model, "model", _convert_="partial")
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir) / cfg.task_name)
    # A resumed run keeps the fast paths its checkpoint recorded; else measured (or this machine's cache).
    recorded = check_checkpoint_fits(ckpt_path, model).get("fastpath") if ckpt_path is not None else None
    choice = resolve_fast_paths(cfg, auto, model, int(cfg.data.batch_size), _probe_size(cfg), recorded)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c and "_target_" in c]
    results_writer = ResultsWriter(cfg, output_dir / "results.json")
    callbacks.append(results_writer)
    if choice is not None:
        results_writer.extra["fastpath"] = choice.to_json()
        callbacks.append(RecordFastPaths(choice))
    callbacks.append(LastCheckpointAtEnd())
    loggers = [instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
    extra: dict[str, Any] = {}
    if cfg.trainer.get("enable_progress_bar", True) and not stdout_is_terminal():
        callbacks.append(EpochLines(output_dir.name if _shared_stdout else ""))
        extra["enable_progress_bar"] = False
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, **extra)

    metrics: dict[str, float] = {}
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


def _probe_size(cfg: DictConfig) -> int:
    """The slice side a training step sees: ``data.resolution``, else the dataset's (for ``auto``)."""
    resolution = cfg.data.get("resolution")
    if resolution:
        return int(resolution)
    root = cfg.data.get("root")
    return (dataset_size(Path(str(root))) if root else None) or 256


def train_main(cfg: DictConfig) -> float | None:
    """Hydra entry: train, and return the metric named by ``optimized_metric`` to sweepers."""
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    return metrics.get(name) if name else None
