"""Independent pieces of a report (figures, fANOVA importances) computed in forked processes.

Each job is a module-level function and its arguments (they are pickled to the worker); the
results come back in the jobs' order, and an exception in a job is raised in the caller. With
one core, one job, or no ``fork`` start method, the jobs run here, one after another: the
results are the same either way (the figures' files byte for byte; tested).

:class:`JobPool` takes jobs as they become known, so that a report's workers draw the figures
that need only the stored results while this process computes the tables the rest need.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Callable

from tlbench.core.processes import core_count

Job = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]


def run_jobs(jobs: list[Job], *, processes: int | None = None) -> list[Any]:
    """Each job's result, in order; in ``processes`` forked workers (default: the cores this
    process may use) when that is more than one and there are several jobs."""
    processes = processes or core_count()
    with JobPool(min(processes, len(jobs)) if len(jobs) > 1 else 1) as pool:
        futures = [pool.submit(job) for job in jobs]
        return [future.result() for future in futures]


class JobPool:
    """Forked workers (``processes``, default: the cores this process may use) that run jobs
    submitted at any time; with one process, or no ``fork`` start method, each job runs at
    once, here, when submitted. Leaving the ``with`` block waits for the jobs submitted
    (and, after an exception, cancels those not started)."""

    def __init__(self, processes: int | None = None) -> None:
        self.processes = processes or core_count()
        self._executor: ProcessPoolExecutor | None = None

    def __enter__(self) -> "JobPool":
        if self.processes >= 2 and "fork" in multiprocessing.get_all_start_methods():
            self._executor = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("fork"))
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=kind is not None)

    def submit(self, job: Job) -> Future:
        """The job's future result (done already when this pool runs jobs here)."""
        fn, args, kwargs = job
        if self._executor is not None:
            return self._executor.submit(fn, *args, **kwargs)
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as error:  # raised by result(), as a worker's would be
            future.set_exception(error)
        return future
