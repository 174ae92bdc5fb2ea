"""The settings of ``synthseg report`` (``conf/report.yaml``), checked before any work; the figures and Table 3
read their own parts (:class:`FigureSettings`, :class:`QualityReportSettings`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from synthseg.errors import InputError
from synthseg.settings import Settings, check_choice, check_positive


@dataclass(frozen=True)
class BootstrapSettings(Settings):
    """``bootstrap:`` of ``conf/report.yaml``."""

    samples: int = 2000
    level: float = 0.95
    seed: int = 0

    def check(self) -> None:
        check_positive("samples", self.samples)
        if not 0.0 < self.level < 1.0:
            raise InputError(f"level must be in (0, 1), got {self.level}")


@dataclass(frozen=True)
class FigureSettings(Settings):
    """``figures:`` of ``conf/report.yaml`` (which figures, from which folders)."""

    enabled: bool = True
    seed: int = 0
    segmentation_slices: int = 10
    pairs: int = 24
    masks: int = 48
    spade_examples: int = 18
    real: str | None = None
    masks_full: str | None = None
    masks_reduced: str | None = None
    synthetic_full: str | None = None
    synthetic_reduced: str | None = None
    spade_test: str | tuple[str, ...] | None = None

    def check(self) -> None:
        for key in ("segmentation_slices", "pairs", "masks", "spade_examples"):
            check_positive(key, getattr(self, key), allow_zero=True)


@dataclass(frozen=True)
class QualityReportSettings(Settings):
    """``quality:`` of ``conf/report.yaml``: Table 3 for the synthetic sets among ``figures`` (docs/quality.md)."""

    enabled: bool = True
    max_images: int = 2000
    pairs: int = 500
    kid_subsets: int = 100
    search_size: int = 32
    reference_empty: str = "auto"
    fd_dims: int = 124
    baseline: bool = True

    def check(self) -> None:
        for key in ("max_images", "pairs", "kid_subsets", "search_size", "fd_dims"):
            check_positive(key, getattr(self, key))
        check_choice("reference_empty", self.reference_empty, ("auto", "include", "exclude"))


@dataclass(frozen=True)
class ReportSettings(Settings):
    """``conf/report.yaml``."""

    REQUIRED = {"runs": "DIR", "output": "DIR"}

    runs: str
    output: str
    overwrite: bool = False
    bootstrap: BootstrapSettings = field(default_factory=BootstrapSettings)
    figures: FigureSettings = field(default_factory=FigureSettings)
    quality: QualityReportSettings = field(default_factory=QualityReportSettings)
    include: tuple[str, ...] = ()  # run folders under runs to read (relative); () = every run found
