"""Safe checkpoint loading and self-describing network snapshots.

Convention: checkpoints hold only tensors and primitive types, so every load uses
``torch.load(weights_only=True)`` and a crafted pickle cannot run code.

A *network snapshot* is ``{"network": "<dotted class path>", "init_args": {...}, "state_dict": {...},
"meta": {...}}``: enough to rebuild the network without the training config. Only classes inside
``synthseg.networks`` are ever built from a snapshot.
"""

from __future__ import annotations

import importlib
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from synthseg.errors import InputError
from synthseg.utils.atomic import atomic_path


class CheckpointError(InputError):
    """A checkpoint that cannot be loaded safely or does not fit the configuration."""


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
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({err})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def network_init_args(net: nn.Module) -> dict[str, Any]:
    """The constructor arguments a synthseg network recorded about itself (``net.init_args``)."""
    args = getattr(net, "init_args", None)
    if not isinstance(args, dict):
        raise TypeError(f"{type(net).__name__} does not record its init_args")
    return dict(args)


def network_snapshot(net: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """A snapshot dict of ``net`` (class path, constructor arguments, weights on CPU, metadata)."""
    cls = type(net)
    return {
        "network": f"{cls.__module__}.{cls.__qualname__}",
        "init_args": network_init_args(net),
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "meta": dict(meta or {}),
    }


def save_network(net: nn.Module, path: str | os.PathLike[str], meta: dict[str, Any] | None = None) -> None:
    """Save a network snapshot atomically."""
    with atomic_path(path) as tmp:
        torch.save(network_snapshot(net, meta), tmp)


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


def load_network(
    path: str | os.PathLike[str], *, expected: dict[str, Any] | None = None, network_key: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a network from a snapshot (or from ``checkpoint[network_key]`` of a training checkpoint).

    Args:
        path: snapshot or checkpoint file.
        expected: constructor arguments the caller's configuration requires (e.g. ``{"label_nc": 7}``);
            a mismatch is one clear :class:`CheckpointError` naming both values.
        network_key: key of the snapshot inside a larger checkpoint dict.

    Returns:
        The network in eval mode on CPU, and the snapshot's ``meta`` dict.
    """
    path = Path(path)
    obj = safe_load(path)
    if network_key is not None:
        if network_key not in obj:
            raise CheckpointError(f"{path}: no {network_key!r} entry in this checkpoint")
        obj = obj[network_key]
    if not {"network", "init_args", "state_dict"} <= set(obj):
        raise CheckpointError(f"{path}: not a synthseg network snapshot (keys: {sorted(obj)[:8]})")
    cls = _network_class(obj["network"], path)
    check_init_args(path, obj["init_args"], expected or {})
    try:
        net = cls(**obj["init_args"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot build {obj['network']} from its init_args ({err})") from None
    own = net.state_dict()
    for key, tensor in obj["state_dict"].items():
        if key in own and own[key].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: weight {key} has shape {tuple(tensor.shape)}, the network expects {tuple(own[key].shape)}"
            )
    missing = sorted(set(own) - set(obj["state_dict"]))
    unexpected = sorted(set(obj["state_dict"]) - set(own))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match {obj['network']}: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    net.load_state_dict(obj["state_dict"])
    return net.eval(), dict(obj.get("meta", {}))
