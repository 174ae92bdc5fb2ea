"""The parallel runner of ``synthseg prepare``: one case per task, in spawned worker processes."""

from __future__ import annotations

import sys
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from synthseg.data.prepare.settings import PrepareSettings
from synthseg.data.prepare.slices import CaseResult, process_case
from synthseg.data.sources.brats import Case
from synthseg.data.sources.releases import BratsConvention
from synthseg.errors import InputError
from synthseg.utils.procs import spawn_pool


def worker(job: tuple[Case, BratsConvention, PrepareSettings, Path]) -> CaseResult:
    case = job[0]
    try:
        return process_case(*job)
    except InputError as err:
        return CaseResult(case=case.name, group=case.group, error=str(err))


def run_cases(
    cases: list[Case], convention: BratsConvention, settings: PrepareSettings, tmp: Path
) -> list[CaseResult]:
    """Process cases (in parallel when workers > 1); in ``stop`` mode the first error is raised."""
    from tqdm import tqdm

    jobs = [(case, convention, settings, tmp) for case in cases]
    bar = tqdm(total=len(jobs), desc="prepare", unit="case", disable=not settings.progress, file=sys.stderr)
    results: list[CaseResult] = []

    def collect(result: CaseResult) -> None:
        bar.update(1)
        if result.error is not None and settings.on_error == "stop":
            raise InputError(result.error)
        results.append(result)

    try:
        workers = min(int(settings.workers), len(jobs))
        if workers <= 1:
            for job in jobs:
                collect(worker(job))
        else:
            # dying with the parent: a SIGKILLed prepare must not leave workers writing into its partial folder
            with spawn_pool(workers) as pool:
                pending: set[Future[CaseResult]] = {pool.submit(worker, job) for job in jobs}
                try:
                    while pending:
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for future in sorted(done, key=lambda f: f.result().case):
                            collect(future.result())
                except BaseException:
                    for future in pending:
                        future.cancel()
                    raise
    finally:
        bar.close()
    return sorted(results, key=lambda r: r.case)
