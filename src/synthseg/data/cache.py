"""A memory-mapped cache of a dataset folder's slices, so training never waits on PNG decoding.

The PNG files stay the interchange format; the cache's ``images.npy`` holds the same slices as an (N, S, H, W)
uint16 array (S: the dataset's sequences, in its order) and ``labels.npy`` an (N, H, W) uint8 array, in manifest
order, opened with ``mmap_mode="r"``. It lives in ``<root>/cache`` or, for a dataset folder this user cannot
write into (a read-only mount, a shared folder), in the per-user cache folder
(:func:`cache_folder`; ``synthseg.paths.user_cache_dir``, said once in one line).

The cache is built once, atomically, one build at a time per dataset (``.cache.lock`` beside it), and is keyed on
what it was built from: the manifest's SHA-256, and for every image and label file its size, modification time,
inode and status-change time (``sources.npy``, (N, 4 (S + 1)) int64, taken before the file was read; the paths,
as the manifest gave them, in ``sources.txt``) and a BLAKE2b-128 hash of its bytes, computed while the build reads
them anyway (``digests.npy``, (N, S + 1, 16) uint8). A file whose size differs, or that is missing, makes the cache
stale at once; a file of the same size whose other stamps differ is hashed and compared (so a copied dataset keeps
its cache, and two label PNGs of one size swapped with their times restored do not). A stale cache is rebuilt,
and the rebuild checks every file again, so a deleted PNG or a foreign label value is refused naming the file,
as without a cache. ``meta.json`` records the format (``synthseg-cache/4``), the array axes (``NSHW``) and the
sequences. What is not detected: a change that keeps a file's size, modification time, inode and status-change
time, which the file system only allows by resetting the clock or writing the disk directly.
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
from synthseg.paths import user_cache_dir
from synthseg.utils.atomic import atomic_path, check_free_space, leftovers, remove_path

CACHE_DIR = "cache"
CACHE_FORMAT = "synthseg-cache/4"
SOURCES = "sources.npy"
DIGESTS = "digests.npy"
PATHS = "sources.txt"  # the image paths and the label path of each slice (tab-separated), as in the manifest
STAMPS = 4  # size, mtime_ns, inode, ctime_ns per file
_said: set[Path] = set()  # read-only datasets already named in this process


def _manifest_digest(root: Path) -> str:
    return hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest()


def _writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def cache_folder(root: str | os.PathLike[str]) -> Path:
    """Where the slice cache of ``root`` lives: ``<root>/cache``, unless this user cannot write into ``root``
    and finds no current cache there; then ``<user cache>/slices/<name>-<hash of its resolved path>/cache``."""
    root = Path(root)
    local = root / CACHE_DIR
    if not root.is_dir() or _writable(root) or (local.is_dir() and _stale(root, local) is None):
        return local
    resolved = str(root.resolve())
    key = hashlib.sha256(resolved.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    folder = user_cache_dir() / "slices" / f"{root.resolve().name}-{key}" / CACHE_DIR
    if root.resolve() not in _said:
        _said.add(root.resolve())
        print(f"{root}: read-only for this user; its slice cache is kept in {folder}", file=sys.stderr)
    return folder


def _stat(path: str) -> tuple[int, int, int, int]:
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1, -1, -1
    return info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns


def _source_stats(root: Path, rows: list[tuple[str, ...]]) -> np.ndarray:
    """(N, 4 F) int64: the stamps of each of a slice's F files (images, then label; -1 when missing)."""
    base = str(root)
    width = len(rows[0]) if rows else 0
    stats = np.empty((len(rows), STAMPS * width), np.int64)
    for i, files in enumerate(rows):  # plain strings: one stat per file is the whole cost
        if len(files) != width:
            stats[i] = -2  # a torn sources.txt: never equal to what was built
            continue
        for f, name in enumerate(files):
            stats[i, STAMPS * f : STAMPS * (f + 1)] = _stat(os.path.join(base, name))
    return stats


def _digest(data: bytes) -> np.ndarray:
    return np.frombuffer(hashlib.blake2b(data, digest_size=16).digest(), np.uint8)


