"""Independent pieces of a report (figures, fANOVA importances) computed in forked processes.

Each job is a module-level function and its arguments (they are pickled to the worker); the
results come back in the jobs' order, and an exception in a job is raised in the caller. With
one core, one job, or no ``fork`` start method, the jobs run here, one after another: the
results are the same either way (the figures' files byte for byte; tested).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable

from tlbench.core.processes import core_count

Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def run_jobs(jobs: list[Job], *, processes: int | None = None) -> list[Any]:
    """Each job's result, in order; in ``processes`` forked workers (default: the cores this
    process may use) when that is more than one and there are several jobs."""
    processes = processes or core_count()
    if processes < 2 or len(jobs) < 2 or "fork" not in multiprocessing.get_all_start_methods():
        return [fn(*args, **kwargs) for fn, args, kwargs in jobs]
    with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(fn, *args, **kwargs) for fn, args, kwargs in jobs]
        return [future.result() for future in futures]
