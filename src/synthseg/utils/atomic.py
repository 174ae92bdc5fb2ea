"""Atomic outputs: write to a temporary sibling, rename into place when complete.

Every stage that writes a file or a folder goes through :func:`atomic_path`, so an interrupted run leaves
either the previous output or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from synthseg.errors import DiskSpaceError


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], *, is_dir: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``, on error it is removed.

    Args:
        target: final path of the file or folder.
        is_dir: create the temporary path as an (empty) folder.
        overwrite: replace an existing ``target``; if False an existing target is an error.

    The temporary name starts with ``.`` and ends with ``.partial`` so it never looks like a finished output.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=true to replace it)")
    # Leftovers of an earlier run of this output that was killed (SIGKILL skips every cleanup).
    for stale in [
        *target.parent.glob(f".{target.name}.*.partial"),
        *target.parent.glob(f".{target.name}.*.old"),
    ]:
        _remove(stale)
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.partial"
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if target.exists():
        # A folder cannot be replaced by os.replace when it is not empty: move the old one aside first,
        # so there is no moment without either the old or the new output under a recognisable name.
        old = target.parent / f".{target.name}.{uuid.uuid4().hex[:8]}.old"
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def check_free_space(folder: str | os.PathLike[str], needed_bytes: int, what: str) -> None:
    """Refuse with a clear message when ``folder``'s disk cannot hold ``needed_bytes`` (plus 5 % margin)."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed_bytes * 1.05 > free:
        raise DiskSpaceError(
            f"not enough disk space for {what} in {folder}: needs about {needed_bytes / 1e9:.2f} GB, "
            f"{free / 1e9:.2f} GB free"
        )
