"""A memory-mapped cache of a dataset folder's slices, so training never waits on PNG decoding.

The PNG files stay the interchange format; ``<root>/cache/images.npy`` holds the same slices as an
(N, S, H, W) uint16 array (S: the dataset's sequences, in its order) and ``labels.npy`` an (N, H, W) uint8
array, in manifest order, opened with ``mmap_mode="r"``. The cache is built once, atomically (one build at
a time per dataset: ``<root>/.cache.lock``), and is keyed on what it was built from: the manifest's SHA-256
and every image and label file's size and modification time (``cache/sources.npy``, (N, 2 (S + 1)) int64:
size and mtime_ns of each sequence's image, then of the label, taken before the file was read; the paths, as
the manifest gave them, in ``cache/sources.txt``). When any of them changes the cache is rebuilt, and the
rebuild checks every file again, so a deleted PNG or a foreign label value is refused naming the file, as
without a cache. ``meta.json`` records the format (``synthseg-cache/3``), the array axes (``NSHW``) and the
sequences.
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
from synthseg.utils.atomic import atomic_path, check_free_space, leftovers, remove_path

CACHE_DIR = "cache"
CACHE_FORMAT = "synthseg-cache/3"
SOURCES = "sources.npy"
PATHS = "sources.txt"  # the image paths and the label path of each slice (tab-separated), as in the manifest


def _manifest_digest(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def _stat(path: str) -> tuple[int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def _source_stats(root: Path, rows: list[tuple[str, ...]]) -> np.ndarray:
    """(N, 2 F) int64: size and mtime_ns of each of a slice's F files (images, then label; -1 when missing)."""
    base = str(root)
    width = len(rows[0]) if rows else 0
    stats = np.empty((len(rows), 2 * width), np.int64)
    for i, files in enumerate(rows):  # plain strings: one stat per file is the whole cost
        if len(files) != width:
            stats[i] = -2  # a torn sources.txt: never equal to what was built
            continue
        for f, name in enumerate(files):
            stats[i, 2 * f : 2 * f + 2] = _stat(os.path.join(base, name))
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
        rows = [tuple(line.split("\t")) for line in (folder / PATHS).read_text().splitlines()]
    except (OSError, ValueError):
        return f"{folder}: unreadable"
    now = _source_stats(root, rows)
    if built.shape != now.shape:
        return f"{folder}: built for another manifest"
    changed = np.flatnonzero((built != now).any(axis=1))
    if len(changed):
        i = int(changed[0])
        f = int(np.flatnonzero(built[i] != now[i])[0]) // 2
        return f"{root / rows[i][f]}: changed since the cache was built"
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
        for stale in leftovers(target):  # of a killed build: ours to clean, under the cache's lock
            remove_path(stale)
        _build(root, target, progress)
    return target


def _build(root: Path, target: Path, progress: bool) -> None:
    manifest = read_manifest(root)
    first = read_png(root / manifest.images[0, 0], bitdepth=16)
    height, width = first.shape
    n, s = manifest.images.shape
    check_free_space(root, n * height * width * (2 * s + 1), "the slice cache")
    digest = _manifest_digest(root)
    with atomic_path(target, is_dir=True) as tmp:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint16, shape=(n, s, height, width)
        )
        labels = np.lib.format.open_memmap(
            tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width)
        )
        sources = np.empty((n, 2 * (s + 1)), np.int64)
        for i in tqdm(range(n), desc=f"caching {root.name}", unit="slice", disable=not progress, leave=False):
            label_path = root / manifest.label[i]
            for c in range(s):
                image_path = root / manifest.images[i, c]
                # Stat before reading: a file changed during the build then shows as changed at the next check.
                sources[i, 2 * c : 2 * c + 2] = _stat(str(image_path))
                images[i, c] = read_png(image_path, bitdepth=16, shape=(height, width))
            sources[i, 2 * s :] = _stat(str(label_path))
            label = read_png(label_path, bitdepth=8, shape=(height, width))
            if label.max(initial=0) > 6:
                raise InputError(f"{label_path}: label value {int(label.max())} outside 0..6")
            labels[i] = label
        images.flush()
        labels.flush()
        del images, labels
        np.save(tmp / SOURCES, sources)
        (tmp / PATHS).write_text(
            "".join("\t".join([*manifest.images[i], manifest.label[i]]) + "\n" for i in range(n))
        )
        meta = {
            "format": CACHE_FORMAT,
            "axes": "NSHW",
            "sequences": list(manifest.sequences),
            "manifest_sha256": digest,
            "num_slices": n,
            "height": height,
            "width": width,
            "sources": f"{SOURCES}: size and mtime_ns of each sequence's image, then of the label, per slice",
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))


def open_cache(
    root: str | os.PathLike[str], manifest: Manifest | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Open (building if needed) the cache of ``root``: memory-mapped (N, S, H, W) images, (N, H, W) labels."""
    path = build_cache(root)
    images = np.load(path / "images.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy", mmap_mode="r")
    if manifest is not None and len(images) != len(manifest):
        raise InputError(f"{path}: cache holds {len(images)} slices, manifest lists {len(manifest)}")
    return images, labels
