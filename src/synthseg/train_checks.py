"""Up-front checks of a composed ``train`` config: one line naming the key, before any work or write.

The networks, optimizers and the DataModule are built by Hydra from ``_target_`` nodes, so their arguments
arrive untyped: a string learning rate or batch size, or a size the data cannot serve, would otherwise fail
minutes later as a traceback from deep inside torch or Lightning. :func:`check_train` runs when
``synthseg.train.TrainSettings`` is built, before :func:`synthseg.train.run` makes anything.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

from synthseg.data.labels import INDEX_ORDERS, LABEL_ENCODINGS
from synthseg.errors import InputError
from synthseg.models.pgan_augment import AUGMENTS
from synthseg.models.pgan_reals import ONEHOT_FAKES, ONEHOT_REALS
from synthseg.networks.position import CONDITION_STYLES, CONDITIONS
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


# PGAN's switches beyond the paper (docs/masks.md) and their choices.
PGAN_CHOICES = {
    "model.label_encoding": LABEL_ENCODINGS,
    "model.generator.index_order": tuple(INDEX_ORDERS),
    "model.onehot_fakes": ONEHOT_FAKES,
    "model.onehot_reals": ONEHOT_REALS,
    "model.condition": CONDITIONS,
    "model.discriminator.condition_style": CONDITION_STYLES,
    "model.augment": AUGMENTS,
}


def _check_pgan_switches(model: dict[str, Any]) -> None:
    if not str(model.get("_target_", "")).endswith(".PGAN"):
        return
    for key, allowed in PGAN_CHOICES.items():
        node: Any = model
        for part in key.split(".")[1:]:
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and node not in allowed:
            raise InputError(f"{key} must be one of {', '.join(allowed)}, got {node!r}")


def _check_finite(node: Any, key: str) -> None:
    """Every number of a config node is finite: NaN passes every range check and inf overflows later
    (PGAN ``model.total_kimg=inf`` was an OverflowError traceback)."""
    if isinstance(node, dict):
        for name, value in node.items():
            _check_finite(value, f"{key}.{name}")
    elif isinstance(node, list | tuple):
        for i, value in enumerate(node):
            _check_finite(value, f"{key}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise InputError(f"{key} must be a finite number, got {node}")


def _check_data_numbers(data: dict[str, Any]) -> None:
    batch = data.get("batch_size")
    if not _integer(batch):
        raise InputError(f"data.batch_size must be an integer, got {batch!r}")
    if batch < 1:
        raise InputError(f"data.batch_size must be positive, got {batch}")
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
    sizes = [(key, path, dataset_size(path)) for key, path in _dataset_roots(data)]
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


def _check_trainer(trainer: dict[str, Any], model: dict[str, Any], train: bool) -> None:
    epochs = trainer.get("max_epochs")
    if epochs is not None and (not _integer(epochs) or epochs < -1):
        raise InputError(f"trainer.max_epochs must be a positive integer (or -1 for PGAN), got {epochs!r}")
    if train and (epochs == 0 or trainer.get("max_steps") == 0):
        # Lightning trains nothing, then the untrained network was tested and its Dice error written.
        key = "max_epochs" if epochs == 0 else "max_steps"
        raise InputError(
            f"trainer.{key}=0 trains nothing: set a positive number (or train=false to only test a checkpoint)"
        )
    _check_accelerator(trainer)
    target = str(model.get("_target_", ""))
    stops_itself = target.endswith(".PGAN")  # PGAN ends at total_kimg and sets max_epochs=-1 on purpose
    bounded = (trainer.get("max_steps") or -1) > 0 or trainer.get("max_time") or trainer.get("fast_dev_run")
    if epochs == -1 and not stops_itself and not bounded:
        raise InputError(
            f"trainer.max_epochs=-1 would train {target.rsplit('.', 1)[-1] or 'this model'} forever: "
            f"set a positive number of epochs (only PGAN stops itself, at model.total_kimg)"
        )


def _check_accelerator(trainer: dict[str, Any]) -> None:
    """The accelerator the trainer asks for exists here (``trainer=gpu`` on a CPU-only machine was Hydra's
    "Error in call to target Trainer" block)."""
    import torch

    accelerator = str(trainer.get("accelerator") or "auto").lower()
    devices = trainer.get("devices")
    if accelerator in ("gpu", "cuda"):
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not available:
            raise InputError(
                f"trainer.accelerator={accelerator}: no CUDA GPU on this machine (use trainer=cpu, or "
                "trainer.accelerator=auto)"
            )
        if _integer(devices) and devices > available:
            raise InputError(f"trainer.devices={devices}: this machine has {available} CUDA GPU(s)")
    elif accelerator == "mps" and not torch.backends.mps.is_available():
        raise InputError(
            "trainer.accelerator=mps: Apple's MPS is not available on this machine (use trainer=cpu)"
        )


# (config path of a network's channel count, what it counts): each follows data.sequences in conf/model/.
CHANNEL_KEYS = (
    ("model.generator.output_nc", "SPADE generator outputs"),
    ("model.discriminator.output_nc", "SPADE discriminator image channels"),
    ("model.net.in_channels", "U-Net input channels"),
)


def _check_channels(model: dict[str, Any], data: dict[str, Any]) -> None:
    """A network's image channels set by hand must match ``data.sequences`` (conf/model/ derives them)."""
    sequences = data.get("sequences") or ["t1c"]
    sequences = [sequences] if isinstance(sequences, str) else list(sequences)
    for key, what in CHANNEL_KEYS:
        _, node_name, leaf = key.split(".")
        node = model.get(node_name)
        if not isinstance(node, dict) or leaf not in node:
            continue
        value = node[leaf]
        if not _integer(value) or value != len(sequences):
            raise InputError(
                f"{key}={value} ({what}) disagrees with data.sequences={sequences} ({len(sequences)} "
                f"sequences): leave {key} at its default ${{len:${{data.sequences}}}} to follow data.sequences"
            )


