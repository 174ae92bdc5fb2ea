"""``synthseg prepare``: a BraTS-layout root -> the prepared 7-class slice dataset (docs/dataset_layout.md).

Per case: read the T1c and the tumor annotation, map the tumor labels to 1-3, take tissue (WM 4, GM 5, CSF 6)
from FAST outputs or the built-in segmentation, put tumor over tissue over background, round the
intensities to 16-bit integers, and write every axial slice, zero-padded and centred, as a 16-bit image PNG
and an 8-bit label PNG. Then split (``paper``: shuffled slices 80/10/10; ``subject``: cases 80/10/10), mark
the reduced set and write ``manifest.csv``, ``stats.json`` and ``prepare.json``.

The dataset is written into a temporary sibling of the output and renamed into place when complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.brats import (
    BratsConvention,
    Case,
    check_case,
    combine_labels,
    find_cases,
    make_convention,
    map_tumor_labels,
    read_fast_tissue,
)
from synthseg.data.labels import NUM_CLASSES
from synthseg.data.manifest import REQUIRED_COLUMNS, SPLITS
from synthseg.data.nifti import check_same_grid, read_header, read_image, read_labels
from synthseg.data.pngio import write_image16, write_label8
from synthseg.errors import InputError
from synthseg.utils.atomic import check_free_space
from synthseg.utils.outputs import DATASET_LATER, check_output, claim_output
from synthseg.utils.procs import die_with_parent

DATASET_FORMAT = "synthseg-dataset/1"
MANIFEST_COLUMNS = REQUIRED_COLUMNS  # the dataset contract (docs/dataset_layout.md), in its column order
# Bytes per output pixel (image + label PNG) for the size estimate made before writing: the demo cohort
# measures 0.25, 16-bit noise over a whole 240x240 slice 1.6; real T1c slices lie between.
_BYTES_PER_PIXEL_ESTIMATE = 1.0
_MAX_UINT16 = 65535


@dataclass(frozen=True)
class PrepareSettings:
    """Everything ``synthseg prepare`` takes (see ``conf/prepare.yaml`` and docs/prepare.md).

    Attributes:
        source: BraTS-layout root.
        output: the prepared dataset folder to write.
        convention: ``brats2018`` or ``brats2023``; ``groups``, ``image_suffix``, ``seg_suffix``,
            ``enhancing`` override it when not None.
        size: slices are zero-padded, centred, to ``size`` x ``size``.
        split: ``paper`` (shuffle all slices, split 80/10/10) or ``subject`` (split cases).
        split_fractions: train, val, test fractions (sum 1).
        reduced_fraction: the reduced set is this first fraction of the shuffled training slices.
        seed: shuffling seed (and the built-in tissue segmentation's).
        workers: parallel processes over cases (1: in this process).
        on_error: ``stop`` (nothing is written) or ``skip`` (the case is left out, with a warning).
        tissue: ``auto`` (FAST outputs when present, else built-in), ``fast`` (FAST outputs required) or
            ``builtin`` (ignore FAST outputs).
        overwrite: replace an existing output folder.
        progress: show a progress bar.
    """

    source: str
    output: str
    convention: str = "brats2018"
    groups: tuple[str, ...] | None = None
    image_suffix: str | None = None
    seg_suffix: str | None = None
    enhancing: int | None = None
    size: int = 256
    split: str = "paper"
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    reduced_fraction: float = 0.2
    seed: int = 0
    workers: int = 2
    on_error: str = "stop"
    tissue: str = "auto"
    overwrite: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        if self.split not in ("paper", "subject"):
            raise InputError(f"split must be 'paper' or 'subject', got {self.split!r}")
        if self.on_error not in ("stop", "skip"):
            raise InputError(f"on_error must be 'stop' or 'skip', got {self.on_error!r}")
        if self.tissue not in ("auto", "fast", "builtin"):
            raise InputError(f"tissue must be 'auto', 'fast' or 'builtin', got {self.tissue!r}")
        if int(self.size) < 1:
            raise InputError(f"size must be a positive number of pixels, got {self.size}")
        if int(self.workers) < 1:
            raise InputError(f"workers must be at least 1, got {self.workers}")
        fractions = tuple(float(f) for f in self.split_fractions)
        if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise InputError(
                f"split_fractions must be three positive numbers summing to 1, got {list(fractions)}"
            )
        if not 0.0 < float(self.reduced_fraction) <= 1.0:
            raise InputError(f"reduced_fraction must be in (0, 1], got {self.reduced_fraction}")

    @classmethod
    def from_config(cls, cfg: Any) -> PrepareSettings:
        """Build from a (Hydra) mapping; unknown keys are an error naming them."""
        from omegaconf import DictConfig, OmegaConf

        values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
        assert isinstance(values, dict)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(f"unknown prepare setting(s): {', '.join(map(str, unknown))}")
        for key in ("source", "output"):
            if values.get(key) in (None, "", "???"):
                raise InputError(f"{key}=DIR is required")
        if values.get("groups") is not None:
            groups = values["groups"]
            values["groups"] = (groups,) if isinstance(groups, str) else tuple(groups)
        if "split_fractions" in values:
            values["split_fractions"] = tuple(values["split_fractions"])
        return cls(**values)

    def brats_convention(self) -> BratsConvention:
        return make_convention(
            self.convention,
            groups=self.groups,
            image_suffix=self.image_suffix,
            seg_suffix=self.seg_suffix,
            enhancing=self.enhancing,
        )


@dataclass
class CaseResult:
    """What a worker reports for one case (per-slice statistics are exact integers).

    Attributes:
        case, group: the case.
        tissue: where tissue came from (``pve``, ``pveseg``, ``fastseg``, ``builtin``).
        negatives_clipped: voxels whose rounded intensity was negative, set to 0.
        slice_max: per slice, maximum pixel value; length Z.
        slice_sum: per slice, sum of pixel values; length Z.
        counts: per slice, pixel count of each class; Z x 7.
        seconds: wall time of reading, tissue and writing.
        error: the one-line error when the case failed (then nothing else is set).
    """

    case: str
    group: str = ""
    tissue: str = ""
    negatives_clipped: int = 0
    slice_max: list[int] = field(default_factory=list)
    slice_sum: list[int] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def to_uint16(data: np.ndarray, path: Path) -> tuple[np.ndarray, int]:
    """The one intensity rule: round to integers, clip negatives to 0, refuse values above 65535.

    Args:
        data: intensities of any numeric type, any shape.
        path: the file, named in errors.

    Returns:
        ``(image, negatives)``: uint16 array of the same shape, and the number of voxels clipped from below.

    Raises:
        InputError: naming the file, the largest value and how many voxels exceed 65535.
    """
    if data.dtype.kind == "f":
        data = np.rint(data)
    if data.dtype.kind == "u" and data.dtype.itemsize <= 2:
        return data.astype(np.uint16), 0
    too_big = data > _MAX_UINT16
    if too_big.any():
        raise InputError(
            f"{path}: intensity {data.max():g} above 65535 in {int(too_big.sum())} voxels "
            "(16-bit output; rescale the volume first)"
        )
    negative = data < 0
    negatives = int(negative.sum())
    out = np.where(negative, 0, data).astype(np.uint16)
    return out, negatives


def pad_center(volume: np.ndarray, size: int, path: Path) -> np.ndarray:
    """Axial slices, zero-padded centred to ``size`` x ``size``.

    Args:
        volume: (X, Y, Z) voxels as stored in the NIfTI file.
        size: output side length; must be at least X and Y.
        path: the file, named in errors.

    Returns:
        (Z, size, size) contiguous array: slice k is ``volume[:, :, k].T`` (rows follow the second voxel
        axis, which shows BraTS volumes anterior-up), with ``(size - Y) // 2`` zero rows above and
        ``(size - X) // 2`` zero columns to the left.
    """
    x, y, z = volume.shape
    if x > size or y > size:
        raise InputError(f"{path}: in-plane size {x}x{y} is larger than size={size}")
    out = np.zeros((z, size, size), dtype=volume.dtype)
    top, left = (size - y) // 2, (size - x) // 2
    out[:, top : top + y, left : left + x] = np.transpose(volume, (2, 1, 0))
    return out


def _segment_builtin(image: np.ndarray, exclude: np.ndarray, seed: int) -> np.ndarray:
    from synthseg.data.tissue import segment_tissue  # heavy, and only needed without FAST outputs

    return segment_tissue(image, image > 0, exclude, seed=seed)


def check_inputs(
    case: Case, convention: BratsConvention, settings: PrepareSettings
) -> tuple[str, tuple[Path, ...]]:
    """Check a case's files from their headers; return the tissue source to use (kind, files).

    Raises:
        InputError: naming the file and the problem (see :func:`synthseg.data.brats.check_case`), or the case
            folder when ``tissue=fast`` and it has no FAST output.
    """
    use_fast = settings.tissue != "builtin"
    check_case(case, convention, use_fast=use_fast)
    kind, files = case.tissue if use_fast else ("builtin", ())
    if settings.tissue == "fast" and kind == "builtin":
        raise InputError(
            f"{case.folder}: tissue=fast but no FAST output found "
            f"(expected {convention.fast_stem(case.name, 'pve_0')}.nii.gz etc.)"
        )
    return kind, files


def process_case(case: Case, convention: BratsConvention, settings: PrepareSettings, out: Path) -> CaseResult:
    """Read, label and slice one case, writing its PNGs under ``out/images`` and ``out/labels``.

    All input problems are found before the first PNG is written.

    Raises:
        InputError: naming the file and the problem.
    """
    t0 = time.perf_counter()
    kind, files = check_inputs(case, convention, settings)
    assert case.t1c is not None and case.seg is not None
    raw, affine = read_image(case.t1c)
    image, negatives = to_uint16(raw, case.t1c)
    del raw
    if not image.any():
        raise InputError(f"{case.t1c}: no positive intensities (all values round to 0 or below)")
    seg, seg_affine = read_labels(case.seg)
    check_same_grid(case.t1c, image.shape, affine, case.seg, seg.shape, seg_affine)
    tumor = map_tumor_labels(seg, convention, case.seg)
    del seg
    t1 = time.perf_counter()
    tissue = (
        read_fast_tissue(kind, files)
        if kind != "builtin"
        else _segment_builtin(image, tumor > 0, settings.seed)
    )
    if tissue.shape != image.shape:
        raise InputError(f"{case.name}: tissue map shape {tissue.shape} does not match the T1c {image.shape}")
    label = combine_labels(tumor, tissue)
    images = pad_center(image, settings.size, case.t1c)
    labels = pad_center(label, settings.size, case.seg)
    t2 = time.perf_counter()

    written: list[Path] = []
    try:
        for k in range(images.shape[0]):
            stem = slice_id(case.name, k)
            for path, writer, array in (
                (out / "images" / f"{stem}.png", write_image16, images[k]),
                (out / "labels" / f"{stem}.png", write_label8, labels[k]),
            ):
                written.append(path)
                writer(path, array)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    counts = np.stack([(labels == c).sum(axis=(1, 2)) for c in range(NUM_CLASSES)], axis=1)
    t3 = time.perf_counter()
    return CaseResult(
        case=case.name,
        group=case.group,
        tissue=kind,
        negatives_clipped=negatives,
        slice_max=[int(v) for v in images.max(axis=(1, 2))],
        slice_sum=[int(v) for v in images.sum(axis=(1, 2), dtype=np.int64)],
        counts=counts.astype(int).tolist(),
        seconds={"read": t1 - t0, "tissue": t2 - t1, "write": t3 - t2},
    )


def slice_id(case: str, index: int) -> str:
    """File stem of a real slice: ``<case>_<slice:03d>``."""
    return f"{case}_{index:03d}"


def _worker(job: tuple[Case, BratsConvention, PrepareSettings, Path]) -> CaseResult:
    case = job[0]
    try:
        return process_case(*job)
    except InputError as err:
        return CaseResult(case=case.name, group=case.group, error=str(err))


def split_counts(n: int, fractions: tuple[float, float, float], what: str) -> tuple[int, int, int]:
    """Train, val and test sizes for ``n`` items: val and test rounded (at least 1 each), train the rest.

    Raises:
        InputError: when ``n`` is too small for three non-empty splits.
    """
    n_val = max(1, math.floor(n * fractions[1] + 0.5))
    n_test = max(1, math.floor(n * fractions[2] + 0.5))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise InputError(f"{n} {what} are too few for train, val and test splits (need at least 3)")
    return n_train, n_val, n_test


def assign_splits(
    cases: list[str], slices_per_case: list[int], settings: PrepareSettings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The manifest's row order, split and reduced flag.

    Slices are numbered case by case (cases in the given order, slices 0..Z-1).

    Args:
        cases: case names, sorted.
        slices_per_case: number of slices of each case.
        settings: split mode, fractions, reduced fraction and seed.

    Returns:
        ``(order, split, reduced)``: slice numbers in manifest order (training rows first, in shuffled order,
        then validation, then test), each row's split index (0 train, 1 val, 2 test) and reduced flag.
    """
    rng = np.random.default_rng(settings.seed)
    n = int(sum(slices_per_case))
    case_of = np.repeat(np.arange(len(cases)), slices_per_case)
    if settings.split == "paper":
        shuffled = rng.permutation(n)
        n_train, n_val, _ = split_counts(n, settings.split_fractions, "slices")
        split_of = np.empty(n, dtype=np.int64)
        split_of[shuffled[:n_train]] = 0
        split_of[shuffled[n_train : n_train + n_val]] = 1
        split_of[shuffled[n_train + n_val :]] = 2
    else:
        case_order = rng.permutation(len(cases))
        n_train, n_val, _ = split_counts(len(cases), settings.split_fractions, "cases")
        case_split = np.empty(len(cases), dtype=np.int64)
        case_split[case_order[:n_train]] = 0
        case_split[case_order[n_train : n_train + n_val]] = 1
        case_split[case_order[n_train + n_val :]] = 2
        split_of = case_split[case_of]
        shuffled = rng.permutation(n)
    # A stable sort by split keeps the shuffled order inside each split.
    order = shuffled[np.argsort(split_of[shuffled], kind="stable")]
    split = split_of[order]
    n_train_rows = int((split == 0).sum())
    n_reduced = max(1, math.floor(n_train_rows * settings.reduced_fraction + 0.5))
    reduced = np.zeros(n, dtype=bool)
    reduced[:n_reduced] = True
    return order, split, reduced


def build_manifest(results: list[CaseResult], settings: PrepareSettings) -> tuple[str, dict[str, Any]]:
    """The manifest text (CSV) and stats.json content of the processed cases (sorted by name).

    Returns:
        ``(manifest_csv, stats)``.
    """
    names = [r.case for r in results]
    depths = [len(r.slice_max) for r in results]
    order, split, reduced = assign_splits(names, depths, settings)
    case_index = np.repeat(np.arange(len(results)), depths)
    slice_index = np.concatenate([np.arange(d) for d in depths])
    counts = np.concatenate([np.asarray(r.counts, dtype=np.int64).reshape(-1, NUM_CLASSES) for r in results])
    maxima = np.concatenate([np.asarray(r.slice_max, dtype=np.int64) for r in results])
    sums = [s for r in results for s in r.slice_sum]

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for row, number in enumerate(order):
        case = names[case_index[number]]
        stem = slice_id(case, int(slice_index[number]))
        row_counts = counts[number]
        writer.writerow(
            [
                stem,
                case,
                int(slice_index[number]),
                SPLITS[split[row]],
                "real",
                int(reduced[row]),
                int(row_counts[1:].sum() == 0),
                f"images/{stem}.png",
                f"labels/{stem}.png",
                *(int(c) for c in row_counts),
            ]
        )

    train = order[split == 0]
    train_max = int(maxima[train].max())
    if train_max == 0:
        raise InputError("the training split has no image intensity above 0")
    pixels = len(train) * settings.size * settings.size
    train_mean = sum(sums[i] for i in train.tolist()) / pixels / train_max
    class_counts = counts[train].sum(axis=0)
    from synthseg.data.labels import class_weights_from_counts  # imports torch: keep it out of the workers

    stats = {
        "format": DATASET_FORMAT,
        "source": "real",
        "size": int(settings.size),
        "num_slices": int(len(order)),
        "splits": {name: int((split == i).sum()) for i, name in enumerate(SPLITS)},
        "split_mode": settings.split,
        "seed": int(settings.seed),
        "reduced_fraction": float(settings.reduced_fraction),
        "train_max": train_max,
        "train_mean": float(train_mean),
        "class_counts": [int(c) for c in class_counts],
        "class_frequencies": [float(c) / float(class_counts.sum()) for c in class_counts],
        "class_weights": [float(w) for w in class_weights_from_counts(class_counts)],
    }
    return buffer.getvalue(), stats


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


def _run_cases(
    cases: list[Case], convention: BratsConvention, settings: PrepareSettings, tmp: Path
) -> list[CaseResult]:
    """Process cases (in parallel when workers > 1); in ``stop`` mode the first error is raised."""
    from tqdm import tqdm

    jobs = [(case, convention, settings, tmp) for case in cases]
    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not settings.progress, file=sys.stderr)
    results: list[CaseResult] = []

    def collect(result: CaseResult) -> None:
        bar.update(1)
        if result.error is not None and settings.on_error == "stop":
            raise InputError(result.error)
        results.append(result)

    try:
        workers = min(int(settings.workers), len(jobs))
        if workers <= 1:
            for job in jobs:
                collect(_worker(job))
        else:
            # spawn: the workers need numpy and nibabel only, never a forked copy of the parent's threads
            context = multiprocessing.get_context("spawn")
            # die_with_parent: a SIGKILLed prepare must not leave workers writing into its partial folder
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=die_with_parent, initargs=(os.getpid(),)
            ) as pool:
                pending: set[Future[CaseResult]] = {pool.submit(_worker, job) for job in jobs}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in sorted(done, key=lambda f: f.result().case):
                            collect(future.result())
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return sorted(results, key=lambda r: r.case)


