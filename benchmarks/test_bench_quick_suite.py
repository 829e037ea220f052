"""The main offline job end to end: `tlbench run quick` with all strategies, cold cache.

Targets: the run at most 10 minutes on 2 CPU cores from a cold cache; reporting its store
with ``tlbench report`` under 30 s. Prints both times and each
strategy's training time.
"""

from __future__ import annotations

import os
import time

import pandas as pd

from tlbench.cli.main import main
from tlbench.strategies import STRATEGIES


def test_quick_suite_all_strategies_cold(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cold-cache"))  # nothing pretrained yet
    start = time.perf_counter()
    assert main(["run", "quick", "--out", str(tmp_path / "out")]) == 0
    seconds = time.perf_counter() - start
    runs = pd.read_parquet(tmp_path / "out" / "runs.parquet")
    assert set(runs["strategy"]) == set(STRATEGIES.names())
    per_strategy = runs.groupby("strategy")[["own_train_seconds", "train_seconds"]].sum().round(1)
    print(f"\nquick suite, {len(STRATEGIES.names())} strategies, cold cache: {seconds:.0f} s "
          f"on {os.cpu_count()} cores\n{per_strategy}")
    start = time.perf_counter()
    assert main(["report", str(tmp_path / "out"), "--out", str(tmp_path / "report")]) == 0
    report_seconds = time.perf_counter() - start
    print(f"tlbench report of that store: {report_seconds:.1f} s (process already warm)")
    assert seconds <= 600 and report_seconds < 30
