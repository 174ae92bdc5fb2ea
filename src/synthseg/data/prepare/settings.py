"""The settings of ``synthseg prepare`` (``conf/prepare.yaml``, docs/prepare.md), checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from synthseg.data.sequences import DEFAULT_SEQUENCES, check_sequences
from synthseg.data.sources.releases import CAVITY_MODES, CONVENTIONS, BratsConvention, resolve_convention
from synthseg.errors import InputError
from synthseg.settings import Settings


@dataclass(frozen=True)
class PrepareSettings(Settings):
    """Everything ``synthseg prepare`` takes (see ``conf/prepare.yaml`` and docs/prepare.md).

    Attributes:
        source: BraTS-layout root.
        output: the prepared dataset folder to write.
        convention: ``auto`` (recognise the release) or a preset (docs/prepare.md); ``groups``,
            ``image_suffix``, ``seg_suffix``, ``enhancing`` and ``labels`` (``{value: class name}``) override
            it when not None.
        sequences: the MR sequences to write (canonical names ``t1``, ``t1c``, ``t2``, ``flair``, in the
            dataset's order); ``[t1c]`` keeps the flat single-sequence layout (docs/dataset_layout.md).
        cavity: BraTS 2024's resection cavity becomes ``csf``, ``background``, its slices are dropped
            (``drop_slice``) or its cases refused (``refuse``).
        size: slices are zero-padded, centred, to ``size`` x ``size``.
        split: ``paper`` (shuffle all slices, split 80/10/10) or ``subject`` (split cases).
        split_fractions: train, val, test fractions (sum 1).
        reduced_fraction: the reduced set is this first fraction of the shuffled training slices.
        seed: shuffling seed (and the built-in tissue segmentation's).
        workers: parallel processes over cases (1: in this process).
        on_error: ``stop`` (nothing is written) or ``skip`` (the case is left out, with a warning).
        tissue: ``auto`` (FAST outputs when present, else built-in), ``fast`` (FAST outputs required) or
            ``builtin`` (ignore FAST outputs).
        overwrite: replace an existing output folder this command wrote (never a foreign one).
        progress: show a progress bar.
    """

    source: str
    output: str
    convention: str = "auto"
    groups: str | tuple[str, ...] | None = None
    image_suffix: str | None = None
    seg_suffix: str | None = None
    enhancing: int | None = None
    labels: dict[int, str] | None = None
    sequences: tuple[str, ...] = DEFAULT_SEQUENCES
    cavity: str = "csf"
    size: int = 256
    split: str = "paper"
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    reduced_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    on_error: str = "stop"
    tissue: str = "auto"
    overwrite: bool = False
    progress: bool = True

    REQUIRED = {"source": "DIR", "output": "DIR"}

    def check(self) -> None:
        if isinstance(self.groups, str):  # groups=HGG on the command line means one group
            object.__setattr__(self, "groups", (self.groups,))
        elif self.groups is not None:
            object.__setattr__(self, "groups", tuple(self.groups))
        object.__setattr__(self, "split_fractions", tuple(float(f) for f in self.split_fractions))
        object.__setattr__(self, "sequences", check_sequences(self.sequences, "sequences"))
        if self.split not in ("paper", "subject"):
            raise InputError(f"split must be 'paper' or 'subject', got {self.split!r}")
        if self.on_error not in ("stop", "skip"):
            raise InputError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.convention not in CONVENTIONS:
            raise InputError(f"convention must be one of {', '.join(CONVENTIONS)}, got {self.convention!r}")
        if self.cavity not in CAVITY_MODES:
            raise InputError(f"cavity must be one of {', '.join(CAVITY_MODES)}, got {self.cavity!r}")
        if self.tissue not in ("auto", "fast", "builtin"):
            raise InputError(f"tissue must be 'auto', 'fast' or 'builtin', got {self.tissue!r}")
        size = int(self.size)
        if size < 4 or size & (size - 1):
            # Training resizes by powers of two and PGAN grows 4, 8, ... to the full size: nothing else can use it.
            raise InputError(f"size must be a power of two >= 4 (e.g. 256), got {self.size}")
        if int(self.workers) < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        fractions = self.split_fractions
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise InputError(
                f"split_fractions must be three positive numbers summing to 1, got {list(fractions)}"
            )
        if not 0.0 < float(self.reduced_fraction) <= 1.0:
            raise InputError(f"reduced_fraction must be in (0, 1], got {self.reduced_fraction}")

    def brats_convention(self, source: str | Path | None = None) -> tuple[BratsConvention, str]:
        """The convention (recognised from ``source`` under ``auto``) and the line saying which."""
        return resolve_convention(
            source if source is not None else self.source,
            self.convention,
            groups=self.groups,
            image_suffix=self.image_suffix,
            seg_suffix=self.seg_suffix,
            enhancing=self.enhancing,
            labels=self.labels,
        )
