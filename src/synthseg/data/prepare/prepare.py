"""``synthseg prepare``: a BraTS-layout root -> the prepared 7-class slice dataset (docs/dataset_layout.md).

Per case: read the T1c, the other requested sequences and the tumor annotation, map the tumor labels to 1-3,
take tissue (WM 4, GM 5, CSF 6) from FAST outputs or the built-in segmentation, put tumor over tissue over
background, round the intensities to 16-bit integers, and write every axial slice, zero-padded and centred,
as one 16-bit image PNG per requested sequence and an 8-bit label PNG. Then split (``paper``: shuffled slices 80/10/10; ``subject``: cases 80/10/10), mark
the reduced set and write ``manifest.csv``, ``stats.json`` and ``prepare.json``.

The dataset is written into a temporary sibling of the output and renamed into place when complete.
The work is split by concern: settings (:mod:`~synthseg.data.prepare.settings`), slice conversion
(:mod:`~synthseg.data.prepare.slices`), the parallel runner (:mod:`~synthseg.data.prepare.runner`), the split design
(:mod:`~synthseg.data.prepare.splits`); this module writes the dataset folder.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from synthseg.data.labels import NUM_CLASSES
from synthseg.data.manifest import (
    REQUIRED_COLUMNS,
    SPLITS,
    dataset_stats,
    image_relpath,
    manifest_columns,
    read_provenance,
    write_manifest,
    write_provenance,
    write_stats,
)
from synthseg.data.prepare.runner import run_cases
from synthseg.data.prepare.settings import PrepareSettings
from synthseg.data.prepare.slices import (
    CaseResult,
    check_inputs,
    slice_id,
)
from synthseg.data.prepare.splits import assign_splits
from synthseg.data.prepare.summary import release_lines, release_record
from synthseg.data.sources.brats import Case, check_sample, find_cases
from synthseg.data.sources.nifti import read_header
from synthseg.errors import InputError
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output

MANIFEST_COLUMNS = REQUIRED_COLUMNS  # the T1c-only dataset's columns (docs/dataset_layout.md), in order
# Bytes per output pixel (image + label PNG) for the size estimate made before writing: the demo cohort
# measures 0.25, 16-bit noise over a whole 240x240 slice 1.6; real T1c slices lie between.
_BYTES_PER_PIXEL_ESTIMATE = 1.0


def build_manifest(
    results: list[CaseResult], settings: PrepareSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The manifest rows and stats.json content of the processed cases (sorted by name).

    Returns:
        ``(rows, stats)``: rows keyed by the manifest columns, in manifest order.
    """
    names = [r.case for r in results]
    depths = [len(r.slice_max) for r in results]
    order, split, reduced = assign_splits(names, depths, settings)
    case_index = np.repeat(np.arange(len(results)), depths)
    slice_index = np.concatenate(
        [np.asarray(r.slices or range(d), dtype=np.int64) for r, d in zip(results, depths, strict=True)]
    )
    counts = np.concatenate([np.asarray(r.counts, dtype=np.int64).reshape(-1, NUM_CLASSES) for r in results])
    sequences = settings.sequences
    maxima = np.concatenate(
        [np.asarray(r.slice_max, dtype=np.int64).reshape(-1, len(sequences)) for r in results]
    )
    sums = [s for r in results for s in r.slice_sum]  # Z x S exact integers (python ints: no overflow)
    columns = manifest_columns(sequences)

    rows = []
    for row, number in enumerate(order):
        case = names[case_index[number]]
        stem = slice_id(case, int(slice_index[number]))
        row_counts = counts[number]
        values = [
            stem,
            case,
            int(slice_index[number]),
            SPLITS[split[row]],
            "real",
            int(reduced[row]),
            int(row_counts[1:].sum() == 0),
            *(image_relpath(stem, seq, sequences) for seq in sequences),
            f"labels/{stem}.png",
            *(int(c) for c in row_counts),
        ]
        rows.append(dict(zip(columns, values, strict=True)))

    train = order[split == 0]
    train_max = [int(m) for m in maxima[train].max(axis=0)]
    for seq, m in zip(sequences, train_max, strict=True):
        if m == 0:
            named = "" if sequences == ("t1c",) else f" in {seq}"
            raise InputError(f"the training split has no image intensity above 0{named}")
    pixels = len(train) * settings.size * settings.size
    train_mean = [
        sum(sums[i][s] for i in train.tolist()) / pixels / train_max[s] for s in range(len(sequences))
    ]
    stats = dataset_stats(
        source="real",
        size=settings.size,
        splits={name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        class_counts=counts[train].sum(axis=0),
        split_mode=settings.split,
        seed=int(settings.seed),
        reduced_fraction=float(settings.reduced_fraction),
        sequences=sequences,
        train_max=train_max,
        train_mean=[float(m) for m in train_mean],
    )
    return rows, stats


def _code_version() -> dict[str, str | None]:
    from synthseg import __version__

    commit = None
    try:
        repo = Path(__file__).resolve().parents[3]
        if (repo / ".git").exists():
            done = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            )
            commit = done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"synthseg": __version__, "git_commit": commit}


