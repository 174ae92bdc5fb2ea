"""Atomic outputs: write to a temporary sibling, rename into place when complete.

Every stage that writes a file or a folder goes through :func:`atomic_path` (folders through
``synthseg.utils.outputs.claim_output``), so an interrupted run leaves either the previous output or the new one,
never half of one.

Every name a run derives from its output (the temporary sibling, the previous output moved aside, the lock, a
work folder) comes from :func:`sibling`, one function: the names are recognised exactly (:func:`is_leftover`,
never a glob over names a user may also use), and they fit the file system's 255-byte limit whatever the
output's own name (a long name is shortened and given a hash of itself).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from synthseg.errors import DiskSpaceError

NAME_MAX = 255  # bytes of one file name (ext4, XFS, APFS, NTFS, ...)
_STEM_MAX = 200  # the output's name as it appears in derived names; the longest suffix adds 16 bytes
# kind -> how a derived name is made from the output's (shortened) name and a token
SIBLINGS = {
    "partial": ".{stem}.{token}.partial",  # the temporary folder or file being written
    "old": ".{stem}.{token}.old",  # the previous output, moved aside for the instant of the swap
    "lock": ".{stem}.lock",  # the output's lock file (synthseg.utils.outputs.output_lock)
    "resume": "{stem}.partial-resume",  # generate-masks' resumable work folder
    "work": "{stem}.work",  # synthesize's intermediate masks
}
_TOKEN = "[0-9a-f]{8}"


def _stem(name: str) -> str:
    """``name``, or for a name too long to take a suffix its first bytes plus ``~`` and 8 hex digits of its
    SHA-256 (so two long names that share their beginning still differ)."""
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) <= _STEM_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:8]
    return raw[: _STEM_MAX - 9].decode("utf-8", "ignore") + "~" + digest


def new_token() -> str:
    """A random 8-hex-digit token: two runs never pick the same temporary name."""
    return uuid.uuid4().hex[:8]


def sibling(target: str | os.PathLike[str], kind: str, token: str = "") -> Path:
    """The path of kind ``kind`` (:data:`SIBLINGS`) that a run derives from its output ``target``."""
    target = Path(target)
    return target.parent / SIBLINGS[kind].format(stem=_stem(target.name), token=token)


def is_leftover(target: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is exactly a temporary or moved-aside sibling of ``target`` (``.<name>.<8 hex>.partial``
    or ``.old``): ``.out.backup.old`` or ``out.v2``'s temporary folder are not ``out``'s."""
    target, path = Path(target), Path(path)
    if path.parent != target.parent:
        return False
    pattern = rf"\.{re.escape(_stem(target.name))}\.{_TOKEN}\.(partial|old)"
    return re.fullmatch(pattern, path.name) is not None


def leftovers(target: str | os.PathLike[str]) -> list[Path]:
    """The temporary and moved-aside siblings of ``target`` that a killed run left behind (see
    :func:`is_leftover`). Only a holder of ``target``'s lock may delete them: another run's live temporary
    folder looks the same."""
    target = Path(target)
    found = target.parent.glob(f".{glob.escape(_stem(target.name))}.*")
    return sorted(path for path in found if is_leftover(target, path))


def remove_path(path: Path) -> None:
    """Delete a file, symbolic link or folder tree (a link is never followed)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def swap_into_place(tmp: Path, target: Path) -> None:
    """Rename the complete ``tmp`` to ``target``; an existing ``target`` is moved aside first and deleted after.

    A folder cannot be replaced by ``os.replace`` when it is not empty: moving the old one aside first means
    there is no moment without either the old or the new output under a recognisable name. The caller has
    checked that whatever stands at ``target`` may be replaced (``synthseg.utils.outputs``: under its lock).
    """
    if target.exists() or target.is_symlink():
        old = sibling(target, "old", new_token())
        os.replace(target, old)
        os.replace(tmp, target)
        remove_path(old)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_path(
    target: str | os.PathLike[str], *, is_dir: bool = False, overwrite: bool = True
) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``, on error it is removed.

    Args:
        target: final path of the file or folder.
        is_dir: create the temporary path as an (empty) folder.
        overwrite: replace an existing ``target``; if False an existing target is an error.

    The temporary name (:func:`sibling`) starts with ``.`` and ends with ``.partial`` so it never looks like a
    finished output. Leftovers of killed runs are not cleaned here: only the holder of the output's lock may
    (``synthseg.utils.outputs.claim_output``), since another run's live temporary file looks the same.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target} already exists (pass overwrite=true to replace it)")
    tmp = sibling(target, "partial", new_token())
    if is_dir:
        tmp.mkdir()
    try:
        yield tmp
        swap_into_place(tmp, target)
    except BaseException:
        remove_path(tmp)
        raise


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
