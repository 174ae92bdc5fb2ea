"""A memory-mapped cache of a dataset folder's slices, so training never waits on PNG decoding.

The PNG files stay the interchange format; ``<root>/cache/{images,labels}.npy`` hold the same slices as
(N, H, W) uint16 / uint8 arrays in manifest order, opened with ``mmap_mode="r"``. The cache is built once,
atomically, and rebuilt when the manifest changes (its SHA-256 is recorded in ``cache/meta.json``).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from synthseg.data.manifest import MANIFEST, Manifest, read_manifest
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.utils.atomic import atomic_path, check_free_space

CACHE_DIR = "cache"


def _manifest_digest(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def cache_is_current(root: str | os.PathLike[str]) -> bool:
    """True when ``<root>/cache`` exists and was built from the current manifest."""
    root = Path(root)
    meta = root / CACHE_DIR / "meta.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("manifest_sha256") == _manifest_digest(root)
    except (json.JSONDecodeError, OSError):
        return False


def build_cache(root: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Build ``<root>/cache`` from the PNG files if it is missing or stale; return its path."""
    root = Path(root)
    target = root / CACHE_DIR
    if cache_is_current(root):
        return target
    manifest = read_manifest(root)
    first = read_png(root / manifest.image[0], bitdepth=16)
    height, width = first.shape
    n = len(manifest)
    check_free_space(root, n * height * width * 3, "the slice cache")
    with atomic_path(target, is_dir=True) as tmp:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint16, shape=(n, height, width)
        )
        labels = np.lib.format.open_memmap(
            tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width)
        )
        for i in tqdm(range(n), desc=f"caching {root.name}", unit="slice", disable=not progress, leave=False):
            images[i] = read_png(root / manifest.image[i], bitdepth=16, shape=(height, width))
            label = read_png(root / manifest.label[i], bitdepth=8, shape=(height, width))
            if label.max(initial=0) > 6:
                raise InputError(f"{root / manifest.label[i]}: label value {int(label.max())} outside 0..6")
            labels[i] = label
        images.flush()
        labels.flush()
        del images, labels
        meta = {"manifest_sha256": _manifest_digest(root), "num_slices": n, "height": height, "width": width}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    return target


def open_cache(
    root: str | os.PathLike[str], manifest: Manifest | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Open (building if needed) the cache of ``root``: memory-mapped (N, H, W) images and labels."""
    path = build_cache(root)
    images = np.load(path / "images.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy", mmap_mode="r")
    if manifest is not None and len(images) != len(manifest):
        raise InputError(f"{path}: cache holds {len(images)} slices, manifest lists {len(manifest)}")
    return images, labels
