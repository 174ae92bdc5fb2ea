"""The report's synthetic-data quality (Table 3), HD95 in Table 2, and ``metrics.json``.

Table 3 has one row per synthetic set named in the report config (``figures.synthetic_full`` /
``figures.synthetic_reduced``), measured by :func:`synthseg.metrics.quality.measure` against the real
training data with the encoder of the sweep's ``full_real`` U-Net (the most classes present), on the sequences
that U-Net reads (its ``data.sequences``; the ``sequences`` column). HD95 per BraTS region comes from each
run's ``per_case[...]["hd95"]`` (written at test time). ``metrics.json`` holds everything the tables show:
``synthetic_quality`` (one object per synthetic set) and ``segmentation`` (one object per run).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.report.runs import Run
from synthseg.report.settings import FigureSettings, QualityReportSettings
from synthseg.report.stats import RatioMetrics

log = logging.getLogger(__name__)

SETS = (("full", "synthetic_full", "train"), ("reduced", "synthetic_reduced", "reduced"))


# --------------------------------------------------------------------------------------------- HD95
def with_hd95(metrics: RatioMetrics, runs: list[Run], subjects: list[str]) -> RatioMetrics:
    """``metrics`` plus ``hd95_<region>`` columns (mean over subjects, seeds averaged per subject) and, where
    the runs record them, ``hd95_<region>_one_side_empty`` (slices where exactly one side holds the region,
    mean per subject: the 2-D mean leaves them out).

    As a ratio of sums: per subject the sum over seeds over the number of seeds, so the bootstrap over subjects
    of Table 2 applies unchanged. Runs without HD95 (older results.json) leave ``metrics`` as is.
    """
    regions = list(runs[0].results.get("regions") or [])
    if not regions or any("hd95" not in case for run in runs for case in run.per_case.values()):
        return metrics
    keys = ["hd95"]
    if all("hd95_one_side_empty" in case for run in runs for case in run.per_case.values()):
        keys.append("hd95_one_side_empty")
    width = len(regions) * len(keys)
    num = np.zeros((len(subjects), width))
    den = np.zeros((len(subjects), width))
    for run in runs:
        for i, subject in enumerate(subjects):
            values = np.concatenate(
                [np.asarray(run.per_case[subject][key], dtype=np.float64) for key in keys]
            )
            if values.shape != (width,):
                return metrics
            num[i] += values
            den[i] += 1
    # Each subject weighs one: numerator and denominator scaled to a mean over seeds.
    num, den = num / np.maximum(den, 1), (den > 0).astype(np.float64)
    names = [f"hd95_{r}" for r in regions]
    if len(keys) > 1:
        names += [f"hd95_{r}_one_side_empty" for r in regions]
    return replace(
        metrics,
        names=(*metrics.names, *names),
        numerator=np.concatenate([metrics.numerator, num], axis=1),
        denominator=np.concatenate([metrics.denominator, den], axis=1),
        offset=np.concatenate([metrics.offset, np.zeros(width)]),
        scale=np.concatenate([metrics.scale, np.ones(width)]),
    )


def run_hd95(run: Run) -> dict[str, float | int | None]:
    """Mean HD95 over a run's test subjects per region (``hd95_wt``, ``hd95_tc``, ``hd95_et``; None if absent)
    and, where recorded, the test slices where exactly one side holds the region (``hd95_<region>_one_side_empty``,
    summed over subjects)."""
    regions = list(run.results.get("regions") or [])
    values = [case.get("hd95") for case in run.per_case.values()]
    out: dict[str, float | int | None] = {"hd95_wt": None, "hd95_tc": None, "hd95_et": None}
    if regions and values and all(v is not None for v in values):
        means = np.mean(np.asarray(values, dtype=np.float64), axis=0)
        for region, value in zip(regions, means, strict=True):
            out[f"hd95_{region.lower()}"] = float(value)
    counts = [case.get("hd95_one_side_empty") for case in run.per_case.values()]
    if regions and counts and all(c is not None for c in counts):
        totals = np.sum(np.asarray(counts, dtype=np.int64), axis=0)
        for region, total in zip(regions, totals, strict=True):
            out[f"hd95_{region.lower()}_one_side_empty"] = int(total)
    return out


def segmentation_entries(runs: list[Run]) -> list[dict[str, Any]]:
    """``metrics.json`` ``segmentation``: one object per run with its Dice figures and HD95 per region."""
    entries = []
    for run in runs:
        metrics = run.results.get("metrics", {})
        dice = {k.removeprefix("test/"): float(v) for k, v in metrics.items() if k.startswith("test/dice")}
        entries.append(
            {
                "run": str(run.path),
                "mix": run.mix,
                "classes": run.classes,
                "seed": run.seed,
                **dice,
                **run_hd95(run),
                "hd95_mode": run.results.get("hd95_mode"),
                "hd95_empty": run.results.get("hd95_empty"),
                "hd95_unit": run.results.get("hd95_unit"),
            }
        )
    return entries


# ------------------------------------------------------------------------------------------- Table 3
def _full_real_run(runs: list[Run]) -> Run | None:
    candidates = [r for r in runs if r.mix == "full_real"]
    return max(candidates, key=lambda r: (r.classes, -r.seed)) if candidates else None


def synthetic_quality(
    out: Path, runs: list[Run], figures: FigureSettings, options: QualityReportSettings
) -> list[dict[str, Any]]:
    """Measure every synthetic set of the report config; quality folders under ``out/quality/<set>``."""
    from synthseg.metrics.quality import QualitySettings, measure

    if not options.enabled:
        return []
    unet = _full_real_run(runs)
    entries = []
    for name, key, split in SETS:
        folder = getattr(figures, key)
        if not folder or not Path(str(folder)).is_dir():
            continue
        if unet is None:
            log.warning("no full_real U-Net run: Table 3 (synthetic quality) is left out")
            return []
        real = figures.real or unet.config["data"]["root"]
        quality_json = measure(
            QualitySettings(
                synthetic=str(folder), real=str(real), output=str(out / "quality" / name), unet=str(unet.path),
                extractor="unet", real_split=split, max_images=options.max_images, pairs=options.pairs,
                kid_subsets=options.kid_subsets, search_size=options.search_size,
                reference_empty=options.reference_empty, fd_dims=options.fd_dims, baseline=options.baseline,
            )
        )  # fmt: skip
        result = json.loads(quality_json.read_text())
        entries.append(quality_entry(name, str(folder), str(unet.path), result))
    return entries


# The synthetic-vs-real figures that have a real-vs-real baseline: (metrics.json key, key in quality.json's
# ``features`` (with the extractor's name) or ``baseline``).
BASELINE_FIGURES = ("fd", "fd_inf", "kid", "precision", "recall")


def quality_entry(name: str, folder: str, unet: str, result: dict[str, Any]) -> dict[str, Any]:
    """One set's object in ``metrics.json`` ``synthetic_quality`` from its quality.json content."""
    feats, div, memo = result["features"], result["diversity"], result["memorisation"]
    base = result.get("baseline") or {}
    extractor = feats["extractor"]
    entry: dict[str, Any] = {
        "set": name,
        "synthetic": folder,
        "extractor": extractor,
        "unet": unet,
        "sequences": result["sequences"],
        "reference_empty": result["reference_empty"]["rule"],
        "feature_dim": feats["feature_dim"],
        "fd_inf_dim": feats.get("fd_inf_dim"),
    }
    for figure in BASELINE_FIGURES:
        key = f"{figure}_{extractor}"
        entry[figure] = feats.get(key)
        entry[f"{figure}_at_baseline_n"] = feats.get(f"{key}_at_baseline_n")
        entry[f"{figure}_real_baseline"] = feats.get(f"{key}_real_baseline")
    entry |= {
        "ms_ssim_synthetic": div["ms_ssim_synthetic"],
        "ms_ssim_synthetic_at_baseline_n": base.get("ms_ssim_synthetic_at_baseline_n"),
        "ms_ssim_synthetic_real_baseline": base.get("ms_ssim_synthetic_real_baseline"),
        "ms_ssim_real": div["ms_ssim_real"],
        "ms_ssim_real_at_baseline_n": base.get("ms_ssim_real_at_baseline_n"),
        "ms_ssim_scales": div["scales"],
        "nearest_real_dice_median": memo["dice"]["synthetic"]["median"],
        "nearest_real_dice_median_at_baseline_n": base.get("nearest_real_dice_median_at_baseline_n"),
        "nearest_real_dice_median_real_baseline": base.get("nearest_real_dice_median_real_baseline"),
        "nearest_real_dice_real_median": memo["dice"]["real_to_real"]["median"],
        "nearest_real_correlation_median": memo["correlation"]["synthetic"]["median"],
        "above_threshold": memo["synthetic_above_both"],
        "swd": result["label_maps"]["swd"]["avg"],
        "swd_at_baseline_n": base.get("swd_at_baseline_n"),
        "swd_real_baseline": base.get("swd_real_baseline"),
        "area_distance": result["label_maps"]["area_distance"]["mean"],
        "area_distance_at_baseline_n": base.get("area_distance_at_baseline_n"),
        "area_distance_real_baseline": base.get("area_distance_real_baseline"),
        "filter_discard_rate": result["label_maps"]["filter_discard_rate"],
        "synthetic_count": result["synthetic_count"],
        "real_count": result["real_count"],
        "baseline_n": base.get("n"),
        "baseline_cases": base.get("cases"),
        "class_intensity": result["class_intensity"],
        "label_agreement": (result.get("label_agreement") or {}).get("mean_dice"),
        "label_agreement_real": (result.get("label_agreement") or {}).get("mean_dice_real"),
        "quality_json": f"quality/{name}/quality.json",
    }
    return entry


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, list):  # the sequences
        return "+".join(str(v) for v in value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


# Markdown: (title, synthetic figure at the baseline's n, real-vs-real figure): one "syn / real-real" cell each.
TABLE3_PAIRS = (
    ("SWD ×10³", "swd_at_baseline_n", "swd_real_baseline"),
    ("FD-U-Net", "fd_at_baseline_n", "fd_real_baseline"),
    ("FD∞-U-Net", "fd_inf_at_baseline_n", "fd_inf_real_baseline"),
    ("KID-U-Net", "kid_at_baseline_n", "kid_real_baseline"),
    ("precision", "precision_at_baseline_n", "precision_real_baseline"),
    ("recall", "recall_at_baseline_n", "recall_real_baseline"),
    ("MS-SSIM syn / real-A", "ms_ssim_synthetic_at_baseline_n", "ms_ssim_synthetic_real_baseline"),
    ("NN Dice", "nearest_real_dice_median_at_baseline_n", "nearest_real_dice_median_real_baseline"),
    ("U-Net Dice", "label_agreement", "label_agreement_real"),
)
# CSV: every figure, the full-sample ones and both baseline columns.
TABLE3_COLUMNS = (
    "set", "sequences", "synthetic_count", "real_count", "baseline_n", "feature_dim", "fd_inf_dim", "swd",
    "swd_at_baseline_n", "swd_real_baseline", "area_distance", "area_distance_at_baseline_n",
    "area_distance_real_baseline",
    *(f"{f}{s}" for f in BASELINE_FIGURES for s in ("", "_at_baseline_n", "_real_baseline")),
    "ms_ssim_synthetic", "ms_ssim_real", "ms_ssim_synthetic_at_baseline_n", "ms_ssim_real_at_baseline_n",
    "ms_ssim_synthetic_real_baseline", "nearest_real_dice_median", "nearest_real_dice_median_at_baseline_n",
    "nearest_real_dice_median_real_baseline", "nearest_real_dice_real_median", "above_threshold",
    "filter_discard_rate", "reference_empty", "label_agreement", "label_agreement_real",
)  # fmt: skip


def _pair(entry: dict[str, Any], synthetic: str, real: str) -> str:
    if entry.get(real) is None:
        return _num(entry.get(synthetic.replace("_at_baseline_n", "")))
    return f"{_num(entry.get(synthetic))} / {_num(entry.get(real))}"


def _intensity_lines(entries: list[dict[str, Any]]) -> list[str]:
    """The label-conditional intensity check under Table 3: per set, sequence and checked class, the levels."""
    lines = [
        "",
        "## Class intensity",
        "",
        "Per class, the median over slices of the mean image value inside the class, in the prepared 16-bit "
        "units; Δ: |synthetic − real| over the real WM level (issue 26's target: ≤ 0.15 for enhancing, WM, GM "
        "and CSF, in the real order); real-real: the same Δ between the two real halves. ×WM: the median over "
        "slices of the class mean over the same slice's WM mean (free of each scan's grey-level gain). order: "
        "the classes from the brightest (on real T1c: enhancing rim > WM > GM > CSF).",
        "",
        "| set | sequence | class | synthetic | real | Δ | Δ real-real | ×WM syn | ×WM real | ×WM Δ real-real |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    orders = []
    for entry in entries:
        check = entry.get("class_intensity") or {}
        for seq, found in (check.get("by_sequence") or {}).items():
            for name in check["checked_classes"]:
                item = found["classes"][name]
                cells = [
                    _num(item["synthetic"], 4), _num(item["real"], 4), _num(item["distance_over_real_wm"], 2),
                    _num(item.get("real_baseline_distance_over_real_wm"), 2), _num(item.get("over_wm_synthetic"), 3),
                    _num(item.get("over_wm_real"), 3), _num(item.get("over_wm_real_baseline_distance"), 2),
                ]  # fmt: skip
                lines.append(f"| {entry['set']} | {seq} | {name} | " + " | ".join(cells) + " |")
            orders.append(
                f"{entry['set']}, {seq}: order synthetic {' > '.join(found['order_synthetic'])}, real "
                f"{' > '.join(found['order_real'])}; target met: {'yes' if found['target_met'] else 'no'}."
            )
    if not orders:
        return []
    return [*lines, "", *orders]


def table3_markdown(entries: list[dict[str, Any]]) -> str:
    first = entries[0] if entries else {}
    lines = [
        "# Table 3: synthetic data quality",
        "",
        "One row per synthetic set against the real training slices it imitates (the reference: "
        f"{'without' if first.get('reference_empty') == 'exclude' else 'with'} its empty label maps, "
        "reference_empty). Each figure as **synthetic / real-real**: the synthetic set against real half B, beside real "
        "half A against B, both at the baseline's n per set (halves split by case; n: synthetic / real sample, "
        "baseline). SWD: label maps, ×10³ (with its per-set normalisation, at the baseline's n). FD: plain Fréchet distance (biased upwards by about c / n: compare it "
        "only at one n); FD∞ (Chong & Forsyth 2020, on the features pooled to "
        f"{_num(first.get('fd_inf_dim'))} dimensions), KID, precision / recall (k = 3): on the globally pooled "
        "encoder features of the sweep's full_real U-Net, which reads the sequences listed together as its "
        "input channels (not Inception; lower FD/KID and higher precision/recall are closer to real). MS-SSIM: "
        "mean over random pairs within a set, by the real dataset's recorded range (higher = less diverse; "
        "beside it real half A). NN Dice: median label-map Dice of each slice's nearest real slice of half B. "
        "U-Net Dice: the same U-Net segments the synthetic images (whole sample) and the real test slices, "
        "scored against their own label maps (mean Dice over the foreground classes; SPADE's own evaluation). "
        "copies: synthetic pairs above both the Dice and the correlation threshold. discarded: the Z-score "
        "filter's discard rate. Full-sample figures (plain FD too) in table3.csv and metrics.json; details: "
        "quality/<set>/ and docs/quality.md.",
        "",
    ]
    titles = ["set", "sequences", "n", *(t for t, _, _ in TABLE3_PAIRS), "copies", "discarded"]
    lines.append("| " + " | ".join(titles) + " |")
    lines.append("|" + "---|" * len(titles))
    for entry in entries:
        n = f"{entry.get('synthetic_count')} / {entry.get('real_count')}; {_num(entry.get('baseline_n'))}"
        cells = [_num(entry.get("set")), _num(entry.get("sequences")), n]
        cells += [_pair(entry, syn, real) for _, syn, real in TABLE3_PAIRS]
        cells += [_num(entry.get("above_threshold")), _num(entry.get("filter_discard_rate"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += _intensity_lines(entries)
    return "\n".join(lines) + "\n"


def table3_csv(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    keys = list(TABLE3_COLUMNS)
    writer.writerow(keys)
    for entry in entries:
        writer.writerow(
            ["+".join(v) if isinstance(v, list) else v for v in (entry.get(key, "") for key in keys)]
        )
    return out.getvalue()


def write_quality(
    tmp: Path, runs: list[Run], figures: FigureSettings, quality: QualityReportSettings
) -> list[dict[str, str]]:
    """Table 3 (when a synthetic set is configured) and ``metrics.json`` into the report folder ``tmp``."""
    files = []
    entries = synthetic_quality(tmp, runs, figures, quality)
    if entries:
        (tmp / "table3.md").write_text(table3_markdown(entries))
        (tmp / "table3.csv").write_text(table3_csv(entries))
        files += [
            {"file": "table3.md", "caption": "Table 3: synthetic data quality per synthetic set"},
            {"file": "table3.csv", "caption": "Table 3 as CSV"},
        ]
    metrics = {"synthetic_quality": entries, "segmentation": segmentation_entries(runs)}
    (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    files.append({"file": "metrics.json", "caption": "every figure the tables show, machine-readable"})
    return files
