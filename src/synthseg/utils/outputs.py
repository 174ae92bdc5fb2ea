"""The one output rule every folder-writing command follows (docs/reliability.md, "Outputs").

* An output that is, contains, or lies inside one of the command's inputs is refused (symlinks resolved).
* A non-empty folder is replaced only when it carries this command's marker (``.synthseg-output.json``:
  the command's name, a format version and the files it wrote, written last, just before the rename), and
  only with ``overwrite=true``. A folder without the marker, or another command's, is refused whatever
  ``overwrite`` says. A missing output or an empty folder is anyone's to fill.
* A folder holding a file the command did not write (not listed in the marker, not one the tool adds later
  such as the DataModule's ``cache/``) is refused, naming the file: nothing a user put there is deleted.
* One run at a time per output: an exclusive lock file beside the output (``.<name>.lock``, released by the
  OS when the process dies) is held for the whole write; a second run stops at once with one line. Every
  temporary, work and leftover path is derived from the output by ``synthseg.utils.atomic.sibling`` and matched
  exactly; leftovers of killed runs (``.<name>.<8 hex>.partial``, ``.old``) are cleaned only while holding the
  lock. The last check ("is what stands at the output still this command's own, or empty?") and the rename
  happen under the lock too: a folder that appeared there during the run is refused, never deleted.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from synthseg.errors import InputError
from synthseg.utils.atomic import NAME_MAX, leftovers, new_token, remove_path, sibling, swap_into_place

MARKER = ".synthseg-output.json"
MARKER_FORMAT = "synthseg-output/1"
# Written by the tool into a finished dataset folder later: the DataModule's slice cache (and its lock and
# the leftovers of a killed cache build), and the demo's stage marker.
DATASET_LATER = ("cache", "cache/*", ".cache.*", ".complete")
ANY_LATER = (".complete",)
# What ``train()`` writes into a run folder (checkpoints, the loggers' folders, PGAN snapshots and SWD log), for
# the demo's clean-up of its training stages, which carry no marker.
TRAIN_RUN_FILES = (
    "checkpoints/*",
    "tensorboard/*",
    "csv/*",
    "mlruns/*",
    "wandb/*",
    "lightning_logs/*",  # Lightning's own folder when a run has no logger
    "snapshots/*",
    "results.json",
    "pgan_run.json",
    "swd.csv",
    ".*.partial",
    ".*.old",
    "*/.*.partial",
    "*/.*.old",
    ".complete",
)
# Seconds a run waits for the lock of a shared parent (export's nnUNet_raw): held for a check and a rename only.
SHARED_LOCK_WAIT = 120.0
# The locks this thread holds, by resolved output: a command that holds its output's lock (synthesize) may
# call claim_output on it again.
_held = threading.local()


class OutputLockedError(InputError):
    """Another run holds the output's lock."""


def resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def lock_path(output: Path) -> Path:
    """Beside the output, never inside the folder that gets renamed."""
    return sibling(output, "lock")


def _held_locks() -> dict[Path, int]:
    if not hasattr(_held, "counts"):
        _held.counts = {}
    return _held.counts


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str], *, wait: float = 0) -> Iterator[None]:
    """Hold the exclusive lock of ``output``; raise :class:`OutputLockedError` when another run has it (at once,
    or after ``wait`` seconds). A lock this thread already holds is held again (nested use)."""
    from filelock import FileLock, Timeout

    output = resolve(output)
    held = _held_locks()
    if output in held:
        held[output] += 1
        try:
            yield
        finally:
            held[output] -= 1
        return
    lock = FileLock(str(lock_path(output)), timeout=wait)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        lock.acquire()
    except PermissionError:
        raise InputError(f"{output}: {_unwritable(output.parent)}") from None
    except Timeout:
        raise OutputLockedError(
            f"{output}: another synthseg run is writing this output now; wait for it to end or choose another "
            "output"
        ) from None
    held[output] = 1
    try:
        yield
    finally:
        del held[output]
        lock.release()


def _unwritable(folder: Path) -> str:
    return f"cannot write into {folder} (permission denied); choose an output in a writable folder"


