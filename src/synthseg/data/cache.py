"""A memory-mapped cache of a dataset folder's slices, so training never waits on PNG decoding.

The PNG files stay the interchange format; ``<root>/cache/{images,labels}.npy`` hold the same slices as
(N, H, W) uint16 / uint8 arrays in manifest order, opened with ``mmap_mode="r"``. The cache is built once,
atomically (one build at a time per dataset: ``<root>/.cache.lock``), and is keyed on what it was built
from: the manifest's SHA-256 and every image and label file's size and modification time
(``cache/sources.npy``, (N, 4) int64: image size, image mtime_ns, label size, label mtime_ns, taken before
the file was read; the paths, as the manifest gave them, in ``cache/sources.txt``). When any of them changes the cache is rebuilt, and the rebuild checks every file again,
so a deleted PNG or a foreign label value is refused naming the file, as without a cache.
``meta.json`` records the format (``synthseg-cache/2``) and the array axes (``NHW``; a sequence axis will
make it ``NSHW``).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from synthseg.data.manifest import MANIFEST, Manifest, read_manifest
from synthseg.data.pngio import read_png
from synthseg.errors import InputError
from synthseg.utils.atomic import atomic_path, check_free_space

CACHE_DIR = "cache"
CACHE_FORMAT = "synthseg-cache/2"
SOURCES = "sources.npy"
PATHS = "sources.txt"  # the image and label path of each slice (tab-separated), as the manifest had them


def _manifest_digest(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def _stat(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def _source_stats(root: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """(N, 4) int64: size and mtime_ns of each slice's image and label file (-1 when missing)."""
    base = str(root)
    stats = np.empty((len(pairs), 4), np.int64)
    for i, (image, label) in enumerate(pairs):  # plain strings: one stat per file is the whole cost
        stats[i, :2] = _stat(os.path.join(base, image))
        stats[i, 2:] = _stat(os.path.join(base, label))
    return stats


def stale_reason(root: str | os.PathLike[str]) -> str | None:
    """Why ``<root>/cache`` cannot be used (``None`` when it is current): missing, old format, or the file
    that changed since it was built (``<root>/labels/<id>.png``)."""
    root = Path(root)
    folder = root / CACHE_DIR
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return f"{folder}: no cache"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return f"{folder}: built by an older version"
    try:
        if meta.get("manifest_sha256") != _manifest_digest(root):
            return f"{root / MANIFEST}: changed"
        built = np.load(folder / SOURCES)
        pairs = [tuple(line.split("\t")) for line in (folder / PATHS).read_text().splitlines()]
    except (OSError, ValueError):
        return f"{folder}: unreadable"
    now = _source_stats(root, pairs)  # type: ignore[arg-type]
    if built.shape != now.shape:
        return f"{folder}: built for another manifest"
    changed = np.flatnonzero((built != now).any(axis=1))
    if len(changed):
        i = int(changed[0])
        path = pairs[i][0] if (built[i, :2] != now[i, :2]).any() else pairs[i][1]
        return f"{root / path}: changed since the cache was built"
    return None


def cache_is_current(root: str | os.PathLike[str]) -> bool:
    """True when ``<root>/cache`` was built from the current manifest and the current image/label files."""
    return stale_reason(root) is None


def build_cache(root: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Build ``<root>/cache`` from the PNG files if it is missing or stale; return its path."""
    from filelock import FileLock

    root = Path(root)
    target = root / CACHE_DIR
    if cache_is_current(root):
        return target
    # One build per dataset at a time (two trainings on one dataset): the second waits, then reuses it.
    with FileLock(str(root / ".cache.lock")):
        reason = stale_reason(root)
        if reason is None:
            return target
        if target.exists():
            print(f"rebuilding the slice cache ({reason})", file=sys.stderr)
        _build(root, target, progress)
    return target


def _build(root: Path, target: Path, progress: bool) -> None:
    manifest = read_manifest(root)
    first = read_png(root / manifest.image[0], bitdepth=16)
    height, width = first.shape
    n = len(manifest)
    check_free_space(root, n * height * width * 3, "the slice cache")
    digest = _manifest_digest(root)
    with atomic_path(target, is_dir=True) as tmp:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint16, shape=(n, height, width)
        )
        labels = np.lib.format.open_memmap(
            tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width)
        )
        sources = np.empty((n, 4), np.int64)
        for i in tqdm(range(n), desc=f"caching {root.name}", unit="slice", disable=not progress, leave=False):
            image_path, label_path = root / manifest.image[i], root / manifest.label[i]
            # Stat before reading: a file changed during the build then shows as changed at the next check.
            sources[i, :2] = _stat(str(image_path))
            sources[i, 2:] = _stat(str(label_path))
            images[i] = read_png(image_path, bitdepth=16, shape=(height, width))
            label = read_png(label_path, bitdepth=8, shape=(height, width))
            if label.max(initial=0) > 6:
                raise InputError(f"{label_path}: label value {int(label.max())} outside 0..6")
            labels[i] = label
        images.flush()
        labels.flush()
        del images, labels
        np.save(tmp / SOURCES, sources)
        (tmp / PATHS).write_text("".join(f"{manifest.image[i]}\t{manifest.label[i]}\n" for i in range(n)))
        meta = {
            "format": CACHE_FORMAT,
            "axes": "NHW",
            "manifest_sha256": digest,
            "num_slices": n,
            "height": height,
            "width": width,
            "sources": f"{SOURCES}: image size, image mtime_ns, label size, label mtime_ns per slice",
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


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
