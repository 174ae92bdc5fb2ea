"""User-facing errors: one clear line naming the file (or the setting) and what is wrong."""

from __future__ import annotations


class InputError(ValueError):
    """Bad input data or a configuration value that cannot work; the message is shown as-is, no traceback."""


class DiskSpaceError(InputError, OSError):
    """The disk cannot hold an output: the user's to fix (one line, no traceback), and still an ``OSError``."""
