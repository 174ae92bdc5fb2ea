"""Ids and file paths that come from data: the one place they become file names and file paths.

A manifest row's ``id`` names files (``labels/<id>.png``, ``images/<id>.png``) in every folder a command writes,
and its ``image``/``label`` columns (and a PGAN run's ``swd.csv`` ``snapshot`` column) name files inside the
folder that holds it. Both come from a text file anyone can edit, so every reader and writer checks them here,
before any file is opened or written (docs/reliability.md, "Paths that come from data"):

- an **id** is one plain file name: not empty, not ``.`` or ``..``, none of ``/ \\ < > : " | ? *``, NUL or any
  other control character, at most :data:`ID_MAX_BYTES` bytes in UTF-8 (file names may hold 255; the writers add
  suffixes such as ``_0000.png``);
- a **path** is relative, uses ``/``, never goes up (no ``..`` part), and the folder it lies in resolves inside the
  dataset folder (symlinks followed), so a symlinked ``images/`` that points elsewhere is refused too. A file that
  is itself a symbolic link is read as the file it points to (reading moves no data; every write goes to an
  id-named file inside the command's own output).

A bad value is one :class:`~synthseg.errors.InputError` line naming where it came from (the manifest and its
line), the column and the value.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from synthseg.errors import InputError

ID_MAX_BYTES = 200
_FORBIDDEN = frozenset('/\\<>:"|?*')
_DRIVE = re.compile(r"^[A-Za-z]:")


def id_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an id (a file name), or None."""
    if value == "":
        return "is empty"
    if value in (".", ".."):
        return "is not a file name"
    bad = sorted({c for c in value if c in _FORBIDDEN or ord(c) < 32 or ord(c) == 127})
    if bad:
        shown = " ".join(repr(c) for c in bad)
        return f'contains {shown} (an id is a file name: no / \\ < > : " | ? * or control characters)'
    size = len(value.encode("utf-8", "surrogateescape"))
    if size > ID_MAX_BYTES:
        return f"is {size} bytes long (an id is a file name: at most {ID_MAX_BYTES} bytes)"
    return None


def check_id(value: str, where: str, column: str = "id") -> str:
    """``value`` when it is a usable id; else one line ``<where>: <column> '<value>' <problem>``."""
    problem = id_problem(value)
    if problem:
        raise InputError(f"{where}: {column} {value!r} {problem}")
    return value


def path_problem(value: str) -> str | None:
    """What makes ``value`` unusable as a path inside a dataset folder, read as text alone (no file system)."""
    if value.startswith(("/", "\\")) or _DRIVE.match(value):
        return "is an absolute path"
    if "\\" in value:
        return "contains '\\' (paths in a dataset folder use /)"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character"
    if ".." in value.split("/"):
        return "goes up with '..'"
    return None


class DatasetPaths:
    """Turns the relative paths a dataset folder's files give (manifest cells) into file paths inside it.

    The folder is resolved once, and each distinct sub-folder a path runs through once, so checking the
    100,000 rows of a large manifest costs string operations, not a file-system walk per row.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._real = os.path.realpath(self.root)
        self._folders: dict[str, str | None] = {}

    def _folder_problem(self, folder: str) -> str | None:
        if folder not in self._folders:
            real = os.path.realpath(os.path.join(self._real, folder))
            inside = real == self._real or real.startswith(self._real.rstrip(os.sep) + os.sep)
            self._folders[folder] = None if inside else f"lies in a folder that resolves to {real}"
        return self._folders[folder]

    def problem(self, value: str) -> str | None:
        """What is wrong with ``value`` as a path inside the folder, or None."""
        problem = path_problem(value)
        if problem is None:
            folder = value.rpartition("/")[0]
            problem = self._folder_problem(folder) if folder else None
        if problem is not None:
            return f"{problem} (paths in a dataset folder stay inside {self.root})"
        return None

    def check(self, value: str, where: str, column: str) -> str:
        """``value`` when it is a path inside the folder (an empty cell passes: no file); else one line."""
        if value:
            problem = self.problem(value)
            if problem:
                raise InputError(f"{where}: {column} {value!r} {problem}")
        return value

    def file(self, value: str, where: str, column: str) -> Path:
        """The file ``value`` names inside the folder; one line when it would lie outside."""
        if not value:
            raise InputError(f"{where}: {column} is empty")
        return self.root / self.check(value, where, column)


def dataset_file(root: str | os.PathLike[str], value: str, where: str, column: str) -> Path:
    """``root / value`` for one path a data file gives (see :class:`DatasetPaths`); one line when unsafe."""
    return DatasetPaths(root).file(value, where, column)
