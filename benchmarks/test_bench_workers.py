"""Throughput of several workers on one store: a suite's wall time with one worker (all cores, or
one thread) against one worker per core (``tlbench launch``, each pinned to one core with one torch
thread), measured side by side in one run, from a warm backbone cache, on the smoke suite and on a
larger slice of the quick suite; the workers' records must equal the 1-thread single worker's.
Goal: two workers ≥ 0.85 × 2 = 1.7× the faster single worker's throughput.

    pytest benchmarks/test_bench_workers.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs

#: (suite, extra run options): the smoke suite the issue names (about 10 s of work: fixed costs
#: dominate), and a larger slice of the quick suite where the work does.
WORKLOADS = {"smoke": ("smoke", []),
             "quick-slice": ("quick", ["--strategies", "linear_probe,full_finetune,scratch,l2_sp", "--trials", "12",
                                       "--seeds", "8"])}


def _tlbench(*args: str, cache: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlbench.cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return time.perf_counter() - start


@pytest.mark.parametrize("workload", list(WORKLOADS))
def test_two_workers_against_one(tmp_path, workload) -> None:
    SUITE, options = WORKLOADS[workload]
    cache = Path(os.environ["TLBENCH_CACHE"])
    # warm the backbone cache (pretraining is the same for every configuration and not measured)
    _tlbench("run", SUITE, "--out", str(tmp_path / "warm"), "--strategies", "linear_probe", "--trials", "1",
             "--seeds", "1", "--report", "none", cache=cache)
    cores = len(os.sched_getaffinity(0))
    runs = {}
    for i, (name, args) in enumerate([
        (f"1 worker, {cores} threads", ["run", SUITE, "--threads", str(cores)]),
        ("1 worker, 1 thread", ["run", SUITE, "--threads", "1"]),
        (f"{cores} workers (launch), 1 thread each", ["launch", SUITE, "--jobs", str(cores), "--report", "none"]),
    ]):
        out = tmp_path / f"run{i}"  # a store of its own each
        storage = f"journal:{out / 'store.journal'}"
        extra = ["--report", "none"] if args[0] == "run" else []
        runs[name] = (_tlbench(*args, "--out", str(out), "--storage", storage, *options, *extra, cache=cache),
                      storage)
    keys = ["task", "backbone", "strategy", "seed"]
    frames = {name: load_runs(open_storage(url, tmp_path), SUITE).sort_values(keys, ignore_index=True)
              for name, (_, url) in runs.items()}
    one_thread = frames["1 worker, 1 thread"]
    many = frames[f"{cores} workers (launch), 1 thread each"]
    assert many["test_accuracy"].equals(one_thread["test_accuracy"]) and many["params"].equals(one_thread["params"])
    base = min(runs[f"1 worker, {cores} threads"][0], runs["1 worker, 1 thread"][0])  # the faster single worker
    table = pd.DataFrame([{"configuration": name, "wall s": round(seconds, 1), "throughput ×": round(base / seconds, 2)}
                          for name, (seconds, _) in runs.items()])
    print(f"\n{workload} ({len(one_thread)} evaluation runs), {cores} cores, throughput against the faster single "
          f"worker:\n{table.to_string(index=False)}")
    print("records of the workers equal the single 1-thread worker's: yes")
