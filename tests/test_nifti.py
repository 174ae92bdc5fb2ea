"""NIfTI reading: any dtype, .nii and .nii.gz, and one clear line naming the file for every bad input."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from synthseg.data.sources.nifti import (
    check_same_grid,
    find_nifti,
    read_header,
    read_image,
    read_labels,
    rescale_if_scaled,
)
from synthseg.errors import InputError

AFFINE = np.diag([-1.0, -1.0, 1.0, 1.0])


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def volume(rng: np.random.Generator, dtype: type = np.int16) -> np.ndarray:
    return rng.integers(0, 1000, (9, 8, 5)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_read_image_any_dtype_and_extension(tmp_path: Path, dtype: type, ext: str) -> None:
    data = volume(np.random.default_rng(0), dtype)
    path = save(tmp_path / f"a{ext}", data)
    out, affine = read_image(path)
    assert out.shape == (9, 8, 5)
    np.testing.assert_array_equal(out, data)
    np.testing.assert_allclose(affine, AFFINE)


def test_scaled_image_reads_scaled_values(tmp_path: Path) -> None:
    data = np.arange(9 * 8 * 5, dtype=np.int16).reshape(9, 8, 5)
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_slope_inter(2.0, 10.0)
    nib.save(image, str(tmp_path / "s.nii.gz"))
    out, _ = read_image(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(out, data * 2.0 + 10.0)


def test_trailing_singleton_dimension_dropped(tmp_path: Path) -> None:
    data = volume(np.random.default_rng(1))[..., None]
    out, _ = read_image(save(tmp_path / "a.nii.gz", data))
    assert out.shape == (9, 8, 5)
    assert read_header(tmp_path / "a.nii.gz").shape == (9, 8, 5)


def test_labels_float_integral_accepted(tmp_path: Path) -> None:
    data = np.random.default_rng(2).integers(0, 5, (9, 8, 5)).astype(np.float32)
    out, _ = read_labels(save(tmp_path / "seg.nii.gz", data))
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, data.astype(np.int64))


def test_find_nifti_finds_either_and_refuses_both(tmp_path: Path) -> None:
    # Issue 12 finding 8: with both files present, picking the gzip one silently is refused (ambiguous).
    data = volume(np.random.default_rng(3))
    save(tmp_path / "x.nii", data)
    assert find_nifti(tmp_path, "x") == tmp_path / "x.nii"
    save(tmp_path / "z.nii.gz", data)
    assert find_nifti(tmp_path, "z") == tmp_path / "z.nii.gz"
    save(tmp_path / "x.nii.gz", data)
    with pytest.raises(InputError, match=r"x: both x\.nii\.gz and x\.nii exist \(ambiguous"):
        find_nifti(tmp_path, "x")
    assert find_nifti(tmp_path, "y") is None


def _good_bytes(tmp_path: Path, ext: str) -> bytes:
    path = save(tmp_path / f"good{ext}", volume(np.random.default_rng(4)))
    return path.read_bytes()


def _bad_file(tmp_path: Path, kind: str) -> Path:
    """A file with one defect, named as the reader will see it."""
    if kind == "zero-byte":
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(b"")
    elif kind == "truncated-gz":
        path = tmp_path / "bad.nii.gz"
        raw = _good_bytes(tmp_path, ".nii.gz")
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "truncated-nii":
        path = tmp_path / "bad.nii"
        raw = _good_bytes(tmp_path, ".nii")
        path.write_bytes(raw[:-100])
    elif kind == "not-nifti":
        path = tmp_path / "bad.nii"
        path.write_bytes(b"this is a text file, not an image\n" * 20)
    elif kind == "not-nifti-gz":
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(gzip.compress(b"plain text inside gzip\n" * 40))
    elif kind == "not-gzip":
        path = tmp_path / "bad.nii.gz"
        path.write_bytes(_good_bytes(tmp_path, ".nii"))
    elif kind == "nan":
        data = volume(np.random.default_rng(5), np.float32)
        data[1, 2, 3] = np.nan
        path = save(tmp_path / "bad.nii.gz", data)
    elif kind == "inf":
        data = volume(np.random.default_rng(5), np.float32)
        data[0, 0, 0] = np.inf
        path = save(tmp_path / "bad.nii.gz", data)
    elif kind == "all-zero":
        path = save(tmp_path / "bad.nii.gz", np.zeros((9, 8, 5), np.int16))
    elif kind == "4d":
        path = save(tmp_path / "bad.nii.gz", np.ones((9, 8, 5, 2), np.int16))
    elif kind == "missing":
        path = tmp_path / "bad.nii.gz"
    else:  # pragma: no cover
        raise AssertionError(kind)
    return path


BAD_IMAGES = [
    ("zero-byte", "empty file"),
    ("truncated-gz", "truncated"),
    ("truncated-nii", "truncated"),
    ("not-nifti", "not a NIfTI file"),
    ("not-nifti-gz", "not a NIfTI file"),
    ("not-gzip", "not gzip-compressed"),
    ("nan", "1 NaN and 0 infinite"),
    ("inf", "0 NaN and 1 infinite"),
    ("all-zero", "all-zero volume"),
    ("4d", "expected a 3-D volume"),
    ("missing", "file not found"),
]


@pytest.mark.parametrize(("kind", "message"), BAD_IMAGES)
def test_bad_image_one_line_naming_file(tmp_path: Path, kind: str, message: str) -> None:
    path = _bad_file(tmp_path, kind)
    with pytest.raises(InputError) as info:
        read_image(path)
    text = str(info.value)
    assert text.startswith(str(path)), text
    assert message in text
    assert "\n" not in text


def test_non_integral_labels(tmp_path: Path) -> None:
    data = np.zeros((9, 8, 5), np.float32)
    data[2, 2, 2] = 1.5
    data[3, 3, 3] = 2.25
    path = save(tmp_path / "seg.nii.gz", data)
    with pytest.raises(InputError, match=r"seg\.nii\.gz: label values must be whole numbers, found 2 voxels"):
        read_labels(path)


def test_labels_with_nan(tmp_path: Path) -> None:
    data = np.zeros((9, 8, 5), np.float32)
    data[0, 1, 2] = np.nan
    with pytest.raises(InputError, match="1 NaN"):
        read_labels(save(tmp_path / "seg.nii.gz", data))


def test_check_same_grid(tmp_path: Path) -> None:
    a, b = tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"
    check_same_grid(a, (2, 3, 4), AFFINE, b, (2, 3, 4), AFFINE + 1e-5)
    with pytest.raises(
        InputError, match=r"b\.nii\.gz: shape \(2, 3, 5\) does not match a\.nii\.gz shape \(2, 3, 4\)"
    ):
        check_same_grid(a, (2, 3, 4), AFFINE, b, (2, 3, 5), AFFINE)
    shifted = AFFINE.copy()
    shifted[0, 3] = 2.0
    with pytest.raises(
        InputError, match=r"b\.nii\.gz: affine does not match a\.nii\.gz \(largest difference 2"
    ):
        check_same_grid(a, (2, 3, 4), AFFINE, b, (2, 3, 4), shifted)


def test_four_d_image_read_by_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    channels = [volume(rng, np.float32) for _ in range(4)]
    path = save(tmp_path / "BRATS_001.nii.gz", np.stack(channels, axis=-1))
    assert read_header(path, channel=2).shape == (9, 8, 5)
    out, _ = read_image(path, channel=2)
    np.testing.assert_array_equal(out, channels[2])
    with pytest.raises(
        InputError, match=r"BRATS_001\.nii\.gz: expected a 3-D volume, found shape \(9, 8, 5, 4\)"
    ):
        read_image(path)
    with pytest.raises(InputError, match=r"BRATS_001\.nii\.gz: expected a 4-D image with channel 4"):
        read_header(path, channel=4)
    flat = save(tmp_path / "flat.nii.gz", channels[0])
    with pytest.raises(InputError, match=r"flat\.nii\.gz: expected a 4-D image with channel 0"):
        read_image(flat, channel=0)


@pytest.mark.parametrize("kind", ["unit", "zscore"])
def test_scaled_float_spread_over_16_bits(kind: str) -> None:
    rng = np.random.default_rng(4)
    brain = np.zeros((9, 8, 5), bool)
    brain[1:-1, 1:-1] = True
    values = rng.random(brain.shape) if kind == "unit" else rng.normal(0.0, 1.0, brain.shape)
    data = np.where(brain, values, 0.0).astype(np.float32)
    out, scaling = rescale_if_scaled(data)
    assert scaling is not None
    inside = data[brain].astype(np.float64)
    expected = (inside - scaling["offset"]) * scaling["factor"]
    np.testing.assert_allclose(out[brain], expected)
    assert np.rint(out[brain]).min() == 1 and np.rint(out[brain]).max() == 65535
    assert (out[~brain] == 0).all()  # the background stays background


@pytest.mark.parametrize(
    "data",
    [
        np.array([0, 120, 3000, 17], np.int16),  # integer type
        np.array([0, 120.0, 3000.0, 17.0], np.float32),  # integer-valued float (MSD)
        np.array([0, 0.5, 428.25, 17.75], np.float32),  # raw units with fractions
        np.array([0, 0, 0, 0], np.float32),  # nothing inside
    ],
)
def test_other_images_left_as_they_are(data: np.ndarray) -> None:
    out, scaling = rescale_if_scaled(data)
    assert scaling is None and out is data
