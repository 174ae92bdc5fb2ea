"""Table 1 and its companion (Table 2) of the report, as Markdown and CSV.

Table 1 is the paper's metric: the weighted Dice error (%) of each run's test set with the weights of its own
training set, mean ± std over seeds, beside the paper's value, the best cell of each column and half in bold.
Table 2 puts rows on one scale: the Dice error with fixed weights from the real training data, per-class Dice
and the BraTS regions, each with a bootstrap 95 % interval over test subjects, and the paired difference of
each row from the real-only row of its half.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from synthseg.errors import InputError
from synthseg.report.quality import with_hd95
from synthseg.report.runs import (
    CLASS_COLUMNS,
    MIX_BY_NAME,
    Run,
    mix_of,
    mix_order,
    subject_metrics,
)
from synthseg.report.stats import bootstrap, paired_bootstrap, resample_weights

log = logging.getLogger(__name__)

# Below this many test subjects a bootstrap interval over subjects is too coarse to read.
MIN_SUBJECTS = 5


# ------------------------------------------------------------------------------------------------ Table 1
@dataclass
class Cell:
    """One (mix, classes) cell of Table 1: Dice error % over seeds."""

    mix: str
    half: str
    classes: int
    values: list[float]
    paper: float | None
    num_real: int | None = None
    num_synthetic: int | None = None
    best: bool = False
    sequences: tuple[str, ...] = ("t1c",)
    wt: list[float] = field(default_factory=list)  # whole-tumor Dice % of the same runs

    @property
    def wt_mean(self) -> float | None:
        return float(np.mean(self.wt)) if self.wt else None

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        # Sample standard deviation over seeds; undefined for one seed.
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else math.nan


def table1_cells(groups: dict[tuple[str, int], list[Run]]) -> dict[tuple[str, int], Cell]:
    """Table 1's cells, with the lowest mean Dice error of each (half, classes) marked best."""
    cells: dict[tuple[str, int], Cell] = {}
    for (mix, classes), runs in groups.items():
        known = MIX_BY_NAME.get(mix)
        paper = known.paper.get(classes) if known and known.paper else None
        stats = runs[0].results.get("data_stats", {})
        cells[(mix, classes)] = Cell(
            mix,
            runs[0].half,
            classes,
            [100 * r.dice_error for r in runs],
            paper,
            stats.get("num_real"),
            stats.get("num_synthetic"),
            sequences=runs[0].sequences,
            wt=[
                100 * r.results["metrics"]["test/dice_WT"]
                for r in runs
                if "test/dice_WT" in r.results["metrics"]
            ],
        )
    for half in {c.half for c in cells.values()}:
        for classes in {c.classes for c in cells.values()}:
            column = [c for c in cells.values() if c.half == half and c.classes == classes]
            if column:
                min(column, key=lambda c: c.mean).best = True
    return cells


def _fmt(value: float | None, digits: int = 2) -> str:
    return "" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _mean_std(cell: Cell) -> str:
    text = _fmt(cell.mean) + (f" ± {_fmt(cell.std)}" if len(cell.values) > 1 else "")
    return f"**{text}**" if cell.best else text


def _classes_present(groups: dict[tuple[str, int], list[Run]]) -> list[int]:
    present = {classes for _, classes in groups}
    return [c for c in CLASS_COLUMNS if c in present] + sorted(present - set(CLASS_COLUMNS))


def _sequences_sentence(groups: dict[tuple[str, int], list[Run]]) -> str:
    """Which MR sequences the U-Nets segmented from: one phrase for all runs, else per mix."""
    used = {mix: runs[0].sequences for (mix, _), runs in groups.items()}
    if len(set(used.values())) == 1:
        return f"Input sequences: {', '.join(next(iter(used.values())))} (every run)."
    parts = [f"{mix}: {', '.join(seqs)}" for mix, seqs in sorted(used.items())]
    return "Input sequences per mix: " + "; ".join(parts) + "."


def disagreements(cells: dict[tuple[str, int], Cell]) -> list[str]:
    """Sentences for the columns where the Dice error and the whole-tumor Dice tell different stories."""
    said = []
    for half, classes in sorted({(c.half, c.classes) for c in cells.values()}, key=lambda k: (k[0], -k[1])):
        column = [
            c for c in cells.values() if c.half == half and c.classes == classes and c.wt_mean is not None
        ]
        if len(column) < 2:
            continue
        by_error = min(column, key=lambda c: c.mean)
        by_wt = max(column, key=lambda c: c.wt_mean or 0.0)
        if by_error is not by_wt and (by_wt.wt_mean or 0.0) > (by_error.wt_mean or 0.0):
            said.append(
                f"{classes} classes, {half} half: the lowest Dice error is {by_error.mix}'s "
                f"({_fmt(by_error.mean)}) but the highest WT Dice is {by_wt.mix}'s ({_fmt(by_wt.wt_mean, 1)} against "
                f"{_fmt(by_error.wt_mean, 1)}): the two metrics disagree, so neither ranking alone says which mix "
                "segments the tumor better."
            )
    return said


