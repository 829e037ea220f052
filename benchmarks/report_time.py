"""Where a report's time goes: ``python benchmarks/report_time.py STORE.journal OUT [--figures]``.

Times reading the store (``load_results``: runs, trials, fANOVA importances on every core) and writing the
report (``write_report``: statistics, tables, figures on every core, HTML), in process, as ``tlbench report``
does them. ``--figures`` then draws each figure again one at a time and prints its seconds, largest first
(the CPU each costs; the report draws them in parallel). Run it with two installs side by side (the
previous release in a worktree) to compare releases; docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

START = time.perf_counter()

import tlbench.reports.build as build  # noqa: E402
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
    results = load_results(open_existing_storage(args.store), args.suite)
    loaded = time.perf_counter()
    build.write_report(results, args.out, title="report_time")
    written = time.perf_counter()
    print(f"imports {imported - START:.1f} s, load {loaded - imported:.1f} s, write {written - loaded:.1f} s, "
          f"load + write {written - imported:.1f} s")
    if not args.figures:
        return
    times: list[tuple[float, str]] = []

    def one_at_a_time(jobs, processes=None):  # the report's jobs, each timed alone
        made = []
        for fn, fn_args, kwargs in jobs:
            start = time.perf_counter()
            made.append(fn(*fn_args, **kwargs))
            times.append((time.perf_counter() - start, ", ".join(p.stem for p in made[-1][:1]) or fn.__name__))
        return made

    build.run_jobs = one_at_a_time
    build.write_report(results, args.out, title="report_time")
    for seconds, name in sorted(times, reverse=True):
        print(f"{seconds:6.2f} s  {name}")
    print(f"{sum(s for s, _ in times):6.2f} s  all {len(times)} figures, one after the other")


if __name__ == "__main__":
    main()
