"""What each pruner saves on the quick suite, side by side in one run, over several sampler seeds.

For each suite seed (which seeds the samplers) the quick suite's fine-tuning strategies (those that
train the backbone for a searched 10–60 epochs: full fine-tuning, scratch, gradual unfreezing,
discriminative rates, L2-SP; ``TLBENCH_PRUNER_STRATEGIES`` changes the list) are tuned four times, 20
finished trials per cell, one evaluation seed (only tuning is compared): without pruning, with the median
pruner (the suite's: 3 start-up trials, warm-up 5 epochs), with successive halving and with
Hyperband (first rung at the warm-up's 5 epochs; reduction factors 4 and 3, Optuna's). For each
pruner: the backbone epochs trained over all cells against no pruning, and the best validation
accuracy per cell against no pruning (paired by cell and seed). Goal (issue 25): at least 3× fewer
backbone epochs than no pruning for at most 0.5 points lower mean best validation accuracy.

``pytest benchmarks/test_bench_pruners.py -s`` (about 20 minutes on 2 cores); ``TLBENCH_PRUNER_SEEDS``
sets the suite seeds (default ``0,1``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from tlbench.cli.main import main
from tlbench.reports.results import load_results

PRUNERS = ("none", "median", "successive_halving", "hyperband")
SEEDS = [int(s) for s in os.environ.get("TLBENCH_PRUNER_SEEDS", "0,1").split(",")]
STRATEGIES = os.environ.get("TLBENCH_PRUNER_STRATEGIES", "full_finetune,scratch,gradual_unfreeze,discriminative_lr,l2_sp")


def _tune(out: Path, pruner: str, seed: int) -> tuple[pd.Series, pd.Series, float, float]:
    start = time.perf_counter()
    assert main(["run", "quick", "--out", str(out), "--seeds", "1", "--report", "none", "--strategies", STRATEGIES,
                 "--set", f"seed={seed}",
                 "--set", f"search.pruner={pruner}"]) == 0
    seconds = time.perf_counter() - start
    runs = load_results(out / "store.journal", importances=False).runs
    cells = runs.dropna(subset=["tuning_compute"]).groupby(["task", "strategy"])
    compute, best = cells["tuning_compute"].first(), cells["tuning_best_val_accuracy"].first()
    return compute[compute > 0], best[compute > 0], seconds, float(runs["test_accuracy"].mean()) * 100


def test_pruners_against_no_pruning(tmp_path: Path) -> None:
    rows, best_by = [], {}
    for seed in SEEDS:
        for pruner in PRUNERS:
            compute, best, seconds, test = _tune(tmp_path / f"{pruner}-{seed}", pruner, seed)
            best_by[pruner, seed] = best
            rows.append({"pruner": pruner, "seed": seed, "epochs": float(compute.sum()), "cells": len(compute),
                         "mean best val": float(best.mean()) * 100, "test": test, "wall s": seconds})
            print(f"seed {seed} {pruner}: {compute.sum():.0f} backbone epochs over {len(compute)} cells, mean best "
                  f"val {best.mean() * 100:.2f}, {seconds:.0f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = []
    for pruner in PRUNERS:
        mine = table[table.pruner == pruner].set_index("seed")
        base = table[table.pruner == "none"].set_index("seed")
        gaps = pd.concat([(best_by["none", s] - best_by[pruner, s]).dropna() * 100 for s in SEEDS])
        summary.append({"pruner": pruner, "backbone epochs": mine["epochs"].sum(),
                        "fewer than none": base["epochs"].sum() / mine["epochs"].sum(),
                        "per seed": ", ".join(f"{b / m:.2f}x" for b, m in zip(base["epochs"], mine["epochs"])),
                        "best val lost (points)": gaps.mean(), "worst cell": gaps.max(),
                        # the selected configuration's test accuracy (one evaluation seed per cell: noisy)
                        "test, 1 seed": mine["test"].mean(), "wall s": mine["wall s"].sum()})
    result = pd.DataFrame(summary).set_index("pruner")
    print(f"\nquick suite ({STRATEGIES}), 20 trials per cell, suite seeds {SEEDS}, {os.cpu_count()} cores")
    print(result.round(2).to_string())
    assert result.loc["median", "fewer than none"] > 1
