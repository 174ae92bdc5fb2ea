"""Reading NIfTI volumes (``.nii`` and ``.nii.gz``) with clear, one-line errors that name the file.

Every problem a user can fix (an empty, truncated or foreign file, NaN intensities, fractional labels, volumes
that do not match) becomes an :class:`~synthseg.errors.InputError` whose message starts with the file path,
never a traceback from inside nibabel or numpy.
"""

from __future__ import annotations

import gzip
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from synthseg.errors import InputError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_GZIP_MAGIC = b"\x1f\x8b"

# Voxel-to-world matrices closer than this (in mm) count as the same geometry: BraTS affines are stored
# as float32 and re-saved volumes often differ in the last bits.
AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VolumeHeader:
    """Geometry of a NIfTI volume, read without loading its voxels.

    Attributes:
        path: the file.
        shape: the 3-D voxel grid (X, Y, Z), trailing singleton dimensions dropped.
        affine: voxel-to-world matrix, shape (4, 4).
        dtype: the on-disk data type.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    dtype: np.dtype


def _check_file(path: Path) -> None:
    """Fail early, with a clear line, on problems nibabel reports badly."""
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes)")
    if path.name.endswith(".gz"):
        with open(path, "rb") as handle:
            magic = handle.read(2)
        if magic != _GZIP_MAGIC:
            raise InputError(
                f"{path}: named .nii.gz but not gzip-compressed (rename it to .nii if it is NIfTI)"
            )


def _diagnose(path: Path) -> str:
    """Why nibabel could not open ``path``: a truncated file or a foreign one."""
    if path.name.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as handle:
                head = handle.read(4)
                while handle.read(1 << 20):
                    pass
        except (EOFError, zlib.error, gzip.BadGzipFile, OSError):
            return "truncated or corrupt file (the compressed data ends early or is damaged)"
    else:
        with open(path, "rb") as handle:
            head = handle.read(4)
    # sizeof_hdr is 348 (NIfTI-1) or 540 (NIfTI-2), in either byte order: a NIfTI header that would not load
    # is a cut-off file.
    if len(head) == 4 and any(int.from_bytes(head, order) in (348, 540) for order in ("little", "big")):
        return "truncated file (the NIfTI header or data is incomplete)"
    return "not a NIfTI file"


def _load(path: Path) -> nib.Nifti1Image | nib.Nifti2Image:
    """Open a NIfTI-1 or NIfTI-2 image lazily (header only)."""
    _check_file(path)
    try:
        image = nib.load(str(path))
    except Exception:  # nibabel raises a variety of errors for foreign or damaged files
        raise InputError(f"{path}: {_diagnose(path)}") from None
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(f"{path}: not a NIfTI file (nibabel reads it as {type(image).__name__})")
    return image


def _shape3(path: Path, shape: tuple[int, ...], channel: int | None = None) -> tuple[int, int, int]:
    """Drop trailing singleton dimensions; anything but a 3-D volume is an error.

    With ``channel``, the file must be 4-D (X, Y, Z, C) with more than ``channel`` channels (MSD images).
    """
    if channel is not None:
        if len(shape) != 4 or not 0 <= channel < shape[3]:
            raise InputError(
                f"{path}: expected a 4-D image with channel {channel} (X, Y, Z, C), found shape {tuple(shape)}"
            )
        shape = tuple(shape[:3])
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3:
        raise InputError(f"{path}: expected a 3-D volume, found shape {tuple(shape)}")
    if min(dims) < 1:
        raise InputError(f"{path}: empty volume, shape {tuple(shape)}")
    return (int(dims[0]), int(dims[1]), int(dims[2]))


def read_header(path: str | os.PathLike[str], channel: int | None = None) -> VolumeHeader:
    """Read the geometry of a NIfTI volume without decompressing its voxels.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        channel: for a 4-D image (MSD), the channel that will be read; its 3-D grid is returned.

    Returns:
        Its :class:`VolumeHeader`.

    Raises:
        InputError: naming the file, when it is missing, empty, not gzip though named ``.nii.gz``, not NIfTI,
            or not a 3-D volume.
    """
    path = Path(path)
    image = _load(path)
    shape = _shape3(path, image.shape, channel)
    return VolumeHeader(path, shape, np.asarray(image.affine, dtype=np.float64), image.get_data_dtype())


def _read_array(path: Path, channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    image = _load(path)
    shape = _shape3(path, image.shape, channel)
    try:
        data = np.asanyarray(image.dataobj if channel is None else image.dataobj[..., channel])
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: truncated or corrupt file ({err})") from None
    except OSError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise InputError(f"{path}: truncated or unreadable file ({first})") from None
    except (ValueError, TypeError) as err:
        raise InputError(f"{path}: cannot read the voxel data ({err})") from None
    if data.dtype.kind not in "biuf":
        raise InputError(f"{path}: unsupported voxel type {data.dtype}")
    return np.asarray(data).reshape(shape), np.asarray(image.affine, dtype=np.float64)


def _check_finite(path: Path, data: np.ndarray) -> None:
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data)
        if bad.any():
            n_nan = int(np.isnan(data).sum())
            n_inf = int(bad.sum()) - n_nan
            raise InputError(f"{path}: {n_nan} NaN and {n_inf} infinite voxel values")


def read_image(path: str | os.PathLike[str], channel: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read an intensity volume of any on-disk type.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        channel: for a 4-D image (MSD: sequences on the last axis), the channel to read.

    Returns:
        ``(data, affine)``: the voxels (X, Y, Z) in their on-disk type (float when the header scales them)
        and the (4, 4) voxel-to-world matrix.

    Raises:
        InputError: naming the file, for every problem of :func:`read_header`, a truncated file, NaN or
            infinite values, or an all-zero volume.
    """
    path = Path(path)
    data, affine = _read_array(path, channel)
    _check_finite(path, data)
    if not data.any():
        raise InputError(f"{path}: all-zero volume (no image data)")
    return data, affine


