"""Throughput of several workers on one store: a suite's wall time with one worker (all cores, or
one thread) against one worker per core (``tlbench launch``, each pinned to one core with one torch
thread), measured side by side in one run, from a warm backbone cache, on the smoke suite and on a
larger slice of the quick suite; the workers' records must equal the 1-thread single worker's.
Goal: two workers ≥ 0.85 × 2 = 1.7× the faster single worker's throughput. Also a worker's fixed cost
(``test_fixed_cost``): a worker of the quick suite that finds nothing left to do, planning the suite itself
with its datasets generated, planning it with its datasets read from the cache's ``pools/``, and reading
the plan a launcher handed it (``--plan-file``); each side a benchmarked function (3 rounds).

    pytest benchmarks/test_bench_workers.py -s
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from _sides import ratio, time_side

from tlbench.run.handoff import hand_over
from tlbench.run.plan import load_plan
from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs
from tlbench.suites import resolve_suite_path

#: (suite, extra run options): the smoke suite the issue names (about 10 s of work: fixed costs dominate), a
#: larger slice of the quick suite where the work does, and the whole quick suite with four times its trials and
#: three times its seeds (the issue's workload of at least ten minutes for one worker; 60 trials and 20 seeds were,
#: until an ensemble's members trained side by side: 532 s for a worker on one thread since).
WORKLOADS = {"smoke": ("smoke", []),
             "quick-slice": ("quick", ["--strategies", "linear_probe,full_finetune,scratch,l2_sp", "--trials", "12",
                                       "--seeds", "8"]),
             "quick-long": ("quick", ["--trials", "80", "--seeds", "30"])}


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
    single, lone = f"1 worker, {cores} threads", "1 worker, 1 thread"
    many_name = f"{cores} workers (launch), 1 thread each"
    configurations = [(single, ["run", SUITE, "--threads", str(cores)]),
                      (lone, ["run", SUITE, "--threads", "1"]),
                      (many_name, ["launch", SUITE, "--jobs", str(cores), "--report", "none"])]
    for i, (name, args) in enumerate(configurations):
        out = tmp_path / f"run{i}"  # a store of its own each
        storage = f"journal:{out / 'store.journal'}"
        extra = ["--report", "none"] if args[0] == "run" else []
        runs[name] = (_tlbench(*args, "--out", str(out), "--storage", storage, *options, *extra, cache=cache),
                      storage)
    keys = ["task", "backbone", "strategy", "seed"]
    frames = {name: load_runs(open_storage(url, tmp_path), SUITE).sort_values(keys, ignore_index=True)
              for name, (_, url) in runs.items()}
    many = frames[many_name]
    assert many[keys].equals(frames[single][keys])  # the same runs, whoever did them
    # bit-identical records need the same thread count: the workers' equal the 1-thread single worker's
    assert many["test_accuracy"].equals(frames[lone]["test_accuracy"]) and many["params"].equals(frames[lone]["params"])
    base = min(seconds for name, (seconds, _) in runs.items() if name != many_name)  # the faster single worker
    table = pd.DataFrame([{"configuration": name, "wall s": round(seconds, 1), "throughput ×": round(base / seconds, 2),
                           "× the 1-thread worker": round(runs[lone][0] / seconds, 2)}
                          for name, (seconds, _) in runs.items()])
    print(f"\n{workload} ({len(many)} evaluation runs), {cores} cores, throughput against the faster single "
          f"worker and against the single worker on one thread (each worker of the launch has one):\n"
          f"{table.to_string(index=False)}\nrecords of the workers equal the single 1-thread worker's: yes")


# ------------------------------------------------------------------ a worker's fixed cost

FIXED = "worker fixed cost"
SIDES = ("plans itself, generates the datasets", "plans itself, datasets from pools/", "reads the launcher's plan")
SLICE = ["--strategies", "linear_probe", "--trials", "1", "--seeds", "1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A quick-suite store whose (one-strategy) cells are all done, and the plan a launcher would hand over."""
    out = tmp_path_factory.mktemp("finished")
    cache = Path(os.environ["TLBENCH_CACHE"])
    _tlbench("run", "quick", "--out", str(out), *SLICE, "--report", "none", cache=cache)
    plan = load_plan(resolve_suite_path("quick"), strategies=["linear_probe"], trials=1, seeds=1, cache_dir=cache)
    return out, hand_over(plan, out / "workers")


@pytest.mark.parametrize("side", SIDES)
def test_fixed_cost(benchmark, finished, side: str) -> None:
    out, plan_file = finished
    cache = Path(os.environ["TLBENCH_CACHE"])
    extra = ["--plan-file", str(plan_file)] if side == SIDES[2] else []

    def worker() -> None:
        if side == SIDES[0]:
            shutil.rmtree(cache / "pools", ignore_errors=True)
        _tlbench("run", "quick", "--out", str(out), *SLICE, "--report", "none", *extra, cache=cache)

    time_side(benchmark, FIXED, side, worker, rounds=3, warmup_rounds=0)


def test_fixed_cost_ratios() -> None:
    print(f"\n{FIXED} (quick suite, nothing left to do): the datasets kept in pools/ "
          f"{ratio(FIXED, SIDES[0], SIDES[1]):.2f}x, the launcher's plan read {ratio(FIXED, SIDES[0], SIDES[2]):.2f}x "
          f"faster than planning with the datasets generated")


# ------------------------------------------------------------------ what bounds two workers on this machine

SPIN = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(32, 32, 3, padding=1),
                        torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32 * 64, 10))
opt = torch.optim.AdamW(m.parameters())
x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
start = time.perf_counter()
for _ in range(1500):
    loss = torch.nn.functional.cross_entropy(m(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
print(time.perf_counter() - start)
"""


def test_what_bounds_two_workers() -> None:
    """A small CNN's training loop (1,500 steps, batch 64 of 8×8): alone on one core, two copies on two cores at
    once (does one slow the other?), and one copy with two threads (how much faster one worker gets from the
    second core). Two workers can be at most 2 × (pair speed) / (two-thread speed-up) times one two-thread
    worker. (On one core the pair shares it, and the bound comes out for that machine.)"""
    cores = sorted(os.sched_getaffinity(0))
    cores = [cores[0], cores[1 % len(cores)]]

    def spin(threads: int, core: list[int]) -> subprocess.Popen[str]:
        return subprocess.Popen(["taskset", "-c", ",".join(map(str, core)), sys.executable, "-c", SPIN, str(threads)],
                                stdout=subprocess.PIPE, text=True)

    alone = float(spin(1, cores[:1]).communicate()[0])
    pair = [spin(1, [c]) for c in cores]
    both = [float(p.communicate()[0]) for p in pair]
    two_threads = float(spin(2, sorted(set(cores))).communicate()[0])
    slowdown, speedup = max(both) / alone, alone / two_threads
    print(f"\nalone {alone:.2f} s; two at once {both[0]:.2f} s and {both[1]:.2f} s ({slowdown:.3f}x slower); two "
          f"threads {two_threads:.2f} s ({speedup:.2f}x); two workers at most {2 / slowdown / speedup:.2f}x a worker "
          f"on two threads for this loop")
