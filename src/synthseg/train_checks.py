"""Up-front checks of a composed ``train`` config: one line naming the key, before any work or write.

The networks, optimizers and the DataModule are built by Hydra from ``_target_`` nodes, so their arguments
arrive untyped: a string learning rate or batch size, or a size the data cannot serve, would otherwise fail
minutes later as a traceback from deep inside torch or Lightning. :func:`check_train_config` runs first in
:func:`synthseg.train.train`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from synthseg.errors import InputError
from synthseg.settings import MAX_SEED

# Optimizer nodes of each model: the U-Net's one, the GANs' two.
OPTIMIZER_KEYS = ("optimizer", "optimizer_g", "optimizer_d")


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_optimizers(model: dict[str, Any]) -> None:
    for name in OPTIMIZER_KEYS:
        node = model.get(name)
        if not isinstance(node, dict):
            continue
        lr = node.get("lr")
        if lr is not None and (not _number(lr) or lr <= 0):
            raise InputError(f"model.{name}.lr must be a positive number, got {lr!r}")
        decay = node.get("weight_decay")
        if decay is not None and (not _number(decay) or decay < 0):
            raise InputError(f"model.{name}.weight_decay must be a non-negative number, got {decay!r}")


def _check_data_numbers(data: dict[str, Any]) -> None:
    batch = data.get("batch_size")
    if not _integer(batch):
        raise InputError(f"data.batch_size must be an integer, got {batch!r}")
    eval_batch = data.get("eval_batch_size")
    if eval_batch is not None and (not _integer(eval_batch) or eval_batch < 1):
        raise InputError(f"data.eval_batch_size must be a positive integer or null, got {eval_batch!r}")
    workers = data.get("num_workers", 0)
    if not _integer(workers) or workers < 0:
        raise InputError(f"data.num_workers must be a non-negative integer, got {workers!r}")
    resolution = data.get("resolution")
    if resolution is not None and not _integer(resolution):
        raise InputError(f"data.resolution must be an integer or null, got {resolution!r}")


def dataset_size(root: Path) -> int | None:
    """The slice side length a dataset folder records in ``stats.json`` (None: not readable here; the
    DataModule reports a missing or broken folder itself)."""
    try:
        size = json.loads((root / "stats.json").read_text()).get("size")
    except (OSError, ValueError, AttributeError):
        return None
    return size if _integer(size) else None


def _power_of_two(n: int) -> bool:
    return n >= 4 and not n & (n - 1)


def _check_sizes(data: dict[str, Any]) -> None:
    """The prepared slices, the synthetic ones and ``data.resolution`` must fit together."""
    resolution = data.get("resolution")
    root = data.get("root")
    sources: list[tuple[str, Path]] = [("data.root", Path(root))] if isinstance(root, str) else []
    synthetic = data.get("synthetic")
    if isinstance(synthetic, dict) and synthetic.get("count") and isinstance(synthetic.get("root"), str):
        sources.append(("data.synthetic.root", Path(synthetic["root"])))
    sizes = [(key, path, dataset_size(path)) for key, path in sources]
    sizes = [(key, path, size) for key, path, size in sizes if size is not None]
    for key, path, size in sizes:
        if resolution is None and not _power_of_two(size):
            raise InputError(
                f"{key}={path}: slices are {size}x{size}; training needs a power of two "
                f"(re-run `synthseg prepare` with size={1 << max(2, (size - 1).bit_length())}, or set data.resolution)"
            )
        if resolution is not None and resolution > size:
            raise InputError(
                f"data.resolution={resolution} is larger than the {size}x{size} slices of {key}={path} "
                f"(slices are only downsampled)"
            )
    if resolution is None and len({size for _, _, size in sizes}) > 1:
        listed = ", ".join(f"{key}={path} is {size}x{size}" for key, path, size in sizes)
        raise InputError(
            f"training slices differ in size ({listed}): set data.resolution to at most the smallest"
        )


def _check_trainer(cfg: dict[str, Any]) -> None:
    trainer = cfg.get("trainer") or {}
    epochs = trainer.get("max_epochs")
    if epochs is not None and (not _integer(epochs) or epochs < -1):
        raise InputError(f"trainer.max_epochs must be a positive integer (or -1 for PGAN), got {epochs!r}")
    target = str((cfg.get("model") or {}).get("_target_", ""))
    stops_itself = target.endswith(".PGAN")  # PGAN ends at total_kimg and sets max_epochs=-1 on purpose
    bounded = (trainer.get("max_steps") or -1) > 0 or trainer.get("max_time") or trainer.get("fast_dev_run")
    if epochs == -1 and not stops_itself and not bounded:
        raise InputError(
            f"trainer.max_epochs=-1 would train {target.rsplit('.', 1)[-1] or 'this model'} forever: "
            f"set a positive number of epochs (only PGAN stops itself, at model.total_kimg)"
        )


def check_train_config(cfg: DictConfig | dict[str, Any]) -> None:
    """Refuse a training config that cannot work, before anything is built or written.

    Raises:
        InputError: one line naming the key (and the dataset folder for size problems).
    """
    # Only the nodes checked here are resolved: the paths may use Hydra's run-time resolvers.
    plain: dict[str, Any] = {}
    for key in ("model", "data", "trainer"):
        node = cfg.get(key)
        plain[key] = (
            OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node or {}
        )
    seed = cfg.get("seed")
    if not _integer(seed) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer between 0 and {MAX_SEED}, got {seed!r}")
    _check_optimizers(plain["model"])
    _check_data_numbers(plain["data"])
    _check_sizes(plain["data"])
    _check_trainer(plain)