def _check_paths(settings: PrepareSettings) -> tuple[Path, Path]:
    source = Path(settings.source).expanduser().resolve()
    output = check_output(settings.output, command="prepare", inputs=[source], overwrite=settings.overwrite)
    return source, output


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def run(settings: PrepareSettings) -> Path:
    """Run the preparation stage into ``settings.output``.

    Returns:
        The prepared dataset folder; its ``prepare.json`` holds the record (config, code version, cases, skipped
        cases with reasons, timings, statistics).

    Raises:
        InputError: one line naming the file (or setting) and the problem; with ``on_error=stop`` nothing
            is written.
    """
    start = time.perf_counter()
    source, output = _check_paths(settings)
    convention, recognised = settings.brats_convention(source)
    print(recognised, flush=True)
    cases = find_cases(source, convention)

    # Header pass: catch missing, foreign and mismatched files in seconds, before any voxel is read.
    skipped: list[dict[str, str]] = []
    usable: list[Case] = []
    depth_total = 0
    for case in cases:
        try:
            check_inputs(case, convention, settings)
            assert case.t1c is not None
            shape = read_header(case.t1c, channel=convention.channel("t1c")).shape
            if shape[0] > settings.size or shape[1] > settings.size:  # found now, not after the other cases
                raise InputError(
                    f"{case.t1c}: in-plane size {shape[0]}x{shape[1]} is larger than size={settings.size}"
                )
            depth_total += shape[2]
            usable.append(case)
        except InputError as err:
            if settings.on_error == "stop":
                raise
            _warn(f"skipping {case.name}: {err}")
            skipped.append({"case": case.name, "reason": str(err)})
    if not usable:
        raise InputError(f"{source}: no usable case ({len(skipped)} skipped)")
    check_sample(usable, convention)  # a swapped label map stops here, under any on_error
    check_seconds = time.perf_counter() - start

    # the estimate covers one image and its label per pixel; each further sequence adds an image
    per_pixel = _BYTES_PER_PIXEL_ESTIMATE * (1 + len(settings.sequences)) / 2
    estimate = int(depth_total * settings.size * settings.size * per_pixel)
    try:
        check_free_space(output.parent, estimate, "the prepared dataset")
    except OSError as err:
        raise InputError(str(err)) from None

    with claim_output(
        output, command="prepare", inputs=[source], overwrite=settings.overwrite, later=DATASET_LATER
    ) as tmp:
        for seq in settings.sequences:
            (tmp / image_relpath("x", seq, settings.sequences)).parent.mkdir(parents=True, exist_ok=True)
        (tmp / "labels").mkdir()
        results = []
        for result in run_cases(usable, convention, settings, tmp):
            if result.error is not None:
                _warn(f"skipping {result.case}: {result.error}")
                skipped.append({"case": result.case, "reason": result.error})
            else:
                results.append(result)
        if not results:
            raise InputError(f"{source}: no usable case ({len(skipped)} skipped)")
        rows, stats = build_manifest(results, settings)
        write_manifest(tmp, rows, lineterminator="\n", sequences=settings.sequences)
        write_stats(tmp, stats)

        split_of_case: dict[str, set[str]] = {}
        for row in rows:
            split_of_case.setdefault(row["case"], set()).add(row["split"])
        n_reduced = sum(int(row["reduced"]) for row in rows)
        total = time.perf_counter() - start
        record = {
            "format": "synthseg-prepare/1",
            "config": {**asdict(settings), "source": str(source), "output": str(output)},
            "convention": asdict(convention),
            "release": release_record(convention, recognised, results, settings.cavity),
            "code": _code_version(),
            "cases": [
                {
                    "case": r.case,
                    "group": r.group,
                    "slices": len(r.slice_max),
                    "splits": sorted(split_of_case.get(r.case, ())),
                    "tissue": r.tissue,
                    "negatives_clipped": r.negatives_clipped,
                    "seconds": {k: round(v, 3) for k, v in r.seconds.items()},
                    **r.notes,
                }
                for r in results
            ],
            "skipped": sorted(skipped, key=lambda s: s["case"]),
            "reduced_slices": n_reduced,
            "estimated_bytes": estimate,
            "timings": {
                "check_s": round(check_seconds, 3),
                "total_s": round(total, 3),
                "per_case_s": round(total / len(results), 3),
                "workers": int(settings.workers),
            },
            "stats": stats,
        }
        write_provenance(tmp, record)
    return output


def summarize(record: dict[str, Any]) -> str:
    """The lines printed at the end of a run: sizes, splits, clipped intensities, skipped cases."""
    stats = record["stats"]
    splits = stats["splits"]
    lines = [
        f"prepared {len(record['cases'])} cases, {stats['num_slices']} slices "
        f"(train {splits['train']}, val {splits['val']}, test {splits['test']}; reduced {record['reduced_slices']}) "
        f"into {record['config']['output']} in {record['timings']['total_s']:.1f} s",
    ]
    if stats.get("sequences"):
        lines.append(f"  sequences: {', '.join(stats['sequences'])} (images/<sequence>/<id>.png)")
    for case in record["cases"]:
        if case["negatives_clipped"]:
            lines.append(f"  {case['case']}: {case['negatives_clipped']} negative voxels clipped to 0")
    lines.extend(release_lines(record))
    if record["skipped"]:
        lines.append(f"skipped {len(record['skipped'])} cases:")
        lines.extend(f"  {s['case']}: {s['reason']}" for s in record["skipped"])
    return "\n".join(lines)


def main(cfg: DictConfig) -> Path:
    """Hydra entry of ``synthseg prepare`` (``conf/prepare.yaml``)."""
    settings = PrepareSettings.from_config(cfg)  # every setting checked before any work
    output = run(settings)
    print(summarize(read_provenance(output) or {}))
    return output