def table1_markdown(groups: dict[tuple[str, int], list[Run]], cells: dict[tuple[str, int], Cell]) -> str:
    classes_list = _classes_present(groups)
    header = ["half", "mix", "(real, synthetic) in the paper", "ours", "seeds"]
    for c in classes_list:
        header += [f"{c} classes", "paper", "WT Dice"]
    lines = [
        "# Table 1: Dice error (%) on the test set",
        "",
        "Mean ± standard deviation over seeds of the weighted Dice error, each run with the class weights of "
        "its own training set (the paper's metric). **Bold**: the lowest mean of each column within each half "
        "(full / reduced real data). *paper*: Foroozandeh & Eklund (2020), Table 1. *ours*: the (real, "
        "synthetic) slice counts of our runs. *WT Dice*: the whole-tumor Dice (%) of the same runs (higher is "
        "better), beside the Dice error to show whether the tumor was segmented at all. "
        + _sequences_sentence(groups),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for mix in mix_order({m for m, _ in groups}):
        runs = next(groups[(mix, c)] for c in classes_list if (mix, c) in groups)
        info = mix_of(runs[0].results)
        stats = runs[0].results.get("data_stats", {})
        seeds = max(len(groups.get((mix, c), [])) for c in classes_list)
        row = [
            info.half,
            mix,
            info.label,
            f"({stats.get('num_real', '?')}, {stats.get('num_synthetic', '?')})",
        ]
        row.append(str(seeds))
        for c in classes_list:
            cell = cells.get((mix, c))
            row += [_mean_std(cell) if cell else "", _fmt(cell.paper) if cell else ""]
            row.append(_fmt(cell.wt_mean, 1) if cell else "")
        lines.append("| " + " | ".join(row) + " |")
    notes = disagreements(cells)
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def table1_csv(cells: dict[tuple[str, int], Cell]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["mix", "half", "classes", "num_real", "num_synthetic", "seeds", "dice_error_mean", "dice_error_std",
         "paper", "best", "sequences"]
    )  # fmt: skip
    for mix in mix_order({m for m, _ in cells}):
        for classes in sorted({c for m, c in cells if m == mix}, key=lambda c: -c):
            cell = cells[(mix, classes)]
            writer.writerow(
                [mix, cell.half, classes, cell.num_real, cell.num_synthetic, len(cell.values), _fmt(cell.mean, 6),
                 _fmt(cell.std, 6),
                 _fmt(cell.paper), int(cell.best), "+".join(cell.sequences)]
            )  # fmt: skip
    return out.getvalue()


# ------------------------------------------------------------------------------------------------ Table 2
@dataclass
class Estimate:
    """One metric of one (mix, classes) cell with its interval, and its difference from the reference row."""

    mix: str
    half: str
    classes: int
    metric: str
    estimate: float
    low: float
    high: float
    reference: str | None
    diff: float
    diff_low: float
    diff_high: float
    subjects: int
    seeds: int


def table2_estimates(
    groups: dict[tuple[str, int], list[Run]], samples: int = 2000, level: float = 0.95, seed: int = 0
) -> list[Estimate]:
    """Bootstrap intervals over test subjects for every cell, and paired differences from the real-only row.

    Within one class count, every cell is resampled with the same subject draws, so a row and its reference
    row are paired (the same resampled subjects for both). Seeds of a cell are pooled: their sums per subject
    are added, so the interval reflects the sampling of test subjects (seed spread is Table 1's std).
    """
    estimates: list[Estimate] = []
    for classes in _classes_present(groups):
        keys = [(m, classes) for m in mix_order({m for m, c in groups if c == classes})]
        subject_sets = [set(r.per_case) for k in keys for r in groups[k]]
        if any(not s for s in subject_sets):
            log.warning(
                "%d classes: a run has no per-case statistics; Table 2 skips this class count", classes
            )
            continue
        subjects = sorted(set.intersection(*subject_sets))
        if not subjects:
            raise InputError(
                f"the {classes}-class runs share no test subjects: were they tested on one dataset?"
            )
        if len(subjects) < max(len(s) for s in subject_sets):
            log.warning("%d classes: only %d test subjects are common to all runs", classes, len(subjects))
        weights = resample_weights(len(subjects), samples, seed)
        metrics = {k: with_hd95(subject_metrics(groups[k], subjects), groups[k], subjects) for k in keys}
        for key in keys:
            runs = groups[key]
            info = MIX_BY_NAME.get(key[0]) or mix_of(runs[0].results)
            estimate, low, high = bootstrap(metrics[key], weights, level)
            ref_key = (info.reference, classes)
            if ref_key in metrics and ref_key != key:
                diff, diff_low, diff_high = paired_bootstrap(metrics[key], metrics[ref_key], weights, level)
                reference: str | None = info.reference
            else:
                nan = np.full(len(estimate), np.nan)
                diff, diff_low, diff_high, reference = nan, nan, nan, None
            for j, name in enumerate(metrics[key].names):
                estimates.append(
                    Estimate(
                        key[0], runs[0].half, classes, name, float(estimate[j]), float(low[j]),
                        float(high[j]), reference, float(diff[j]), float(diff_low[j]), float(diff_high[j]),
                        len(subjects), len(runs),
                    )
                )  # fmt: skip
    return estimates


def _interval(value: float, low: float, high: float, signed: bool = False) -> str:
    if not math.isfinite(value):
        return "n/a"
    sign = "+" if signed else ""
    text = f"{value:{sign}.2f} [{low:{sign}.2f}, {high:{sign}.2f}]"
    # A paired interval that excludes 0: the difference is unlikely to be subject sampling alone.
    if signed and math.isfinite(low) and (low > 0 or high < 0):
        text += " †"
    return text


def _title(metric: str) -> str:
    """A Table 2 column's header: HD95 with its unit (mm, or slices for the count); the rest are in %."""
    if metric.startswith("hd95_"):
        return f"{metric} (slices)" if metric.endswith("_one_side_empty") else f"{metric} (mm)"
    return metric


def table2_markdown(estimates: list[Estimate], level: float) -> str:
    pct = f"{100 * level:g} %"
    lines = [
        "# Table 2: fixed-weight Dice error, per-class Dice and BraTS regions (%)",
        "",
        f"Point estimate [bootstrap {pct} interval over test subjects]. `dice_error_fixed`: the weighted Dice "
        "error with fixed class weights from the real training data (one scale for every row; lower is "
        "better). `dice_<class>`: Dice of the arg-max segmentation; WT whole tumor, TC tumor core, ET "
        "enhancing tumor (higher is better). Seeds are pooled per subject. The second table of each class "
        f"count: difference from the real-only row of the same half, paired bootstrap {pct} interval "
        "(the same resampled subjects for both rows); † marks an interval that excludes 0. `hd95_<region>`: "
        "95th-percentile Hausdorff distance in mm (pixels of the slices on disk, 1 mm for BraTS and the demo "
        "cohort, whatever resolution the U-Net ran at), mean over test subjects, lower is better; 3-D per "
        "subject when the dataset is split by subject, else the mean over the slices where both truth and "
        "prediction hold the region, with `hd95_<region>_one_side_empty` beside it: the slices per subject "
        "where exactly one side holds it (a subject with no other slice: BraTS' 373.13). docs/quality.md.",
    ]
    for classes in sorted({e.classes for e in estimates}, key=lambda c: -c):
        rows = [e for e in estimates if e.classes == classes]
        names = list(dict.fromkeys(e.metric for e in rows))
        mixes = list(dict.fromkeys(e.mix for e in rows))
        by_key = {(e.mix, e.metric): e for e in rows}
        subjects = rows[0].subjects
        for title, signed in ((f"{classes} classes ({subjects} test subjects)", False),
                              (f"{classes} classes: difference from the real-only row", True)):  # fmt: skip
            lines += ["", f"## {title}", ""]
            if subjects < MIN_SUBJECTS and not signed:
                lines += [f"Only {subjects} test subject(s): the intervals say little.", ""]
            lines.append("| mix | seeds | " + " | ".join(_title(name) for name in names) + " |")
            lines.append("|" + "---|" * (len(names) + 2))
            for mix in mixes:
                first = by_key[(mix, names[0])]
                if signed and first.reference is None:
                    continue
                cells = []
                for name in names:
                    e = by_key[(mix, name)]
                    cells.append(
                        _interval(e.diff, e.diff_low, e.diff_high, True)
                        if signed
                        else _interval(e.estimate, e.low, e.high)
                    )
                label = f"{mix} − {first.reference}" if signed else mix
                lines.append(f"| {label} | {first.seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table2_csv(estimates: list[Estimate]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    fields = ["mix", "half", "classes", "metric", "estimate", "ci_low", "ci_high", "reference", "diff",
              "diff_low", "diff_high", "subjects", "seeds"]  # fmt: skip
    writer.writerow(fields)
    for e in estimates:
        writer.writerow(
            [e.mix, e.half, e.classes, e.metric, _fmt(e.estimate, 6), _fmt(e.low, 6), _fmt(e.high, 6),
             e.reference or "", _fmt(e.diff, 6), _fmt(e.diff_low, 6), _fmt(e.diff_high, 6), e.subjects,
             e.seeds]
        )  # fmt: skip
    return out.getvalue()
