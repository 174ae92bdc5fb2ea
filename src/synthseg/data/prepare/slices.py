"""One BraTS case -> its axial slices as PNGs (the slice conversion of ``synthseg prepare``).

Per case: read the T1c and the tumor annotation, map the tumor labels to 1-3, take tissue (WM 4, GM 5, CSF 6)
from FAST outputs or the built-in segmentation (on the T1c), put tumor over tissue over background, round the
intensities of every requested sequence to 16-bit integers, and write every axial slice, zero-padded and
centred, as one 16-bit image PNG per sequence and an 8-bit label PNG. Runs in the worker processes: imports
numpy and nibabel, never torch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synthseg.data.labels import NUM_CLASSES
from synthseg.data.manifest import image_relpath
from synthseg.data.pngio import write_image16, write_label8
from synthseg.data.prepare.settings import PrepareSettings
from synthseg.data.sources.brats import (
    Case,
    apply_cavity,
    check_case,
    combine_labels,
    kept_slices,
    read_fast_tissue,
    read_sequence,
    read_tumor,
)
from synthseg.data.sources.nifti import rescale_if_scaled
from synthseg.data.sources.releases import BratsConvention
from synthseg.errors import InputError

_MAX_UINT16 = 65535


@dataclass
class CaseResult:
    """What a worker reports for one case (per-slice statistics are exact integers).

    Attributes:
        case, group: the case.
        tissue: where tissue came from (``pve``, ``pveseg``, ``fastseg``, ``builtin``).
        negatives_clipped: voxels whose rounded intensity was negative, set to 0 (all sequences).
        slice_max: per slice and sequence, maximum pixel value; Z x S.
        slice_sum: per slice and sequence, sum of pixel values; Z x S.
        counts: per slice, pixel count of each class; Z x 7.
        seconds: wall time of reading, tissue and writing.
        error: the one-line error when the case failed (then nothing else is set).
        slices: axial indices written (all but under ``cavity=drop_slice``).
        notes: per-case facts for prepare.json (cavity voxels, annotation alias, intensity scaling).
    """

    case: str
    group: str = ""
    tissue: str = ""
    negatives_clipped: int = 0
    slice_max: list[list[int]] = field(default_factory=list)
    slice_sum: list[list[int]] = field(default_factory=list)
    counts: list[list[int]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    slices: list[int] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)


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
    from synthseg.data.sources.tissue import segment_tissue  # heavy, and only needed without FAST outputs

    return segment_tissue(image, image > 0, exclude, seed=seed)


def check_inputs(
    case: Case, convention: BratsConvention, settings: PrepareSettings
) -> tuple[str, tuple[Path, ...]]:
    """Check a case's files from their headers; return the tissue source to use (kind, files).

    Raises:
        InputError: naming the file and the problem (see :func:`synthseg.data.sources.brats.check_case`), or the case
            folder when ``tissue=fast`` and it has no FAST output.
    """
    use_fast = settings.tissue != "builtin"
    check_case(case, convention, use_fast=use_fast, sequences=settings.sequences)
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
    sequences = settings.sequences
    # The T1c is always read: the grid reference and the built-in tissue segmentation's input.
    image, negatives, scaling, affine = _read_uint16(case, "t1c", convention)
    volumes: dict[str, np.ndarray] = {"t1c": image}
    clipped, scalings = {"t1c": negatives}, {"t1c": scaling}
    for seq in sequences:
        if seq != "t1c":  # headers already checked to share the T1c's grid
            volumes[seq], clipped[seq], scalings[seq], _ = _read_uint16(case, seq, convention)
    tumor = read_tumor(case, convention, image.shape, affine, settings.cavity)
    t1 = time.perf_counter()
    tissue = (
        read_fast_tissue(kind, files)
        if kind != "builtin"
        else _segment_builtin(image, tumor.excluded, settings.seed)
    )
    if tissue.shape != image.shape:
        raise InputError(f"{case.name}: tissue map shape {tissue.shape} does not match the T1c {image.shape}")
    label = apply_cavity(combine_labels(tumor.tumor, tissue), tumor.cavity, settings.cavity)
    keep = kept_slices(tumor.cavity, settings.cavity, image.shape[2])
    # (Z, S, size, size): only the requested sequences, in their order
    images = np.stack([pad_center(volumes[seq], settings.size, case.file(seq))[keep] for seq in sequences], 1)
    del volumes, image
    labels = pad_center(label, settings.size, case.seg)[keep]
    t2 = time.perf_counter()

    written: list[Path] = []
    try:
        for k, index in enumerate(keep):
            stem = slice_id(case.name, index)
            for s, seq in enumerate(sequences):
                path = out / image_relpath(stem, seq, sequences)
                written.append(path)
                write_image16(path, images[k, s])
            path = out / "labels" / f"{stem}.png"
            written.append(path)
            write_label8(path, labels[k])
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    counts = np.stack([(labels == c).sum(axis=(1, 2)) for c in range(NUM_CLASSES)], axis=1)
    t3 = time.perf_counter()
    notes: dict[str, Any] = {
        **tumor.notes,
        "intensity_scaling": scalings["t1c"] if "t1c" in sequences else None,
    }
    if tuple(sequences) != ("t1c",):
        notes["intensity_scaling_by_sequence"] = {seq: scalings[seq] for seq in sequences}
        notes["negatives_by_sequence"] = {seq: clipped[seq] for seq in sequences}
    return CaseResult(
        case=case.name,
        group=case.group,
        tissue=kind,
        negatives_clipped=sum(clipped[seq] for seq in sequences),
        slice_max=images.max(axis=(2, 3)).astype(int).tolist(),
        slice_sum=images.sum(axis=(2, 3), dtype=np.int64).astype(int).tolist(),
        counts=counts.astype(int).tolist(),
        seconds={"read": t1 - t0, "tissue": t2 - t1, "write": t3 - t2},
        slices=keep,
        notes=notes,
    )


def _read_uint16(
    case: Case, seq: str, convention: BratsConvention
) -> tuple[np.ndarray, int, Any, np.ndarray]:
    """One sequence as uint16 (the one intensity rule), its clipped-negative count, scaling note and affine."""
    path = case.file(seq)
    assert path is not None
    raw, affine = read_sequence(case, seq, convention)
    raw, scaling = rescale_if_scaled(raw)
    image, negatives = to_uint16(raw, path)
    del raw
    if not image.any():
        raise InputError(f"{path}: no positive intensities (all values round to 0 or below)")
    return image, negatives, scaling, affine


def slice_id(case: str, index: int) -> str:
    """File stem of a real slice: ``<case>_<slice:03d>``."""
    return f"{case}_{index:03d}"