def check_writable(output: Path) -> None:
    """Refuse, before any work, an output whose nearest existing parent is a file or a folder this user cannot
    write into, or whose path holds a name longer than file systems allow."""
    for part in output.parts:
        size = len(part.encode("utf-8", "surrogateescape"))
        if size > NAME_MAX:
            raise InputError(
                f"{output}: the name {part[:24]}... is {size} bytes long; file systems allow {NAME_MAX}"
            )
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{parent}: is a file, not a folder (the output {output} would lie inside it)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{output}: {_unwritable(parent)}")


def check_inputs(output: Path, inputs: Iterable[str | os.PathLike[str] | None]) -> None:
    """Refuse an output that is, contains or lies inside an input (compared after resolving symlinks)."""
    for given in inputs:
        if given is None or str(given) == "":
            continue
        source = resolve(given)
        if output == source:
            how = "is"
        elif source in output.parents:
            how = "lies inside"
        elif output in source.parents:
            how = "contains"
        else:
            continue
        raise InputError(
            f"output={output} {how} the input {source}; choose an output folder outside the inputs"
        )


def read_marker(folder: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or not marker.get("command"):
        return None
    return marker


def _entries(folder: Path) -> Iterator[str]:
    """Every file (and symlink, never followed) under ``folder``, as a relative POSIX path."""
    for dirpath, dirnames, filenames in os.walk(folder):
        base = Path(dirpath).relative_to(folder)
        for name in filenames:
            yield (base / name).as_posix()
        for name in dirnames:
            if (Path(dirpath) / name).is_symlink():
                yield (base / name).as_posix()


def foreign_files(folder: Path, own: set[str], patterns: Sequence[str]) -> list[str]:
    """Files under ``folder`` that are neither in ``own`` nor match one of ``patterns`` (sorted)."""
    return sorted(
        rel
        for rel in _entries(folder)
        if rel != MARKER and rel not in own and not any(fnmatch.fnmatchcase(rel, p) for p in patterns)
    )


def _refuse_foreign(folder: Path, foreign: list[str], who: str) -> None:
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise InputError(
            f"{folder / foreign[0]}{more}: not written by {who}, so {folder} is not replaced; move the file "
            "out of it (or choose another output) and run again"
        )


def check_replaceable(output: Path, command: str, overwrite: bool) -> None:
    """Refuse unless ``output`` is missing, an empty folder, or ``command``'s own output with ``overwrite``."""
    if not output.exists() and not output.is_symlink():
        return
    if not output.is_dir():
        raise InputError(f"{output}: exists and is not a folder; remove it or choose another output")
    if not any(output.iterdir()):  # an empty folder: anyone's to fill, whatever overwrite says
        return
    marker = read_marker(output)
    if marker is None or marker["command"] != command:
        writer = "a synthseg command" if marker is None else f"synthseg {marker['command']}"
        raise InputError(
            f"{output}: not empty and not written by synthseg {command} (no marker of {writer}), so it is "
            "never replaced; choose a new or empty folder"
        )
    if not overwrite:
        raise InputError(f"{output}: already exists (pass overwrite=true to replace it)")
    _refuse_foreign(
        output,
        foreign_files(output, set(marker.get("files", [])), marker.get("later", [])),
        f"synthseg {command}",
    )


def check_output(
    output: str | os.PathLike[str],
    *,
    command: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
) -> Path:
    """The up-front check (no lock, nothing written): return the resolved output or raise one line."""
    resolved = resolve(output)
    check_inputs(resolved, inputs)
    check_writable(resolved)  # first: a name too long for the file system cannot even be tested for existence
    check_replaceable(resolved, command, overwrite)
    return resolved


def write_marker(folder: Path, command: str, later: Sequence[str] = ()) -> None:
    """List every file under ``folder`` in its marker; written last, when the folder is complete."""
    record = {
        "format": MARKER_FORMAT,
        "command": command,
        "later": sorted({*ANY_LATER, *later}),
        "files": sorted(rel for rel in _entries(folder) if rel != MARKER),
    }
    (folder / MARKER).write_text(json.dumps(record, indent=0) + "\n")


def clean_leftovers(output: Path) -> None:
    """Delete what killed runs of ``output`` left beside it (``.<name>.<8 hex>.partial`` and ``.old``, matched
    exactly). Only under ``output``'s lock: another run's live temporary folder looks the same."""
    for path in leftovers(output):
        remove_path(path)


def install_output(
    tmp: Path,
    output: Path,
    *,
    command: str,
    overwrite: bool,
    later: Sequence[str] = (),
    shared: Callable[[], None] | None = None,
) -> None:
    """Mark the complete folder ``tmp`` as ``command``'s and rename it to ``output``; the caller holds the lock.

    What stands at ``output`` now is checked again (a folder may have appeared there during the run: a user's,
    a sync tool's): it is replaced only when it is still this command's own or empty, else refused with one
    line and left as it is. ``shared`` checks a name that must be unique across the output's parent (export's
    nnU-Net dataset id): it runs under a lock on that parent, held through the rename.
    """
    write_marker(tmp, command, later)
    with output_lock(output.parent, wait=SHARED_LOCK_WAIT) if shared else contextlib.nullcontext():
        if shared is not None:
            shared()
        check_replaceable(output, command, overwrite)
        swap_into_place(tmp, output)


@contextlib.contextmanager
def claim_output(
    output: str | os.PathLike[str],
    *,
    command: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    later: Sequence[str] = (),
    shared: Callable[[], None] | None = None,
) -> Iterator[Path]:
    """Lock ``output``, check it again, yield a temporary folder; on success mark it and rename it into place.

    ``later`` lists patterns (relative paths, ``fnmatch``) of files the tool adds to the finished folder
    afterwards; they count as its own when the folder is replaced. ``shared``: see :func:`install_output`.
    """
    resolved = resolve(output)
    inputs = list(inputs)
    check_inputs(resolved, inputs)
    check_writable(resolved)
    with output_lock(resolved):
        clean_leftovers(resolved)
        check_replaceable(resolved, command, overwrite)
        tmp = sibling(resolved, "partial", new_token())
        tmp.mkdir()
        try:
            yield tmp
            install_output(tmp, resolved, command=command, overwrite=overwrite, later=later, shared=shared)
        except BaseException:
            remove_path(tmp)
            raise


def remove_own(folder: str | os.PathLike[str], *, patterns: Sequence[str] = (), lock: bool = True) -> None:
    """Delete ``folder`` when every file in it is provably the tool's; else refuse naming a foreign file.

    Proof is the folder's marker (its file list and later patterns) or, for folders without a marker that
    the caller knows it made (a training run), ``patterns``. ``lock=False`` when the caller already holds
    the lock that covers ``folder``.
    """
    folder = resolve(folder)
    if not folder.exists():
        return
    if not folder.is_dir() or folder.is_symlink():
        raise InputError(f"{folder}: exists and is not a folder the demo wrote; move it away and run again")
    with output_lock(folder) if lock else contextlib.nullcontext():
        marker = read_marker(folder)
        own = set(marker.get("files", [])) if marker else set()
        allowed = [*patterns, *(marker.get("later", []) if marker else ANY_LATER)]
        who = f"synthseg {marker['command']}" if marker else "synthseg"
        _refuse_foreign(folder, foreign_files(folder, own, allowed), who)
        shutil.rmtree(folder)


def claim_folder(folder: Path, command: str) -> None:
    """Claim a resumable folder (the demo's): new, empty or already ``command``'s; else refuse.

    Its marker lists no files and claims none: what is deleted inside it goes through :func:`remove_own`.
    """
    folder = resolve(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: exists and is not a folder; remove it or choose another output")
    marker = read_marker(folder) if folder.is_dir() else None
    if folder.is_dir() and any(folder.iterdir()):
        if marker is None or marker["command"] != command:
            raise InputError(
                f"{folder}: not empty and not written by synthseg {command}; choose a new or empty folder"
            )
        return
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": MARKER_FORMAT, "command": command, "later": [], "files": []}
    (folder / MARKER).write_text(json.dumps(record, indent=0) + "\n")