def _stale(root: Path, folder: Path) -> str | None:
    """Why the cache in ``folder`` cannot serve ``root`` (None when it can); refreshes the stamps of files that
    changed only in stamps (same bytes), when the cache folder is writable."""
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
        digests = np.load(folder / DIGESTS)
        rows = [tuple(line.split("\t")) for line in (folder / PATHS).read_text().splitlines()]
    except (OSError, ValueError):
        return f"{folder}: unreadable"
    now = _source_stats(root, rows)
    if built.shape != now.shape or digests.shape[:2] != (len(rows), now.shape[1] // STAMPS):
        return f"{folder}: built for another manifest"
    changed = np.flatnonzero((built != now).any(axis=1))
    for i in changed.tolist():
        for f in range(now.shape[1] // STAMPS):
            was, isnow = built[i, STAMPS * f : STAMPS * (f + 1)], now[i, STAMPS * f : STAMPS * (f + 1)]
            if (was == isnow).all():
                continue
            path = root / rows[i][f]
            # Another size, or missing: changed. The same size: the bytes decide.
            if was[0] != isnow[0] or isnow[0] < 0 or (_digest(path.read_bytes()) != digests[i, f]).any():
                return f"{path}: changed since the cache was built"
    if len(changed) and _writable(folder):
        np.save(folder / f".{SOURCES}.tmp.npy", now)  # same bytes, new stamps: no hashing next time
        os.replace(folder / f".{SOURCES}.tmp.npy", folder / SOURCES)
    return None


def stale_reason(root: str | os.PathLike[str]) -> str | None:
    """Why the slice cache of ``root`` cannot be used (``None`` when it is current): missing, old format, or the
    file that changed since it was built (``<root>/labels/<id>.png``)."""
    root = Path(root)
    return _stale(root, cache_folder(root))


def cache_is_current(root: str | os.PathLike[str]) -> bool:
    """True when the slice cache of ``root`` was built from its current manifest and image/label files."""
    return stale_reason(root) is None


def build_cache(root: str | os.PathLike[str], *, progress: bool = True) -> Path:
    """Build the slice cache of ``root`` if it is missing or stale; return its folder (:func:`cache_folder`)."""
    from filelock import FileLock

    root = Path(root)
    target = cache_folder(root)
    if _stale(root, target) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # One build per dataset at a time (two trainings on one dataset): the second waits, then reuses it.
    with FileLock(str(target.parent / ".cache.lock")):
        reason = _stale(root, target)
        if reason is None:
            return target
        if target.exists():
            print(f"rebuilding the slice cache ({reason})", file=sys.stderr)
        for stale in leftovers(target):  # of a killed build: ours to clean, under the cache's lock
            remove_path(stale)
        _build(root, target, progress)
    return target


def _read(path: Path, digests: np.ndarray, f: int, *, bitdepth: int, shape: tuple[int, int]) -> np.ndarray:
    """Read one PNG, hashing the bytes it reads into ``digests[f]``."""
    if not path.is_file():
        return read_png(path, bitdepth=bitdepth, shape=shape)  # names the missing file
    data = path.read_bytes()
    digests[f] = _digest(data)
    return read_png(path, bitdepth=bitdepth, shape=shape, data=data)


def _build(root: Path, target: Path, progress: bool) -> None:
    manifest = read_manifest(root)
    first = read_png(root / manifest.images[0, 0], bitdepth=16)
    height, width = first.shape
    n, s = manifest.images.shape
    check_free_space(target.parent, n * height * width * (2 * s + 1), "the slice cache")
    digest = _manifest_digest(root)
    with atomic_path(target, is_dir=True) as tmp:
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint16, shape=(n, s, height, width)
        )
        labels = np.lib.format.open_memmap(
            tmp / "labels.npy", mode="w+", dtype=np.uint8, shape=(n, height, width)
        )
        sources = np.empty((n, STAMPS * (s + 1)), np.int64)
        digests = np.zeros((n, s + 1, 16), np.uint8)
        for i in tqdm(range(n), desc=f"caching {root.name}", unit="slice", disable=not progress, leave=False):
            label_path = root / manifest.label[i]
            for c in range(s):
                image_path = root / manifest.images[i, c]
                # Stat before reading: a file changed during the build then shows as changed at the next check.
                sources[i, STAMPS * c : STAMPS * (c + 1)] = _stat(str(image_path))
                images[i, c] = _read(image_path, digests[i], c, bitdepth=16, shape=(height, width))
            sources[i, STAMPS * s :] = _stat(str(label_path))
            label = _read(label_path, digests[i], s, bitdepth=8, shape=(height, width))
            if label.max(initial=0) > 6:
                raise InputError(f"{label_path}: label value {int(label.max())} outside 0..6")
            labels[i] = label
        images.flush()
        labels.flush()
        del images, labels
        np.save(tmp / SOURCES, sources)
        np.save(tmp / DIGESTS, digests)
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
            "sources": f"{SOURCES}: size, mtime_ns, inode and ctime_ns of each sequence's image, then of the label",
            "digests": f"{DIGESTS}: BLAKE2b-128 of each file's bytes, in the same order",
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
