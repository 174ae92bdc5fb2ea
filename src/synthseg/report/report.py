"""``synthseg report runs=DIR output=DIR``: Table 1, Table 2 (:mod:`synthseg.report.tables`), Table 3
(:mod:`synthseg.report.quality`) and the figures (:mod:`synthseg.report.figures`) in one report folder."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from omegaconf import DictConfig

from synthseg.errors import InputError
from synthseg.report.quality import write_quality
from synthseg.report.runs import find_runs, group_runs
from synthseg.report.tables import (
    table1_cells,
    table1_csv,
    table1_markdown,
    table2_csv,
    table2_estimates,
    table2_markdown,
)
from synthseg.settings import Settings, check_positive
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import check_output, claim_output


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
        if self.reference_empty not in ("auto", "include", "exclude"):
            raise InputError(
                f"reference_empty must be one of ['auto', 'include', 'exclude'], got {self.reference_empty!r}"
            )


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


def _figure_inputs(figures: FigureSettings) -> list[str]:
    """The dataset folders the figures read (the report folder must not be or hold one of them)."""
    keys = ("real", "masks_full", "masks_reduced", "synthetic_full", "synthetic_reduced", "spade_test")
    found: list[str] = []
    for key in keys:
        value = getattr(figures, key)
        values = value if isinstance(value, tuple) else [value]
        found.extend(str(v) for v in values if v)
    return found


def write_report(cfg: ReportSettings | DictConfig | dict[str, Any]) -> dict[str, Any]:
    """Collect the runs under ``cfg.runs`` and write the report folder ``cfg.output`` atomically.

    Args:
        cfg: the settings; a mapping may give only some keys (the others take their defaults).

    Returns:
        The content of ``report.json``: the runs read, the files written (relative to the output folder)
        with a caption each, and the figures left out for lack of input.
    """
    from synthseg.report import figures

    settings = cfg if isinstance(cfg, ReportSettings) else ReportSettings.from_config(cfg, partial=True)
    overwrite = settings.overwrite
    inputs = [settings.runs, *_figure_inputs(settings.figures)]
    output = check_output(settings.output, command="report", inputs=inputs, overwrite=overwrite)
    runs = find_runs(settings.runs)
    groups = group_runs(runs)
    boot = settings.bootstrap
    level = boot.level
    cells = table1_cells(groups)
    estimates = table2_estimates(groups, boot.samples, level, boot.seed)
    files: list[dict[str, str]] = []
    # An upper bound: ten figures of at most about 6 MB each (RGB, before PNG compression) and the tables.
    figures_on = settings.figures.enabled
    check_free_space(output.parent, (60 if figures_on else 1) * 10**6, "the report")
    with claim_output(output, command="report", inputs=inputs, overwrite=overwrite) as tmp:
        texts = {
            "table1.md": (table1_markdown(groups, cells), "Table 1: Dice error % per mix and class count"),
            "table1.csv": (table1_csv(cells), "Table 1 as CSV, one row per cell"),
            "table2.md": (table2_markdown(estimates, level), "Table 2: fixed-weight metrics with intervals"),
            "table2.csv": (table2_csv(estimates), "Table 2 as CSV, one row per cell and metric"),
        }
        for name, (text, caption) in texts.items():
            (tmp / name).write_text(text)
            files.append({"file": name, "caption": caption})
        figure_options = asdict(settings.figures)
        if isinstance(settings.figures.spade_test, tuple):
            figure_options["spade_test"] = list(settings.figures.spade_test)
        written, skipped = figures.write_figures(tmp, groups, figure_options)
        files += written
        files += write_quality(tmp, runs, asdict(settings))  # Table 3, metrics.json
        summary = {
            "runs": [str(r.path) for r in runs],
            "cells": len(cells),
            "files": files,
            "figures_skipped": skipped,
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(cfg: DictConfig) -> dict[str, Any]:
    """Hydra entry of ``synthseg report``."""
    settings = ReportSettings.from_config(cfg)
    summary = write_report(settings)
    print(f"synthseg report: {len(summary['runs'])} runs, {summary['cells']} cells -> {settings.output}")
    for item in summary["files"]:
        print(f"  {item['file']}: {item['caption']}")
    for item in summary["figures_skipped"]:
        print(f"  (skipped) {item}")
    return summary
