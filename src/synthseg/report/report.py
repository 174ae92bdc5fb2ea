"""``synthseg report runs=DIR output=DIR``: Table 1, Table 2 (:mod:`synthseg.report.tables`), Table 3
(:mod:`synthseg.report.quality`) and the figures (:mod:`synthseg.report.figures`) in one report folder."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from synthseg.report.quality import write_quality
from synthseg.report.runs import find_runs, group_runs
from synthseg.report.settings import FigureSettings, ReportSettings
from synthseg.report.tables import (
    table1_cells,
    table1_csv,
    table1_markdown,
    table2_csv,
    table2_estimates,
    table2_markdown,
)
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import check_output, claim_output


def _figure_inputs(figures: FigureSettings) -> list[str]:
    """The dataset folders the figures read (the report folder must not be or hold one of them)."""
    keys = ("real", "masks_full", "masks_reduced", "synthetic_full", "synthetic_reduced", "spade_test")
    found: list[str] = []
    for key in keys:
        value = getattr(figures, key)
        values = value if isinstance(value, tuple) else [value]
        found.extend(str(v) for v in values if v)
    return found


def run(settings: ReportSettings) -> Path:
    """Collect the runs under ``settings.runs`` and write the report folder ``settings.output`` atomically; return
    it. Its ``report.json`` lists the runs read, the files written (relative to the folder) with a caption each,
    and the figures left out for lack of input.
    """
    from synthseg.report import figures

    overwrite = settings.overwrite
    inputs = [settings.runs, *_figure_inputs(settings.figures)]
    output = check_output(settings.output, command="report", inputs=inputs, overwrite=overwrite)
    runs = find_runs(settings.runs, settings.include)
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
        written, skipped = figures.write_figures(tmp, groups, settings.figures)
        files += written
        files += write_quality(tmp, runs, settings.figures, settings.quality)  # Table 3, metrics.json
        summary = {
            "runs": [str(r.path) for r in runs],
            "cells": len(cells),
            "files": files,
            "figures_skipped": skipped,
        }
        (tmp / "report.json").write_text(json.dumps(summary, indent=2))
    return output


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg report`` (``conf/report.yaml``)."""
    settings = ReportSettings.from_config(cfg)
    output = run(settings)
    summary = json.loads((output / "report.json").read_text())
    print(f"synthseg report: {len(summary['runs'])} runs, {summary['cells']} cells -> {settings.output}")
    for item in summary["files"]:
        print(f"  {item['file']}: {item['caption']}")
    for item in summary["figures_skipped"]:
        print(f"  (skipped) {item}")
    return output
