"""The MR sequences synthseg knows, by their canonical names (one place; docs/dataset_layout.md).

Every setting that names sequences (``prepare sequences=[...]``, ``data.sequences``) goes through
:func:`check_sequences`; the release presets map these names to each release's file names.
"""

from __future__ import annotations

from collections.abc import Iterable

from synthseg.errors import InputError

# Canonical names, in canonical order.
SEQUENCES = ("t1", "t1c", "t2", "flair")
# The paper's single sequence: the default everywhere, and the one that keeps today's flat dataset layout.
DEFAULT_SEQUENCES = ("t1c",)
# Release file names a user may type by habit: named in the error, never accepted silently.
_RELEASE_NAMES = {"t1ce": "t1c", "t1gd": "t1c", "t1n": "t1", "t1w": "t1", "t2w": "t2", "t2f": "flair"}


def check_sequences(seqs: str | Iterable[str], key: str = "sequences") -> tuple[str, ...]:
    """The requested sequences as a tuple in the user's order.

    Args:
        seqs: sequence names (a bare string is one name).
        key: the setting that named them, for the error.

    Raises:
        InputError: one line naming ``key`` when a name is unknown, repeated, or none is given.
    """
    names = (seqs,) if isinstance(seqs, str) else tuple(str(s) for s in seqs)
    shown = f"{key}=[{','.join(names)}]"
    if not names:
        raise InputError(f"{shown}: name at least one sequence (any of {', '.join(SEQUENCES)})")
    unknown = [n for n in names if n not in SEQUENCES]
    if unknown:
        hints = [f"{n} is {_RELEASE_NAMES[n]}" for n in unknown if n in _RELEASE_NAMES]
        hint = f"; {', '.join(hints)}" if hints else ""
        raise InputError(
            f"{shown}: unknown sequence {unknown} (expected any of {', '.join(SEQUENCES)}{hint})"
        )
    repeated = sorted({n for n in names if names.count(n) > 1}, key=names.index)
    if repeated:
        raise InputError(f"{shown}: sequence {repeated} named more than once")
    return names


def is_flat(sequences: Iterable[str]) -> bool:
    """Whether a dataset of these sequences uses the flat single-sequence layout (T1c alone: today's layout)."""
    return tuple(sequences) == DEFAULT_SEQUENCES
