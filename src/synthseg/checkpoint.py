"""Safe checkpoint loading and self-describing network snapshots.

Convention: checkpoints hold only tensors and primitive types, so every load uses
``torch.load(weights_only=True)`` and a crafted pickle cannot run code.

A *network snapshot* is ``{"network": "<dotted class path>", "init_args": {...}, "state_dict": {...},
"meta": {...}}``: enough to rebuild the network without the training config. Only classes inside
``synthseg.networks`` are ever built from a snapshot.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from synthseg.errors import InputError
from synthseg.utils.atomic import atomic_path


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely or does not fit the configuration."""


def _unreadable(path: Path, err: BaseException) -> str:
    """Why ``torch.load`` failed, in words: a cut copy reads as ``[Errno 22] Invalid argument`` otherwise."""
    size = path.stat().st_size
    if size == 0:
        return "not a readable PyTorch checkpoint (empty file, 0 bytes)"
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        return (
            f"not a readable PyTorch checkpoint: truncated or corrupt ({size} bytes, the end of its zip archive "
            "is missing; copy it again)"
        )
    return f"not a readable PyTorch checkpoint ({err})"


def safe_load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; raise :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        foreign = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line), "")
        if foreign:
            raise CheckpointError(
                f"{path}: refused to load: it holds objects other than tensors and primitive types ({foreign})"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (unpickling failed)") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path}: {_unreadable(path, err)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def network_init_args(net: nn.Module) -> dict[str, Any]:
    """The constructor arguments a synthseg network recorded about itself (``net.init_args``)."""
    args = getattr(net, "init_args", None)
    if not isinstance(args, dict):
        raise TypeError(f"{type(net).__name__} does not record its init_args")
    return dict(args)


def network_entry(net: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilds ``net`` without its weights: class path, constructor arguments (and metadata)."""
    cls = type(net)
    entry: dict[str, Any] = {
        "network": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": network_init_args(net),
    }
    if meta is not None:
        entry["meta"] = dict(meta)
    return entry


def network_snapshot(net: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A snapshot dict of ``net`` (class path, constructor arguments, weights on CPU, metadata)."""
    return {
        **network_entry(net),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_network(
    net: nn.Module,
    path: str | os.PathLike[str],
    meta: dict[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Save a network snapshot atomically; ``extra`` entries go beside it (a PGAN snapshot's ``critic``)."""
    with atomic_path(path) as tmp:
        torch.save({**network_snapshot(net, meta), **(extra or {})}, tmp)


def _network_class(dotted: str, path: Path) -> type[nn.Module]:
    module_name, _, cls_name = dotted.rpartition(".")
    if not module_name.startswith("synthseg.networks"):
        raise CheckpointError(f"{path}: refused: network class {dotted!r} is not a synthseg network")
    try:
        cls = getattr(importlib.import_module(module_name), cls_name)
    except (ImportError, AttributeError):
        raise CheckpointError(f"{path}: unknown network class {dotted!r}") from None
    return cls


def check_init_args(path: Path, found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Raise one clear error for the first constructor argument that differs from the configuration."""
    for key, want in expected.items():
        if key in found and found[key] != want:
            raise CheckpointError(
                f"{path}: checkpoint has {key}={found[key]!r}, config asks for {key}={want!r}"
            )


def _shape(shape: Any) -> str:
    return "x".join(str(int(n)) for n in shape)


_CLASS_OUTPUTS = ("head.weight", "head.bias", "class_weights")


def check_weights(
    path: Path, own: Mapping[str, Tensor], found: Mapping[str, Tensor], *, what: str, prefix: str = ""
) -> None:
    """Refuse, in one line, weights ``found`` in ``path`` that do not fit ``own`` (a network's state dict).

    The output layer first (a different class count is the likeliest mismatch and the one to name), then the
    first layer that differs in the network's order, then missing or unexpected weights. ``prefix`` is how
    the checkpoint names the network's weights (``net.``), so the message names them as the file does.
    """

    def differs(key: str) -> bool:
        return key in found and tuple(found[key].shape) != tuple(own[key].shape)

    for key in sorted(
        own, key=lambda k: next((i for i, end in enumerate(_CLASS_OUTPUTS) if k.endswith(end)), 3)
    ):
        if key.endswith(_CLASS_OUTPUTS) and differs(key) and found[key].shape[0] != own[key].shape[0]:
            raise CheckpointError(
                f"{path}: checkpoint has {found[key].shape[0]} label classes ({prefix}{key} "
                f"{_shape(found[key].shape)}), config asks for {own[key].shape[0]}"
            )
    for key in own:
        if differs(key):
            raise CheckpointError(
                f"{path}: checkpoint has {prefix}{key} of shape {_shape(found[key].shape)}, {what} has "
                f"{_shape(own[key].shape)} (a different width, channel count or resolution)"
            )
    missing = [prefix + k for k in own if k not in found]
    unexpected = [prefix + k for k in found if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: checkpoint does not fit {what}: {len(missing)} weights missing (e.g. {missing[:1]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})"
        )


# Where a GAN training checkpoint records its generator ({"network", "init_args"[, "meta"]}), the prefix of
# the generator's weights in its state_dict (PGAN: the EMA copy, what samples and snapshots use) and the class
# for entries that do not name one.
SPADE_CHECKPOINT_KEY = "synthseg_spade"
_GENERATOR_ENTRIES = (
    ("pgan", "generator_ema.", "synthseg.networks.pgan.PGANGenerator"),
    (SPADE_CHECKPOINT_KEY, "generator.", "synthseg.networks.spade.SPADEGenerator"),
)


def generator_entry(obj: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The generator entry of a GAN training checkpoint and its weights' prefix; None for other checkpoints."""
    for section, prefix, network in _GENERATOR_ENTRIES:
        entry = obj.get(section)
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("generator"), dict) and "init_args" in entry["generator"]:
            return {"network": network, **entry["generator"]}, prefix
        if isinstance(entry.get("generator_init_args"), dict):  # PGAN before 0.2.0
            return {"network": network, "init_args": entry["generator_init_args"]}, prefix
    return None


def load_network(
    path: str | os.PathLike[str],
    *,
    expected: dict[str, Any] | None = None,
    network_key: str | None = None,
    spec: Mapping[str, Any] | None = None,
    weights_prefix: str | None = None,
    into: nn.Module | None = None,
    checkpoint: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network from a snapshot or a training checkpoint: the one way every command loads one.

    A snapshot holds the class path, ``init_args`` and weights together. A GAN training checkpoint keeps its
    generator's class path and ``init_args`` in an entry of its own (:func:`generator_entry`) and the weights
    in its ``state_dict`` under a prefix (``generator_ema.``): both are found without arguments. Other
    checkpoints name the entry (``network_key`` or ``spec``) or pass the network built from their
    configuration (``into``), and the prefix (``weights_prefix``, e.g. ``net.``).

    Args:
        path: snapshot or checkpoint file (named in every error).
        expected: constructor arguments the caller's configuration requires (e.g. ``{"label_nc": 7}``);
            a mismatch is one clear :class:`CheckpointError` naming both values.
        network_key: key of the ``{"network", "init_args"[, "state_dict", "meta"]}`` entry in the checkpoint.
        spec: that entry itself, when it is not stored under one key (older checkpoints).
        weights_prefix: take the weights from the checkpoint's ``state_dict`` under this prefix.
        into: an already built network to load the weights into (its class comes from the caller's config).
        checkpoint: the file's contents when the caller has already read them with :func:`safe_load`.

    Returns:
        The network in eval mode on CPU, and the entry's ``meta`` dict.
    """
    path = Path(path)
    obj = checkpoint if checkpoint is not None else safe_load(path)
    if spec is None and into is None:
        if network_key is not None:
            if not isinstance(obj.get(network_key), dict):
                raise CheckpointError(f"{path}: no {network_key!r} entry in this checkpoint")
            spec = obj[network_key]
        elif {"network", "init_args", "state_dict"} <= set(obj):
            spec = obj
        elif (entry := generator_entry(obj)) is not None:
            spec, weights_prefix = entry[0], entry[1] if weights_prefix is None else weights_prefix
        if spec is None or not {"network", "init_args"} <= set(spec):
            raise CheckpointError(
                f"{path}: neither a synthseg network snapshot nor a GAN training checkpoint "
                f"(keys: {sorted(obj)[:8]})"
            )
    spec = spec or {}
    if into is None:
        cls = _network_class(str(spec["network"]), path)
        check_init_args(path, spec["init_args"], expected or {})
        try:
            net = cls(**spec["init_args"])
        except (TypeError, ValueError) as err:
            raise CheckpointError(
                f"{path}: cannot build {spec['network']} from its init_args ({err})"
            ) from None
    else:
        net = into
    if weights_prefix is None:
        weights, prefix = spec["state_dict"], ""
    else:
        state = obj.get("state_dict")
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: not a training checkpoint (no state_dict)")
        prefix = weights_prefix
        weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    what = f"the network {spec.get('network') or type(net).__name__}"
    check_weights(path, net.state_dict(), weights, what=what, prefix=prefix)
    net.load_state_dict(weights)
    return net.eval(), dict(spec.get("meta") or {})


def find_last_checkpoint(search_root: Path) -> Path:
    """The newest ``last.ckpt`` under ``search_root`` (for ``ckpt_path=last``)."""
    candidates = sorted(search_root.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise InputError(f"ckpt_path=last: no last.ckpt found under {search_root}")
    return candidates[-1]


def resolve_ckpt_path(ckpt: str | None, search_root: Path) -> str | None:
    """The checkpoint a training run resumes from: none, a file, or ``last`` (newest under ``search_root``)."""
    if ckpt in (None, ""):
        return None
    if ckpt == "last":
        return str(find_last_checkpoint(search_root))
    if Path(ckpt).is_dir():
        raise InputError(
            f"ckpt_path={ckpt}: is a folder, not a checkpoint file (give its .ckpt file, or ckpt_path=last)"
        )
    if not Path(ckpt).is_file():
        raise InputError(f"ckpt_path={ckpt}: file not found")
    return str(ckpt)


# Generator arguments that earlier checkpoints did not record, with the one value they had (a 0.2.0 PGAN
# read its one channel as class indices in the paper's order and knew no slice position).
UNRECORDED_BEFORE_0_3 = {"label_encoding": "index", "condition": "none", "index_order": "paper"}


def check_checkpoint_fits(path: str | os.PathLike[str], model: nn.Module) -> dict[str, Any]:
    """Refuse, in one line, a training checkpoint that cannot be resumed into ``model`` (a LightningModule).

    Reads it with ``weights_only=True`` (a crafted pickle is refused before Lightning sees it) and compares
    its weights with the configured model's, so a checkpoint of another class count, resolution, width or
    model type is one error naming both values instead of a wall of size-mismatch lines.

    Returns:
        The checkpoint (its ``fastpath`` entry, when there is one, is the choice a resumed run keeps).
    """
    ckpt = Path(path)
    obj = safe_load(ckpt)
    state = obj.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{ckpt}: not a training checkpoint (no state_dict)")
    # Checkpoints that record the generator's constructor arguments: name the setting itself.
    entry = generator_entry(obj)
    generator = getattr(model, "generator", None)
    if entry is not None and isinstance(getattr(generator, "init_args", None), dict):
        check_init_args(ckpt, {**UNRECORDED_BEFORE_0_3, **entry[0]["init_args"]}, generator.init_args)
    check_weights(ckpt, model.state_dict(), state, what=f"the configured {type(model).__name__}")
    return obj


def read_unet_results(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """A U-Net run's ``results.json``; None when it is not a tested U-Net run (no ``test/dice_error``).

    Raises:
        InputError: the file cannot be read as JSON, or its ``config.data.classes`` is missing.
    """
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable results.json ({err})") from None
    if not isinstance(results, dict) or "test/dice_error" not in results.get("metrics", {}):
        return None
    try:
        int(results["config"]["data"]["classes"])
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: config.data.classes missing") from None
    return results


def load_unet(results_path: str | os.PathLike[str], results: Mapping[str, Any]) -> nn.Module:
    """The U-Net of a tested run with the weights of its best checkpoint, in eval mode on CPU.

    Args:
        results_path: the run's ``results.json``.
        results: its content (:func:`read_unet_results`): the network is built from ``config.model.net``.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    results_path = Path(results_path)
    path = Path(str(results.get("best_checkpoint") or ""))
    if not path.is_file():
        # A sweep folder that was moved: look for the checkpoint beside the results.json.
        candidate = results_path.parent / "checkpoints" / path.name
        if not path.name or not candidate.is_file():
            raise InputError(f"{results_path}: best checkpoint {path} not found")
        path = candidate
    net = instantiate(OmegaConf.create(results["config"]["model"]["net"]))
    return load_network(path, into=net, weights_prefix="net.")[0]
