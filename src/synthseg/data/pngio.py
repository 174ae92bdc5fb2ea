"""Lossless PNG I/O through pypng: 16-bit grayscale images and 8-bit grayscale label maps."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import png

from synthseg.errors import InputError


class PNGError(InputError):
    """A PNG file that cannot be read or does not have the expected properties."""


def write_png(path: str | os.PathLike[str], array: np.ndarray, bitdepth: int) -> None:
    """Write a 2-D array as a grayscale PNG of ``bitdepth`` 8 or 16 bits (values must fit)."""
    if array.ndim != 2:
        raise ValueError(f"{path}: a PNG slice must be 2-D, got shape {array.shape}")
    if bitdepth not in (8, 16):
        raise ValueError(f"bitdepth must be 8 or 16, got {bitdepth}")
    dtype = np.uint8 if bitdepth == 8 else np.uint16
    if array.dtype != dtype:
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"{path}: values {array.min()}..{array.max()} do not fit in {bitdepth} bits")
        array = array.astype(dtype)
    height, width = array.shape
    writer = png.Writer(width=width, height=height, greyscale=True, bitdepth=bitdepth, compression=6)
    with open(path, "wb") as handle:
        writer.write_array(handle, array.reshape(-1))


def write_image16(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write a uint16 image slice as a 16-bit grayscale PNG."""
    write_png(path, image, 16)


def write_label8(path: str | os.PathLike[str], label: np.ndarray) -> None:
    """Write a label map (values 0..255) as an 8-bit grayscale PNG."""
    write_png(path, label, 8)


def read_png(
    path: str | os.PathLike[str],
    *,
    bitdepth: int | None = None,
    shape: tuple[int, int] | None = None,
    data: bytes | None = None,
) -> np.ndarray:
    """Read a grayscale PNG into a uint8 or uint16 array, checking bit depth and size when given.

    ``data``: the file's bytes, already read by the caller (the slice cache hashes them); ``path`` names it.

    Raises:
        PNGError: naming the file, when it is missing, unreadable, not grayscale, or of the wrong bit
            depth or size.
    """
    path = Path(path)
    if data is None and not path.is_file():
        raise PNGError(f"{path}: file not found")
    try:
        reader = png.Reader(bytes=data) if data is not None else png.Reader(filename=str(path))
        width, height, rows, info = reader.read()
        data = np.vstack([np.asarray(row) for row in rows]) if height else np.zeros((0, width))
    except (png.Error, zlib.error, OSError, ValueError, EOFError) as err:  # EOFError: empty or cut file
        raise PNGError(f"{path}: not a readable PNG ({err or type(err).__name__})") from None
    if not info.get("greyscale", False) or info.get("alpha", False):
        raise PNGError(f"{path}: expected a single-channel grayscale PNG")
    depth = int(info["bitdepth"])
    if bitdepth is not None and depth != bitdepth:
        raise PNGError(f"{path}: expected a {bitdepth}-bit PNG, found {depth}-bit")
    if shape is not None and (height, width) != tuple(shape):
        raise PNGError(f"{path}: expected size {shape[0]}x{shape[1]}, found {height}x{width}")
    return data.astype(np.uint16 if depth > 8 else np.uint8).reshape(height, width)
