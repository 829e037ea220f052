"""Throughput of several workers on one store: the smoke suite's wall time with one worker against
two (``tlbench launch --jobs 2``, each pinned to one core with one torch thread), measured side by
side in one run, from a warm backbone cache, with one uninterrupted single-worker run as the
reference. Goal: two workers ≥ 0.85 × 2 = 1.7× the single worker's throughput.

    pytest benchmarks/test_bench_workers.py -s
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from tlbench.records import load_runs
from tlbench.storage import open_storage

SUITE = "smoke"


def _tlbench(*args: str, cache: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "tlbench.cli", *args, "--cache-dir", str(cache)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return time.perf_counter() - start


def test_two_workers_against_one(tmp_path) -> None:
    cache = Path(os.environ["TLBENCH_CACHE"])
    # warm the backbone cache (pretraining is the same for every configuration and not measured)
    _tlbench("run", SUITE, "--out", str(tmp_path / "warm"), "--strategies", "linear_probe", "--trials", "1",
             "--seeds", "1", "--report", "none", cache=cache)
    cores = len(os.sched_getaffinity(0))
    runs = {}
    for name, args in [
        (f"1 worker, {cores} threads", ["run", SUITE, "--threads", str(cores)]),
        ("1 worker, 1 thread", ["run", SUITE, "--threads", "1"]),
        (f"{cores} workers (launch), 1 thread each", ["launch", SUITE, "--jobs", str(cores), "--report", "none"]),
    ]:
        out = tmp_path / name.split(",")[0].replace(" ", "-")
        storage = f"journal:{out / 'store.journal'}"
        extra = ["--report", "none"] if args[0] == "run" else []
        runs[name] = (_tlbench(*args, "--out", str(out), "--storage", storage, *extra, cache=cache), storage)
    keys = ["task", "backbone", "strategy", "seed"]
    frames = {name: load_runs(open_storage(url, tmp_path), SUITE).sort_values(keys, ignore_index=True)
              for name, (_, url) in runs.items()}
    one_thread = frames["1 worker, 1 thread"]
    many = frames[f"{cores} workers (launch), 1 thread each"]
    assert many["test_accuracy"].equals(one_thread["test_accuracy"]) and many["params"].equals(one_thread["params"])
    base = runs[f"1 worker, {cores} threads"][0]
    table = pd.DataFrame([{"configuration": name, "wall s": round(seconds, 1), "throughput ×": round(base / seconds, 2)}
                          for name, (seconds, _) in runs.items()])
    print(f"\nsmoke suite ({len(one_thread)} evaluation runs), {cores} cores:\n{table.to_string(index=False)}")
    print("records of the workers equal the single 1-thread worker's: yes")
