"""Equal compute against equal trials, and what the median pruner saves, on the quick suite.

Three runs of the quick suite (3 evaluation seeds each, to keep the benchmark under half an
hour on 2 CPU cores):

* **trials**: the suite as it is (20 finished trials per cell, median pruner);
* **epochs**: ``budget: {epochs: E}`` with E the median compute the trials run spent per cell,
  so every strategy gets the same compute instead of the same number of trials;
* **no pruner**: 20 trials per cell without pruning.

Prints each strategy's tuning compute and test accuracy under both budgets, the two rankings
(average rank over the tasks), and the pruner's saving: total backbone epochs trained and best
validation accuracy per cell with and without it (goal: ≥ 3× fewer epochs for ≤ 0.5 point of
best validation accuracy; reported either way).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd

from tlbench.cli.main import main
from tlbench.reports.results import load_results
from tlbench.suites import bundled_suites

SEEDS = "3"


def _run(suite: Path | str, out: Path) -> float:
    start = time.perf_counter()
    assert main(["run", str(suite), "--out", str(out), "--seeds", SEEDS]) == 0
    return time.perf_counter() - start


def _suite(tmp_path: Path, name: str, extra: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f'include: "{bundled_suites()["quick"]}"\nname: quick\n{extra}')
    return path


def _ranks(runs: pd.DataFrame) -> pd.Series:
    means = runs.groupby(["task", "strategy"])["test_accuracy"].mean().unstack("task")
    return means.rank(ascending=False).mean(axis=1).sort_values()


def test_equal_compute_against_equal_trials_and_the_pruner_saving(tmp_path) -> None:
    seconds = {"trials": _run("quick", tmp_path / "trials")}
    a = load_results(tmp_path / "trials" / "store.journal", importances=False)
    tuned = a.runs.dropna(subset=["tuning_compute"]).groupby(["task", "strategy"])["tuning_compute"].first()
    tuned = tuned[tuned > 0]
    epochs = float(tuned.median())
    seconds["epochs"] = _run(_suite(tmp_path, "epochs", f"budget: {{epochs: {epochs:.1f}}}\n"), tmp_path / "epochs")
    b = load_results(tmp_path / "epochs" / "store.journal", importances=False)
    seconds["no pruner"] = _run(_suite(tmp_path, "nopruner", "search: {pruner: none}\n"), tmp_path / "nopruner")
    c = load_results(tmp_path / "nopruner" / "store.journal", importances=False)

    def per_strategy(results) -> pd.DataFrame:
        runs = results.runs
        return runs.groupby("strategy").agg(compute=("tuning_compute", "mean"), trials=(
            "tuning_trials_complete", "mean"), pruned=("tuning_trials_pruned", "mean"),
            test=("test_accuracy", "mean"))

    side = pd.concat([per_strategy(a).add_suffix(" (20 trials)"),
                      per_strategy(b).add_suffix(f" ({epochs:.0f} epochs)")], axis=1)
    ranks = pd.DataFrame({"rank, 20 trials": _ranks(a.runs), f"rank, {epochs:.0f} epochs": _ranks(b.runs)})
    ranks["moved"] = ranks.iloc[:, 1] - ranks.iloc[:, 0]
    total = {name: float(r.runs.groupby(["task", "strategy"])["tuning_compute"].first().sum())
             for name, r in (("median pruner", a), ("no pruner", c))}
    best = {name: r.runs.groupby(["task", "strategy"])["tuning_best_val_accuracy"].first()
            for name, r in (("median pruner", a), ("no pruner", c))}
    gap = (best["no pruner"] - best["median pruner"]).dropna() * 100
    print(f"\nquick suite on {os.cpu_count()} cores, {SEEDS} evaluation seeds; wall s: "
          + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
    print(f"equal compute: {epochs:.1f} backbone epochs per cell (the median the 20-trial run spent)")
    print(side.round(3).to_string())
    print(ranks.sort_values(ranks.columns[0]).round(2).to_string())
    print(f"pruner: {total['no pruner']:.0f} backbone epochs without, {total['median pruner']:.0f} with "
          f"({total['no pruner'] / max(total['median pruner'], 1e-9):.2f}x fewer); best validation accuracy "
          f"without minus with: mean {gap.mean():+.2f} points, max {gap.max():+.2f} over {len(gap)} cells")
    assert total["median pruner"] < total["no pruner"]
