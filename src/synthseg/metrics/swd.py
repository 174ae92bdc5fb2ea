"""``synthseg swd a=DIR b=DIR`` (config ``conf/swd.yaml``): the SWD of :mod:`synthseg.metrics.sliced_wasserstein` between two
folders of PNGs or dataset folders, printed as one JSON object on the last line (``docs/swd.md``)."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor

from synthseg.data.manifest import is_dataset_folder, manifest_files
from synthseg.errors import InputError
from synthseg.metrics.sliced_wasserstein import (
    LABEL_MAX,
    LABEL_TO_UINT8,
    level_resolutions,
    sliced_wasserstein_from_batches,
)
from synthseg.settings import Settings, check_choice, check_device, check_positive


def _png_files(root: Path, inputs: str) -> list[Path]:
    """The PNG files a folder stands for: a prepared dataset's training labels (or images), else its PNGs."""
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    if is_dataset_folder(root) and (root / "labels").is_dir():
        return manifest_files(root, "image" if inputs == "images" else "label", "train")
    files = sorted(root.glob("*.png"))
    if not files and (root / "labels").is_dir() and any((root / "labels").glob("*.png")):
        raise InputError(
            f"{root}: no manifest.csv and no PNG files of its own; to compare its masks, give {root / 'labels'}"
        )
    if not files:
        raise InputError(f"{root}: no PNG files (expected a folder of PNGs or a prepared dataset folder)")
    return files


def _read(path: Path, kind: str, shape: tuple[int, int] | None) -> np.ndarray:
    """One PNG as a float32 (H, W) array of the values the metric sees."""
    from synthseg.data.pngio import read_png

    array = read_png(path, shape=shape)
    if kind == "labels":
        if array.dtype != np.uint8 or int(array.max(initial=0)) > LABEL_MAX:
            raise InputError(
                f"{path}: not a 7-class label map (values 0..{LABEL_MAX} in an 8-bit PNG); "
                "use inputs=images to compare images"
            )
        return LABEL_TO_UINT8[array].astype(np.float32)
    return array.astype(np.float32)


def _kind_of(path: Path, inputs: str) -> str:
    """'labels' or 'images' for the files of one folder (``inputs=auto``: 8-bit PNG = label map)."""
    if inputs in ("labels", "images"):
        return inputs
    if inputs != "auto":
        raise InputError(f"inputs must be auto, labels or images, got {inputs!r}")
    from synthseg.data.pngio import read_png

    return "labels" if read_png(path).dtype == np.uint8 else "images"


def _select(files: list[Path], count: int, seed: int) -> list[Path]:
    """A seeded random subset of ``count`` files, in their original order."""
    if count == len(files):
        return files
    keep = np.sort(np.random.default_rng(seed).permutation(len(files))[:count])
    return [files[i] for i in keep]


def _file_batches(
    files: list[Path], kind: str, shape: tuple[int, int], batch_size: int, progress: Any
) -> Iterator[Tensor]:
    for start in range(0, len(files), batch_size):
        chunk = files[start : start + batch_size]
        arrays = [_read(path, kind, shape) for path in chunk]
        progress.update(len(chunk))
        yield torch.from_numpy(np.stack(arrays)[:, None])


@dataclass(frozen=True)
class SWDSettings(Settings):
    """``conf/swd.yaml``."""

    REQUIRED = {"a": "DIR", "b": "DIR"}

    a: str
    b: str
    num_images: int | None = None
    seed: int = 0
    inputs: str = "auto"
    device: str = "auto"
    batch_size: int = 256
    descriptors_per_image: int = 128
    directions: int = 128
    repeats: int = 4
    min_resolution: int = 16
    progress: bool = True

    def check(self) -> None:
        check_device("device", self.device)
        check_choice("inputs", self.inputs, ("auto", "labels", "images"))
        check_positive("num_images", self.num_images)
        check_positive("batch_size", self.batch_size)
        for key in ("descriptors_per_image", "directions", "repeats", "min_resolution"):
            check_positive(key, getattr(self, key))


def run(settings: SWDSettings) -> dict[str, float]:
    """The SWD between the folders ``settings.a`` and ``settings.b``: ``{"<level>": ..., "avg": ...}``, all x1000
    (the command writes no file; it prints this).

    A folder is either a folder of PNGs or a prepared (or synthetic) dataset folder, which stands for the
    label maps (``inputs=images``: the images) of its training split. 8-bit label maps are scaled with
    :func:`labels_to_uint8`; 16-bit images are used at full precision (see ``docs/swd.md``).
    """
    from tqdm import tqdm

    s = settings
    files_a = _png_files(Path(s.a), s.inputs)
    files_b = _png_files(Path(s.b), s.inputs)
    kind_a, kind_b = _kind_of(files_a[0], s.inputs), _kind_of(files_b[0], s.inputs)
    if kind_a != kind_b:
        raise InputError(
            f"{s.a} holds {kind_a} and {s.b} holds {kind_b}; compare like with like (or set inputs=)"
        )
    available = min(len(files_a), len(files_b))
    count = available if s.num_images is None else s.num_images
    if count < 1 or count > available:
        raise InputError(
            f"num_images={count}: the folders hold {len(files_a)} and {len(files_b)} images (at most {available})"
        )
    # Different seeds for the two subsets, so the same folder on both sides gives two different draws.
    files_a = _select(files_a, count, s.seed)
    files_b = _select(files_b, count, s.seed + 1)

    from synthseg.data.pngio import read_png

    first = read_png(files_a[0])
    shape = (int(first.shape[0]), int(first.shape[1]))
    device_name = s.device
    if device_name == "auto":
        device_name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device_name)
    except RuntimeError as err:
        raise InputError(f"device={device_name!r}: {err}") from None
    try:
        levels = level_resolutions(shape[0], s.min_resolution)
    except ValueError as err:
        raise InputError(f"{files_a[0]}: {err}") from None
    print(
        f"swd: {count} {kind_a} from {s.a} vs {count} from {s.b}, {shape[0]}x{shape[1]}, "
        f"levels {'/'.join(map(str, levels))}, device {device}",
        flush=True,
    )
    with tqdm(total=2 * count, desc="swd", unit="img", file=sys.stderr, disable=not s.progress) as progress:
        try:
            result = sliced_wasserstein_from_batches(
                _file_batches(files_a, kind_a, shape, s.batch_size, progress),
                _file_batches(files_b, kind_b, shape, s.batch_size, progress),
                seed=s.seed,
                descriptors_per_image=s.descriptors_per_image,
                directions=s.directions,
                repeats=s.repeats,
                min_resolution=s.min_resolution,
                device=device,
            )
        except ValueError as err:
            if isinstance(err, InputError):
                raise
            raise InputError(str(err)) from None
    return result


def main(cfg: DictConfig) -> dict[str, float]:
    """Hydra entry of ``synthseg swd a=DIR b=DIR``: print the SWD as one JSON object on the last line."""
    try:
        settings = SWDSettings.from_config(cfg)
    except InputError as err:
        if "is required" in str(err):
            raise InputError(f"{err}: usage: synthseg swd a=DIR b=DIR") from None
        raise
    result = run(settings)
    print(json.dumps({key: round(value, 6) for key, value in result.items()}), flush=True)
    return result