# The Python package each Lightning logger needs, by the logger's class name.
LOGGER_PACKAGES = {
    "TensorBoardLogger": "tensorboard",
    "MLFlowLogger": "mlflow",
    "WandbLogger": "wandb",
    "CometLogger": "comet_ml",
    "NeptuneLogger": "neptune",
}


def installed(package: str) -> bool:
    """Whether ``package`` can be imported here (without importing it: mlflow and wandb take seconds)."""
    if package in sys.modules:
        return sys.modules[package] is not None
    return importlib.util.find_spec(package) is not None


def _check_loggers(logger: dict[str, Any] | None) -> None:
    """Every configured logger's package is installed: one line naming the logger and the install command."""
    for name, node in (logger or {}).items():
        if not isinstance(node, dict) or "_target_" not in node:
            continue
        package = LOGGER_PACKAGES.get(str(node["_target_"]).rsplit(".", 1)[-1])
        if package and not installed(package):
            raise InputError(f"logger={name} needs the {package} package: pip install {package}")


def check_train(
    seed: Any,
    model: dict[str, Any],
    data: dict[str, Any],
    trainer: dict[str, Any],
    logger: dict[str, Any] | None = None,
    train: bool = True,
) -> None:
    """Refuse a training config that cannot work, before anything is built or written.

    Takes the resolved nodes of the composed config (``synthseg.train.TrainSettings`` calls it).

    Raises:
        InputError: one line naming the key (and the dataset folder for size problems).
    """
    if not _integer(seed) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"seed must be an integer between 0 and {MAX_SEED}, got {seed!r}")
    for key, node in (("model", model), ("data", data), ("trainer", trainer)):
        _check_finite(node or {}, key)
    _check_optimizers(model or {})
    _check_pgan_switches(model or {})
    _check_data_numbers(data or {})
    _check_sizes(data or {})
    _check_trainer(trainer or {}, model or {}, train)
    _check_channels(model or {}, data or {})
    _check_loggers(logger)


def _dataset_roots(data: dict[str, Any]) -> list[tuple[str, Path]]:
    """The dataset folders a training config reads, with their keys: ``data.root`` and the synthetic one in use."""
    roots: list[tuple[str, Path]] = []
    if isinstance(data.get("root"), str):
        roots.append(("data.root", Path(data["root"])))
    synthetic = data.get("synthetic")
    if isinstance(synthetic, dict) and synthetic.get("count") and isinstance(synthetic.get("root"), str):
        roots.append(("data.synthetic.root", Path(synthetic["root"])))
    return roots


# The settings that shape training, recorded in every checkpoint under this key (synthseg.train adds the
# callback) and compared by a resume: the data a network was trained on and the model it is.
RESUME_RECORD = "synthseg_training"


def resume_record(model: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint records about the training that wrote it (primitive values only)."""
    from synthseg.data.sequences import DEFAULT_SEQUENCES, check_sequences

    resolution = data.get("resolution")
    return {
        "model": str(model.get("_target_", "")),
        "data.classes": data.get("classes"),
        "data.sequences": list(check_sequences(data.get("sequences") or DEFAULT_SEQUENCES, "data.sequences")),
        "data.resolution": resolution,
        "data.batch_size": data.get("batch_size"),
    }


def check_resume(ckpt: Path, model: dict[str, Any], data: dict[str, Any]) -> None:
    """Refuse a resume whose config changes what shaped the checkpoint's training, in one line naming both values.

    Lightning restores the data module's batch size and resolution from the checkpoint, so such a run trained
    with the checkpoint's values while its config and ``results.json`` named others. Checkpoints written before
    this record existed are compared on what their data module saved (batch size and resolution, not for
    PGAN, whose schedule changes both); their classes and model are compared by their weights later.
    """
    from synthseg.checkpoint import safe_load

    obj = safe_load(ckpt)
    now = resume_record(model, data)
    recorded = obj.get(RESUME_RECORD)
    if not isinstance(recorded, dict):
        state = obj.get("BraTSDataModule")
        if not isinstance(state, dict) or now["model"].endswith(".PGAN"):
            return
        recorded = {
            "data.batch_size": state.get("batch_size"),
            "data.resolution": state.get("resolution") or None,
        }
    for key, value in recorded.items():
        if key in now and value != now[key]:
            raise InputError(
                f"ckpt_path={ckpt}: the checkpoint was trained with {key}={value}, the config asks for "
                f"{key}={now[key]}; resume with {key}={value} (or start a new run without ckpt_path)"
            )


def check_train_inputs(
    data: dict[str, Any], model: dict[str, Any], ckpt_path: str | None, search_root: Path
) -> None:
    """Refuse, before anything is built or written, datasets and a resume that cannot work.

    Every dataset folder's manifest is read (ids and paths checked, synthseg.data.names), every file it names
    must exist (one ``stat`` each), the real and the synthetic dataset must be two datasets, and a resume must
    keep the settings that shaped the checkpoint (:func:`check_resume`).

    Raises:
        InputError: one line naming the key and the folder or file.
    """
    from synthseg.checkpoint import resolve_ckpt_path
    from synthseg.data.manifest import check_distinct, check_files, read_manifest

    roots = _dataset_roots(data or {})
    check_distinct({key: str(root) for key, root in roots})
    for _, root in roots:
        if root.is_dir():  # a missing folder is the DataModule's own line (folder not found)
            check_files(root, read_manifest(root))
    ckpt = resolve_ckpt_path(ckpt_path, search_root)
    if ckpt is not None:
        check_resume(Path(ckpt), model or {}, data or {})
