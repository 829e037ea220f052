"""Where a report's time goes: ``python benchmarks/report_time.py STORE.journal OUT [--figures]``.

Times reading the store (``load_results``: runs and trials; the fANOVA importances are left for the
report, as ``tlbench report`` does) and writing the report (``write_report``: fANOVA and figures in
worker processes on every core while this process computes statistics and tables, then HTML), in
process. ``--figures`` then draws each figure again one at a time and prints its seconds, largest
first (the CPU each costs), and the fANOVA's. Run it with two installs side by side (the previous
release in a worktree) to compare releases; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

START = time.perf_counter()

import tlbench.reports.build as build  # noqa: E402
from tlbench.reports.parallel import JobPool  # noqa: E402
from tlbench.reports.results import load_results  # noqa: E402
from tlbench.store.opening import open_existing_storage  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", help="a run's store.journal (or a database URL)")
    parser.add_argument("out", type=Path, help="where to write the report")
    parser.add_argument("--suite", default=None, help="the suite (default: every suite in the store)")
    parser.add_argument("--figures", action="store_true", help="also time each figure alone")
    args = parser.parse_args()
    imported = time.perf_counter()
    results = load_results(open_existing_storage(args.store), args.suite, importances="later")
    loaded = time.perf_counter()
    build.write_report(results, args.out, title="report_time")
    written = time.perf_counter()
    print(f"imports {imported - START:.1f} s, load {loaded - imported:.1f} s, write {written - loaded:.1f} s, "
          f"load + write {written - imported:.1f} s")
    if not args.figures:
        return
    times: list[tuple[float, str]] = []

    class OneAtATime(JobPool):  # the report's jobs, each run here and timed alone
        def __init__(self, processes=None):
            super().__init__(1)

        def submit(self, job):
            start = time.perf_counter()
            future = super().submit(job)
            made = future.result()
            name = ", ".join(p.stem for p in made[:1]) if isinstance(made, list) else "fANOVA"
            times.append((time.perf_counter() - start, name or job[0].__name__))
            return future

    build.JobPool = OneAtATime
    results = load_results(open_existing_storage(args.store), args.suite, importances="later")
    build.write_report(results, args.out, title="report_time")
    figures = [(s, n) for s, n in times if n != "fANOVA"]
    for seconds, name in sorted(figures, reverse=True):
        print(f"{seconds:6.2f} s  {name}")
    print(f"{sum(s for s, _ in figures):6.2f} s  all {len(figures)} figures, one after the other")
    fanova = [s for s, n in times if n == "fANOVA"]
    print(f"{sum(fanova):6.2f} s  fANOVA importances of {len(fanova)} cells, one after the other")


if __name__ == "__main__":
    main()
