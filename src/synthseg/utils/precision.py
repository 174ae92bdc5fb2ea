"""Autocast settings of the generation commands (``autocast: null | bf16 | fp16``)."""

from __future__ import annotations

import torch

from synthseg.errors import InputError

AUTOCAST_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(name: str | None) -> torch.dtype | None:
    """The autocast dtype named by a command's ``autocast`` setting (None: float32, no autocast)."""
    if name is None:
        return None
    if name not in AUTOCAST_DTYPES:
        raise InputError(f"autocast must be null, bf16 or fp16, got {name!r}")
    return AUTOCAST_DTYPES[name]
