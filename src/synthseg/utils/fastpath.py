"""Whether this machine can take the fast paths a config asks for (bf16 autocast, ``torch.compile``), and the
autocast setting of the generation commands (``autocast: null | bf16 | fp16``).

A config written for a workstation (``trainer.precision=bf16-mixed``, ``model.compile=true``) should still run
on a laptop without native bf16 or without a C++ compiler: the setting falls back to fp32 / eager with one
line saying so, instead of a slow emulated bf16 or a compiler traceback minutes into training.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from synthseg.errors import InputError

log = logging.getLogger(__name__)
AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}
_SAID: set[str] = set()  # a sweep of runs in one process says each fallback once


def wants_cuda(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def bf16_native(cuda: bool) -> bool:
    """bf16 arithmetic in hardware: avx512_bf16 or AMX on CPU, Ampere or newer on CUDA."""
    if cuda:
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
    cpu = torch.cpu
    return bool(
        getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    )


@functools.cache
def compile_works(cuda: bool) -> bool:
    """A tiny function through ``torch.compile`` (inductor needs a C++ compiler on CPU, Triton on CUDA)."""
    device = "cuda" if cuda else "cpu"
    try:
        probe = torch.compile(lambda x: torch.relu(x) * 2.0 + 1.0)
        probe(torch.ones(4, device=device))
    except Exception as err:  # any backend failure means: run eagerly
        log.debug("torch.compile probe failed: %s", err)
        return False
    return True


class Fallbacks(NamedTuple):
    """What :func:`apply_fallbacks` gives back: the trainer and model nodes to build, and the lines said."""

    trainer: dict[str, Any]
    model: dict[str, Any] | None
    said: list[str]


def _copy(node: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(node, DictConfig):
        plain = OmegaConf.to_container(node, resolve=True)
        assert isinstance(plain, dict)
        return plain  # type: ignore[return-value]
    return copy.deepcopy(dict(node))


def apply_fallbacks(trainer: Mapping[str, Any], model: Mapping[str, Any] | None) -> Fallbacks:
    """Copies of the ``trainer`` and ``model`` nodes with ``precision`` bf16 and ``compile`` switched off where
    unsupported, and the lines said (one each, once per process). The nodes given are left as they are."""
    said: list[str] = []
    trainer, model = _copy(trainer), (_copy(model) if model is not None else None)
    cuda = wants_cuda(str(trainer.get("accelerator", "cpu")))
    where = "this GPU" if cuda else "this CPU"
    if str(trainer.get("precision", "")).startswith("bf16") and not bf16_native(cuda):
        said.append(f"{where} has no native bf16: trainer.precision={trainer['precision']} -> 32-true")
        trainer["precision"] = "32-true"
    if model is not None and model.get("compile") and not compile_works(cuda):
        said.append("torch.compile does not work here (no C++ compiler/Triton?): model.compile -> false")
        model["compile"] = False
    for line in said:
        if line not in _SAID:
            _SAID.add(line)
            print(line, flush=True)
    return Fallbacks(trainer, model, said)


def autocast_dtype(name: str | None) -> torch.dtype | None:
    """The autocast dtype named by a command's ``autocast`` setting (None: float32, no autocast)."""
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise InputError(f"autocast must be null, bf16 or fp16, got {name!r}")
    return AUTOCAST_DTYPES[name]
