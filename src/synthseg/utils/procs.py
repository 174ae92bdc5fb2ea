"""Worker processes that die with their parent, so a killed command leaves nothing running behind it."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """Pool initializer: end this process when ``parent_pid`` dies, even by SIGKILL (which runs no clean-up).

    On Linux the kernel sends SIGKILL at the parent's death (``PR_SET_PDEATHSIG``); everywhere (macOS too) a
    daemon thread also checks every ``poll_s`` seconds that the parent is still this process's parent.
    """
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _start_worker(parent_pid: int, initializer: Callable[..., None] | None, initargs: tuple) -> None:
    die_with_parent(parent_pid)
    if initializer is not None:
        initializer(*initargs)


def spawn_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()
) -> ProcessPoolExecutor:
    """A pool of ``workers`` spawned processes that die with this one, each calling ``initializer(*initargs)``.

    spawn, never fork: a forked copy of the parent's threads (torch's, tqdm's) can deadlock.
    """
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(os.getpid(), initializer, initargs),
    )


def ordered_map(fn: Callable[[T], R], jobs: Sequence[T], workers: int) -> Iterator[R]:
    """``map(fn, jobs)`` in order; in spawned processes that die with this one when ``workers`` > 1."""
    if workers <= 1 or len(jobs) <= 1:
        yield from map(fn, jobs)
        return
    with spawn_pool(min(workers, len(jobs))) as pool:
        yield from pool.map(fn, jobs)
