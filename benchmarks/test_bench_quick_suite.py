"""The main offline job end to end: `tlbench run quick` with all its strategies, cold cache.

Targets: the run at most 10 minutes on 2 CPU cores from a cold cache; reporting its store with
``tlbench report`` under 30 s; time outside every named phase ("other": start-up, planning,
claims and store writes) at most 10% of the run. Prints both times, where the run's time went
and each strategy's training time, and checks that the README's quick-suite tables are exactly
this run's (on CPU; ``python benchmarks/readme_quick.py RUN_DIR`` rewrites them).
"""

from __future__ import annotations

import os
import time

import pandas as pd
from readme_quick import FILES, GETTING_STARTED, blocks, from_run

from tlbench.cli.main import main
from tlbench.core.phases import describe
from tlbench.store.opening import open_storage
from tlbench.store.progress import stored_timings
from tlbench.suites import bundled_suites
from tlbench.suites.schema import parse_suite


def test_quick_suite_all_strategies_cold(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cold-cache"))  # nothing pretrained yet
    start = time.perf_counter()
    assert main(["run", "quick", "--out", str(tmp_path / "out")]) == 0
    seconds = time.perf_counter() - start
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert set(runs["strategy"]) == set(parse_suite(bundled_suites()["quick"]).strategies)
    per_strategy = runs.groupby("strategy")[["own_train_seconds", "train_seconds"]].sum().round(1)
    timing = stored_timings(open_storage(None, tmp_path / "out"), "quick")[-1]
    breakdown = {k: v for k, v in timing.items() if k not in ("worker", "ended")}
    print(f"\nquick suite, {runs['strategy'].nunique()} strategies, cold cache: {seconds:.0f} s "
          f"on {os.cpu_count()} cores\n{describe(breakdown)}\n{per_strategy}")
    start = time.perf_counter()
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "report")]) == 0
    report_seconds = time.perf_counter() - start
    print(f"tlbench report of that store: {report_seconds:.1f} s (process already warm)")
    fresh = from_run(tmp_path / "out")
    assert {"test", "shifted"} <= set(blocks(GETTING_STARTED.read_text()))
    for path in FILES:  # the README and docs/getting-started.md
        for name, table in blocks(path.read_text()).items():
            if name != "time":
                assert table == fresh[name], f"{path.name}'s {name} table is not this run's:\n{fresh[name]}"
    assert seconds <= 600 and report_seconds < 30
    assert breakdown["other"] <= 0.10 * breakdown["wall"]
