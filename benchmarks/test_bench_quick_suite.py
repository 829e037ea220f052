"""The main offline job end to end: `tlbench run quick` with all strategies, cold cache.

Target (issue 3): at most 10 minutes on 2 CPU cores from a cold cache. Prints the wall
time, the slowest cells' share and the accuracy table.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from harness.cli import main
from strategies import STRATEGIES


def test_quick_suite_all_strategies_cold(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cold-cache"))  # nothing pretrained yet
    start = time.perf_counter()
    assert main(["run", "quick", "--out", str(tmp_path / "out")]) == 0
    seconds = time.perf_counter() - start
    runs = pd.read_parquet(tmp_path / "out" / "results.parquet")
    assert set(runs["strategy"]) == set(STRATEGIES.names())
    per_strategy = runs.groupby("strategy")[["own_train_seconds", "train_seconds"]].sum().round(1)
    print(f"\nquick suite, {len(STRATEGIES.names())} strategies, cold cache: {seconds:.0f} s "
          f"on {os.cpu_count()} cores\n{per_strategy}")
    assert seconds <= 600
