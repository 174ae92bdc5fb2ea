"""Run a graph of jobs: each starts once the jobs it needs are done, up to ``workers`` of them at once.

The demo's stages form such a graph (the real-data U-Nets need only the prepared slices, not the GANs).
At the demo's sizes a second intra-op thread adds little to one training step, so two jobs with one thread
each finish sooner than the same jobs one after the other with two threads (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass

from synthseg.utils.procs import spawn_pool


@dataclass
class Job:
    """``run()`` once every job named in ``needs`` is done (names not in the graph count as done)."""

    key: str
    run: Callable[[], object]  # picklable (a module-level function or a partial of one) when run by a worker
    needs: tuple[str, ...] = ()
    # In this process with nothing else running: the job parallelises itself (its own worker processes).
    alone: bool = False


def _set_up_worker(threads: int, initializer: Callable[[], None] | None) -> None:
    import torch

    torch.set_num_threads(threads)
    if initializer is not None:
        initializer()


def _stop(pool: ProcessPoolExecutor) -> None:
    """Stop ``pool`` now, its running jobs included (Python < 3.14 has no public call for the last part)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.kill()


def run_graph(
    jobs: Sequence[Job],
    workers: int,
    *,
    threads: int = 1,
    initializer: Callable[[], None] | None = None,
    on_start: Callable[[Job], None] = lambda job: None,
    on_done: Callable[[Job, float], None] = lambda job, seconds: None,
) -> None:
    """Run ``jobs``, preferring them in list order among those whose needs are met.

    With ``workers`` > 1, jobs that are not ``alone`` run in spawned processes that die with this one, each
    with ``threads`` torch threads and ``initializer()`` called once; with ``workers`` == 1 every job runs
    here, one after the other, in list order. ``on_start`` and ``on_done`` (with the job's wall seconds) are
    called here. A job that raises stops the graph: the running jobs are killed and its error raised here.
    """
    keys = {job.key for job in jobs}
    pending = list(jobs)
    done: set[str] = set()
    running: dict[Future[object], tuple[Job, float]] = {}
    pool: ProcessPoolExecutor | None = None

    def ready() -> list[Job]:
        return [j for j in pending if all(n in done or n not in keys for n in j.needs)]

    def finish(job: Job, start: float) -> None:
        done.add(job.key)
        on_done(job, time.perf_counter() - start)

    try:
        while pending or running:
            for job in ready():
                if workers <= 1 or job.alone:
                    if running:
                        continue
                    pending.remove(job)
                    on_start(job)
                    start = time.perf_counter()
                    job.run()
                    finish(job, start)
                    break  # its completion may make earlier jobs ready
                if len(running) < workers:
                    if pool is None:
                        pool = spawn_pool(workers, _set_up_worker, (threads, initializer))
                    pending.remove(job)
                    on_start(job)
                    running[pool.submit(job.run)] = (job, time.perf_counter())
            else:
                if not running:
                    if pending:
                        raise RuntimeError(f"jobs whose needs are never met: {[j.key for j in pending]}")
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    job, start = running.pop(future)
                    future.result()  # a job's error, raised here
                    finish(job, start)
    finally:
        if pool is not None:
            if running:
                _stop(pool)
            else:
                pool.shutdown()
