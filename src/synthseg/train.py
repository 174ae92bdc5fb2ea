"""``synthseg train`` (``python train.py``): build the DataModule, the model and the Trainer, fit and test.

The command's shape (docs/contributing.md): the composed ``conf/train.yaml`` -> :class:`TrainSettings` (checked
before anything is built) -> :func:`run`, which writes the run folder and returns it. :func:`main` is the Hydra
entry; :func:`train` runs a composed config for Python callers and tests and gives back the metrics the run wrote
to ``results.json``. Neither changes the config it is given.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from synthseg import __version__
from synthseg.checkpoint import check_checkpoint_fits, resolve_ckpt_path
from synthseg.errors import InputError
from synthseg.models.fastpaths import RecordFastPaths, resolve_fast_paths, take_auto
from synthseg.settings import Settings
from synthseg.train_checks import RESUME_RECORD, check_train, check_train_inputs, dataset_size, resume_record
from synthseg.utils.atomic import write_text_atomic
from synthseg.utils.ckpt_io import LastCheckpointAtEnd, RecordInCheckpoint
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
            # the node is instantiated on its own: its full_key is relative to it (generator -> model.generator)
            inner = str(err).rsplit("full_key: ", 1)[-1].strip() if "full_key: " in str(err) else ""
            where = f"{key}.{inner}" if inner and not inner.startswith(f"{key}.") else inner or key
            raise InputError(f"{where}: {cause}") from None
        raise


def _primitive_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}


class ResultsWriter(pl.Callback):
    """Writes ``results.json`` from the process that ran fit or test, on global rank 0.

    Under ``ddp_spawn`` fit and test run in worker processes: only the metrics come back to the caller, not the
    data statistics or the model's per-subject test statistics, so the file is written where they exist.
    """

    def __init__(self, config: dict[str, Any], task_name: str, path: Path) -> None:
        self.config = config
        self.task_name = task_name
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


@dataclass(frozen=True)
class TrainSettings(Settings):
    """``conf/train.yaml`` as composed (its defaults list picks data, model, trainer, callbacks, logger, paths),
    every interpolation resolved.

    The nodes Hydra instantiates stay mappings: their keys are the arguments of their ``_target_`` classes
    (``conf/model/unet.yaml`` and so on). Build it with :meth:`from_config` from a composed config, which is left
    as it is; :func:`synthseg.train_checks.check_train` runs here, before any run folder exists.
    """

    data: dict[str, Any]
    model: dict[str, Any]
    trainer: dict[str, Any]
    paths: dict[str, Any]
    callbacks: dict[str, Any] | None = None
    logger: dict[str, Any] | None = None
    task_name: str = "unet"
    model_name: str = "unet"
    seed: int = 0
    mix_name: str | None = None  # the Table 1 row (conf/mix/), recorded in results.json
    train: bool = True
    test: bool = True
    ckpt_path: str | None = None
    optimized_metric: str | None = None
    float32_matmul_precision: str | None = None
    torch_threads: int | None = None
    fastpath: dict[str, Any] | None = None  # how auto measures (conf/train.yaml, docs/hardware.md)

    def __post_init__(self) -> None:
        self.check()  # the seed's range is one of the training checks (their message, not the base's)

    def check(self) -> None:
        check_train(self.seed, self.model, self.data, self.trainer, self.logger, self.train)

    def check_inputs(self) -> None:
        """The datasets and the checkpoint to resume, before any run folder exists (``run()`` calls it first;
        ``synthseg train`` before Hydra makes the run folder): :func:`synthseg.train_checks.check_train_inputs`."""
        check_train_inputs(
            self.data, self.model, self.ckpt_path, Path(self.paths["log_dir"]) / self.task_name
        )


def read_metrics(output_dir: str | Path) -> dict[str, float]:
    """The metrics a run wrote to ``<output_dir>/results.json`` (empty before it is written)."""
    path = Path(output_dir) / "results.json"
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text()).get("metrics") or {})


def run(settings: TrainSettings) -> Path:
    """Fit and/or test the configured model; write ``results.json`` into the run's output folder.

    Returns:
        The run folder (``paths.output_dir``): ``results.json`` (the resolved config, data statistics, best
        checkpoint, the ``train/``, ``val/`` and ``test/`` metrics), checkpoints and the loggers' files.
    """
    settings.check_inputs()
    # Switches left to measurement (auto) take their faithful values first: the model is built on those.
    nodes = OmegaConf.create(
        {"trainer": settings.trainer, "model": settings.model, "fastpath": settings.fastpath or {}}
    )
    auto = take_auto(nodes)
    # bf16 / torch.compile asked for where they cannot run: fp32 / eager, said once (on copies of the nodes)
    trainer_node, model_node, _ = apply_fallbacks(nodes.trainer, nodes.model)
    assert model_node is not None
    pl.seed_everything(settings.seed, workers=True)
    if settings.torch_threads:
        torch.set_num_threads(int(settings.torch_threads))
    if settings.float32_matmul_precision:
        torch.set_float32_matmul_precision(settings.float32_matmul_precision)
    output_dir = Path(settings.paths["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    if "spawn" in str(trainer_node.get("strategy", "")):
        # Spawned DDP workers receive the model through shared memory; with the default file-descriptor
        # strategy PGAN's tensors fail to arrive ("unable to resize file"), with the file-system one they do.
        torch.multiprocessing.set_sharing_strategy("file_system")

    datamodule: pl.LightningDataModule = _build(settings.data, "data", _convert_="all")
    model: pl.LightningModule = _build(model_node, "model", _convert_="partial")
    ckpt_path = resolve_ckpt_path(settings.ckpt_path, Path(settings.paths["log_dir"]) / settings.task_name)
    # A resumed run keeps the fast paths its checkpoint recorded; else measured (or this machine's cache).
    recorded = check_checkpoint_fits(ckpt_path, model).get("fastpath") if ckpt_path is not None else None
    chosen = OmegaConf.create({"trainer": trainer_node, "model": model_node, "fastpath": nodes.fastpath})
    choice = resolve_fast_paths(
        chosen, auto, model, int(settings.data["batch_size"]), _probe_size(settings.data), recorded
    )
    if choice is not None:  # the chosen values, so results.json and the Trainer carry them
        trainer_node = OmegaConf.to_container(chosen.trainer, resolve=True)
        model_node = OmegaConf.to_container(chosen.model, resolve=True)
    callbacks = [instantiate(c) for c in (settings.callbacks or {}).values() if c and "_target_" in c]
    config = {**dataclasses.asdict(settings), "trainer": trainer_node, "model": model_node}
    results_writer = ResultsWriter(config, settings.task_name, output_dir / "results.json")
    callbacks.append(results_writer)
    if choice is not None:
        results_writer.extra["fastpath"] = choice.to_json()
        callbacks.append(RecordFastPaths(choice))
    callbacks.append(LastCheckpointAtEnd())
    callbacks.append(RecordInCheckpoint(RESUME_RECORD, resume_record(model_node, settings.data)))
    loggers = [instantiate(c) for c in (settings.logger or {}).values() if c and "_target_" in c]
    extra: dict[str, Any] = {}
    if trainer_node.get("enable_progress_bar", True) and not stdout_is_terminal():
        callbacks.append(EpochLines(output_dir.name if _shared_stdout else ""))
        extra["enable_progress_bar"] = False
    trainer: pl.Trainer = instantiate(trainer_node, callbacks=callbacks, logger=loggers or False, **extra)

    if settings.train:
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
        results_writer.metrics.update(_primitive_metrics(trainer.callback_metrics))  # into a spawned test
    best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
    if settings.test:
        test_ckpt = best or (ckpt_path if not settings.train else None)
        trainer.test(model=model, datamodule=datamodule, ckpt_path=test_ckpt or None, weights_only=True)
    return output_dir


def train(cfg: DictConfig) -> dict[str, float]:
    """Run a composed ``train`` config (Python callers, tests): :func:`run` on its :class:`TrainSettings`.

    Returns:
        The metrics the run wrote to ``results.json`` (``train/``, ``val/``, ``test/`` keys) as floats.
    """
    return read_metrics(run(TrainSettings.from_config(cfg)))


def main(cfg: DictConfig) -> float | None:
    """Hydra entry of ``synthseg train``: train, and return the metric named by ``optimized_metric`` to
    sweepers."""
    settings = TrainSettings.from_config(cfg)
    output_dir = run(settings)
    return read_metrics(output_dir).get(settings.optimized_metric) if settings.optimized_metric else None


def _probe_size(data: dict[str, Any]) -> int:
    """The slice side a training step sees: ``data.resolution``, else the dataset's (for ``auto``)."""
    if data.get("resolution"):
        return int(data["resolution"])
    root = data.get("root")
    return (dataset_size(Path(str(root))) if root else None) or 256