def read_labels(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read a label volume stored in any numeric type, as long as its values are whole numbers.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        ``(labels, affine)``: int64 labels (X, Y, Z) and the (4, 4) voxel-to-world matrix.

    Raises:
        InputError: naming the file, for every problem of :func:`read_header`, a truncated file, NaN or
            infinite values, or values that are not whole numbers.
    """
    path = Path(path)
    data, affine = _read_array(path)
    _check_finite(path, data)
    if data.dtype.kind == "f":
        fractional = data != np.round(data)
        if fractional.any():
            # The shortest text that reads back as the stored value: 4.0000005 must not print as 4.
            example = np.format_float_positional(data[fractional][0], trim="-")
            raise InputError(
                f"{path}: label values must be whole numbers, found {int(fractional.sum())} voxels "
                f"with fractional values (e.g. {example})"
            )
    return data.astype(np.int64), affine


def check_same_grid(
    reference: Path,
    shape: tuple[int, ...],
    affine: np.ndarray,
    other: Path,
    other_shape: tuple[int, ...],
    other_affine: np.ndarray,
) -> None:
    """Raise when two volumes do not share one voxel grid (same shape, same affine within tolerance).

    Args:
        reference: the file the others must match (the T1c).
        shape, affine: its grid; affine (4, 4).
        other: the file being checked.
        other_shape, other_affine: its grid.

    Raises:
        InputError: naming both files and both values.
    """
    if tuple(shape) != tuple(other_shape):
        raise InputError(
            f"{other}: shape {tuple(other_shape)} does not match {reference.name} shape {tuple(shape)}"
        )
    if not np.allclose(affine, other_affine, rtol=0.0, atol=AFFINE_TOLERANCE):
        diff = float(np.abs(np.asarray(affine) - np.asarray(other_affine)).max())
        raise InputError(
            f"{other}: affine does not match {reference.name} (largest difference {diff:g}; "
            "the volumes are not on the same voxel grid)"
        )


def find_nifti(folder: Path, stem: str) -> Path | None:
    """The file ``<stem>.nii.gz`` or ``<stem>.nii`` in ``folder``, or None.

    Raises:
        InputError: when both exist: they may differ, and picking one silently could prepare the wrong one.
    """
    found = [folder / f"{stem}{ext}" for ext in NIFTI_EXTENSIONS if (folder / f"{stem}{ext}").exists()]
    if len(found) > 1:
        raise InputError(
            f"{folder / stem}: both {found[0].name} and {found[1].name} exist (ambiguous: remove or rename one)"
        )
    return found[0] if found else None


# A float image whose brain voxels span less than this many units is taken to be scaled already
# ([0, 1], z-scored): rounding it would leave a handful of grey levels.
SCALED_SPAN = 100.0
_TOP = 65535.0


def rescale_if_scaled(data: np.ndarray) -> tuple[np.ndarray, dict[str, float] | None]:
    """Spread an already-scaled float image over the 16-bit range; leave every other image as it is.

    Rescaled: a float image with fractional values whose brain voxels (the non-zero ones) span less than
    :data:`SCALED_SPAN`. Brain voxels become ``(value - offset) * factor``, from 1 (the smallest) to 65535
    (the largest); the rest stay 0. Integer-valued floats (as MSD ships) and raw-unit floats (0-428 with
    fractions) are returned unchanged, to be rounded as always.

    Returns:
        ``(data, scaling)``: the (float64) rescaled voxels and ``{"offset", "factor"}``, or the input and None.
    """
    if data.dtype.kind != "f":
        return data, None
    brain = data != 0
    values = data[brain].astype(np.float64)
    if values.size == 0 or np.array_equal(values, np.round(values)):
        return data, None
    low, high = float(values.min()), float(values.max())
    if high - low >= SCALED_SPAN:
        return data, None
    factor = (_TOP - 1.0) / (high - low) if high > low else 1.0
    offset = low - 1.0 / factor
    out = np.where(brain, (data.astype(np.float64) - offset) * factor, 0.0)
    return np.minimum(out, _TOP), {"offset": offset, "factor": factor}
