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
    """``metrics`` plus ``hd95_<region>`` columns: mean over subjects (seeds averaged per subject).

    As a ratio of sums: per subject the sum of HD95 over seeds over the number of seeds, so the bootstrap
    over subjects of Table 2 applies unchanged. Runs without HD95 (older results.json) leave ``metrics`` as is.
    """
    regions = list(runs[0].results.get("regions") or [])
    if not regions or any("hd95" not in case for run in runs for case in run.per_case.values()):
        return metrics
    num = np.zeros((len(subjects), len(regions)))
    den = np.zeros((len(subjects), len(regions)))
    for run in runs:
        for i, subject in enumerate(subjects):
            values = np.asarray(run.per_case[subject]["hd95"], dtype=np.float64)
            if values.shape != (len(regions),):
                return metrics
            num[i] += values
            den[i] += 1
    # Each subject weighs one: numerator and denominator scaled to a mean over seeds.
    num, den = num / np.maximum(den, 1), (den > 0).astype(np.float64)
    return replace(
        metrics,
        names=(*metrics.names, *(f"hd95_{r}" for r in regions)),
        numerator=np.concatenate([metrics.numerator, num], axis=1),
        denominator=np.concatenate([metrics.denominator, den], axis=1),
        offset=np.concatenate([metrics.offset, np.zeros(len(regions))]),
        scale=np.concatenate([metrics.scale, np.ones(len(regions))]),
    )


def run_hd95(run: Run) -> dict[str, float | None]:
    """Mean HD95 over a run's test subjects per region: ``hd95_wt``, ``hd95_tc``, ``hd95_et`` (None if absent)."""
    regions = list(run.results.get("regions") or [])
    values = [case.get("hd95") for case in run.per_case.values()]
    out: dict[str, float | None] = {"hd95_wt": None, "hd95_tc": None, "hd95_et": None}
    if regions and values and all(v is not None for v in values):
        means = np.mean(np.asarray(values, dtype=np.float64), axis=0)
        for region, value in zip(regions, means, strict=True):
            out[f"hd95_{region.lower()}"] = float(value)
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
            )
        )  # fmt: skip
        result = json.loads(quality_json.read_text())
        feats, div, memo = result["features"], result["diversity"], result["memorisation"]
        entries.append(
            {
                "set": name,
                "synthetic": str(folder),
                "extractor": feats["extractor"],
                "unet": str(unet.path),
                "sequences": result["sequences"],
                "fd": feats["fd_unet"],
                "kid": feats["kid_unet"],
                "precision": feats["precision_unet"],
                "recall": feats["recall_unet"],
                "ms_ssim_synthetic": div["ms_ssim_synthetic"],
                "ms_ssim_real": div["ms_ssim_real"],
                "ms_ssim_scales": div["scales"],
                "nearest_real_dice_median": memo["dice"]["synthetic"]["median"],
                "nearest_real_dice_real_median": memo["dice"]["real_to_real"]["median"],
                "nearest_real_correlation_median": memo["correlation"]["synthetic"]["median"],
                "above_threshold": memo["synthetic_above_both"],
                "swd": result["label_maps"]["swd"]["avg"],
                "area_distance": result["label_maps"]["area_distance"]["mean"],
                "filter_discard_rate": result["label_maps"]["filter_discard_rate"],
                "synthetic_count": result["synthetic_count"],
                "real_count": result["real_count"],
                "quality_json": f"quality/{name}/quality.json",
            }
        )
    return entries


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, list):  # the sequences
        return "+".join(str(v) for v in value)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


TABLE3_COLUMNS = (
    ("set", "set"), ("sequences", "sequences"), ("swd", "SWD ×10³"), ("fd", "FD-U-Net"), ("kid", "KID-U-Net"),
    ("precision", "precision"), ("recall", "recall"), ("ms_ssim_synthetic", "MS-SSIM syn"),
    ("ms_ssim_real", "MS-SSIM real"),
    ("nearest_real_dice_median", "NN Dice syn"), ("nearest_real_dice_real_median", "NN Dice real"),
    ("above_threshold", "copies"), ("filter_discard_rate", "discarded"),
)  # fmt: skip


def table3_markdown(entries: list[dict[str, Any]]) -> str:
    lines = [
        "# Table 3: synthetic data quality",
        "",
        "One row per synthetic set against the real training slices it imitates. SWD: label maps, ×10³. "
        "FD / KID / precision / recall (k = 3): on the globally pooled encoder features of the sweep's "
        "full_real U-Net, which reads the sequences listed together as its input channels (not Inception; "
        "lower FD/KID and higher precision/recall are closer to real). MS-SSIM: mean over random pairs within a "
        "set (higher = less diverse; a synthetic set far above the real one has collapsed; with several "
        "sequences, each on its own, then their mean). NN Dice: median label-map Dice of each slice's nearest "
        "real training slice (synthetic, and real-to-real as the baseline). copies: synthetic pairs above both "
        "the Dice and the correlation threshold (with several sequences, the image correlation is the mean of "
        "the per-sequence ones). discarded: the Z-score filter's discard rate. Details: quality/<set>/.",
        "",
        "| " + " | ".join(title for _, title in TABLE3_COLUMNS) + " |",
        "|" + "---|" * len(TABLE3_COLUMNS),
    ]
    for entry in entries:
        lines.append("| " + " | ".join(_num(entry.get(key)) for key, _ in TABLE3_COLUMNS) + " |")
    return "\n".join(lines) + "\n"


def table3_csv(entries: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    keys = [key for key, _ in TABLE3_COLUMNS]
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
