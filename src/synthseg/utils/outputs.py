"""The one output rule every folder-writing command follows (docs/reliability.md, "Outputs").

* An output that is, contains, or lies inside one of the command's inputs is refused (symlinks resolved).
* A non-empty folder is replaced only when it carries this command's marker (``.synthseg-output.json``:
  the command's name, a format version and the files it wrote, written last, just before the rename), and
  only with ``overwrite=true``. A folder without the marker, or another command's, is refused whatever
  ``overwrite`` says.
* A folder holding a file the command did not write (not listed in the marker, not one the tool adds later
  such as the DataModule's ``cache/``) is refused, naming the file: nothing a user put there is deleted.
* One run at a time per output: an exclusive lock file beside the output (``.<name>.lock``, released by the
  OS when the process dies) is held for the whole write; a second run stops at once with one line. Leftovers
  of killed runs (``.<name>.*.partial``, ``.<name>.*.old``) are cleaned only while holding the lock.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from synthseg.errors import InputError
from synthseg.utils.atomic import atomic_path

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


class OutputLockedError(InputError):
    """Another run holds the output's lock."""


def resolve(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def lock_path(output: Path) -> Path:
    """Beside the output, never inside the folder that gets renamed."""
    return output.parent / f".{output.name}.lock"


@contextlib.contextmanager
def output_lock(output: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the exclusive lock of ``output``; raise :class:`OutputLockedError` at once when another run has it."""
    from filelock import FileLock, Timeout

    output = resolve(output)
    lock = FileLock(str(lock_path(output)), timeout=0)
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
    try:
        yield
    finally:
        lock.release()


def _unwritable(folder: Path) -> str:
    return f"cannot write into {folder} (permission denied); choose an output in a writable folder"


def check_writable(output: Path) -> None:
    """Refuse, before any work, an output whose nearest existing parent this user cannot write into."""
    parent = output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
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
    marker = read_marker(output)
    if any(output.iterdir()) and (marker is None or marker["command"] != command):
        writer = "a synthseg command" if marker is None else f"synthseg {marker['command']}"
        raise InputError(
            f"{output}: not empty and not written by synthseg {command} (no marker of {writer}), so it is "
            "never replaced; choose a new or empty folder"
        )
    if not overwrite:
        raise InputError(f"{output}: already exists (pass overwrite=true to replace it)")
    if marker is None:  # an empty folder
        return
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
    check_replaceable(resolved, command, overwrite)
    check_writable(resolved)
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


@contextlib.contextmanager
def claim_output(
    output: str | os.PathLike[str],
    *,
    command: str,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    overwrite: bool = False,
    later: Sequence[str] = (),
) -> Iterator[Path]:
    """Lock ``output``, check it again, yield a temporary folder; on success mark it and rename it into place.

    ``later`` lists patterns (relative paths, ``fnmatch``) of files the tool adds to the finished folder
    afterwards; they count as its own when the folder is replaced.
    """
    resolved = resolve(output)
    inputs = list(inputs)
    check_inputs(resolved, inputs)
    check_writable(resolved)
    with output_lock(resolved):
        check_replaceable(resolved, command, overwrite)
        with atomic_path(resolved, is_dir=True, overwrite=True) as tmp:
            yield tmp
            write_marker(tmp, command, later)


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