def prepare_dataset(settings: PrepareSettings) -> dict[str, Any]:
    """Run the preparation stage.

    Returns:
        The content of prepare.json (config, code version, cases, skipped cases with reasons, timings).

    Raises:
        InputError: one line naming the file (or setting) and the problem; with ``on_error=stop`` nothing
            is written.
    """
    start = time.perf_counter()
    source, output = _check_paths(settings)
    convention = settings.brats_convention()
    cases = find_cases(source, convention)

    # Header pass: catch missing, foreign and mismatched files in seconds, before any voxel is read.
    skipped: list[dict[str, str]] = []
    usable: list[Case] = []
    depth_total = 0
    for case in cases:
        try:
            check_inputs(case, convention, settings)
            assert case.t1c is not None
            depth_total += read_header(case.t1c).shape[2]
            usable.append(case)
        except InputError as err:
            if settings.on_error == "stop":
                raise
            _warn(f"skipping {case.name}: {err}")
            skipped.append({"case": case.name, "reason": str(err)})
    if not usable:
        raise InputError(f"{source}: no usable case ({len(skipped)} skipped)")
    check_seconds = time.perf_counter() - start

    estimate = int(depth_total * settings.size * settings.size * _BYTES_PER_PIXEL_ESTIMATE)
    try:
        check_free_space(output.parent, estimate, "the prepared dataset")
    except OSError as err:
        raise InputError(str(err)) from None

    with claim_output(
        output, command="prepare", inputs=[source], overwrite=settings.overwrite, later=DATASET_LATER
    ) as tmp:
        (tmp / "images").mkdir()
        (tmp / "labels").mkdir()
        results = []
        for result in _run_cases(usable, convention, settings, tmp):
            if result.error is not None:
                _warn(f"skipping {result.case}: {result.error}")
                skipped.append({"case": result.case, "reason": result.error})
            else:
                results.append(result)
        if not results:
            raise InputError(f"{source}: no usable case ({len(skipped)} skipped)")
        manifest, stats = build_manifest(results, settings)
        (tmp / "manifest.csv").write_text(manifest)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")

        split_of_case: dict[str, set[str]] = {}
        n_reduced = 0
        for line in manifest.splitlines()[1:]:
            cells = line.split(",")
            split_of_case.setdefault(cells[1], set()).add(cells[3])
            n_reduced += int(cells[5])
        total = time.perf_counter() - start
        record = {
            "format": "synthseg-prepare/1",
            "config": {**asdict(settings), "source": str(source), "output": str(output)},
            "convention": asdict(convention),
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
        (tmp / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def summarize(record: dict[str, Any]) -> str:
    """The lines printed at the end of a run: sizes, splits, clipped intensities, skipped cases."""
    stats = record["stats"]
    splits = stats["splits"]
    lines = [
        f"prepared {len(record['cases'])} cases, {stats['num_slices']} slices "
        f"(train {splits['train']}, val {splits['val']}, test {splits['test']}; reduced {record['reduced_slices']}) "
        f"into {record['config']['output']} in {record['timings']['total_s']:.1f} s",
    ]
    for case in record["cases"]:
        if case["negatives_clipped"]:
            lines.append(f"  {case['case']}: {case['negatives_clipped']} negative voxels clipped to 0")
    if record["skipped"]:
        lines.append(f"skipped {len(record['skipped'])} cases:")
        lines.extend(f"  {s['case']}: {s['reason']}" for s in record["skipped"])
    return "\n".join(lines)


def main(cfg: Any) -> dict[str, Any]:
    """Entry point of ``synthseg prepare`` (receives the composed Hydra config)."""
    settings = PrepareSettings.from_config(cfg)
    record = prepare_dataset(settings)
    print(summarize(record))
    return record
