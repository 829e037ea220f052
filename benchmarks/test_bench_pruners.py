"""What each pruner saves on the quick suite, side by side in one run, over several sampler seeds.

For each suite seed (which seeds the samplers) the quick suite's fine-tuning strategies (those that
train the backbone for a searched 10–60 epochs: full fine-tuning, scratch, gradual unfreezing,
discriminative rates, L2-SP; ``TLBENCH_PRUNER_STRATEGIES`` changes the list) are tuned, one
evaluation seed each (only tuning is compared):

- without pruning, 20 finished trials per cell;
- **equal trials**: each pruner (the median pruner as the suite sets it: 3 start-up trials, warm-up
  5 epochs; successive halving and Hyperband with their first rung at those 5 epochs and Optuna's
  reduction factors 4 and 3), 20 finished (completed or pruned) trials per cell;
- **equal compute**: each pruner with an epochs budget of the unpruned run's mean backbone epochs per
  cell / 3.2 (a third, with room for the last trial's overshoot): the epochs pruning frees buy more
  trials, as a user of a fixed budget would spend them.

For each: the backbone epochs trained over all cells against no pruning, and the best validation
accuracy per cell against no pruning (paired by cell and seed). Goal (issue 25): at least 3× fewer
backbone epochs than no pruning for at most 0.5 points lower mean best validation accuracy. Last, the
unpruned runs' learning curves are replayed under some forty pruner settings
(``pruner_replay.py``): the frontier of what pruning on these curves can save, and what bounds it;
then again with the pruners seeing the validation loss instead of the accuracy (``--signal loss``).

``pytest benchmarks/test_bench_pruners.py -s`` (about 35 minutes on 2 cores); ``TLBENCH_PRUNER_SEEDS``
sets the suite seeds (default ``0,1,2,3``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import optuna
import pandas as pd
import pruner_replay

from tlbench.cli.main import main
from tlbench.reports.results import load_results

PRUNERS = ("median", "successive_halving", "hyperband")
SEEDS = [int(s) for s in os.environ.get("TLBENCH_PRUNER_SEEDS", "0,1,2,3").split(",")]
STRATEGIES = os.environ.get("TLBENCH_PRUNER_STRATEGIES",
                            "full_finetune,scratch,gradual_unfreeze,discriminative_lr,l2_sp")
SHARE = 3.2  # the equal-compute budget: the unpruned mean epochs per cell / SHARE


def _tune(out: Path, pruner: str, seed: int, *extra: str) -> dict:
    start = time.perf_counter()
    assert main(["run", "quick", "--out", str(out), "--seeds", "1", "--report", "none", "--strategies", STRATEGIES,
                 "--set", f"seed={seed}", "--set", f"search.pruner={pruner}", *extra]) == 0
    seconds = time.perf_counter() - start
    runs = load_results(out / "store.journal", importances=False).runs
    cells = runs.dropna(subset=["tuning_compute"]).groupby(["task", "strategy"])
    compute, best = cells["tuning_compute"].first(), cells["tuning_best_val_accuracy"].first()
    return {"compute": compute[compute > 0], "best": best[compute > 0], "seconds": seconds,
            "test": float(runs["test_accuracy"].mean()) * 100}


def test_pruners_against_no_pruning(tmp_path: Path) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[tuple[str, str, int], dict] = {}
    for seed in SEEDS:
        none = results["none", "none", seed] = _tune(tmp_path / f"none-{seed}", "none", seed)
        budget = none["budget"] = round(float(none["compute"].mean()) / SHARE, 1)
        print(f"seed {seed} none: {none['compute'].sum():.0f} backbone epochs over {len(none['compute'])} cells, "
              f"mean best val {none['best'].mean() * 100:.2f}, {none['seconds']:.0f} s; equal compute: "
              f"{budget:g} epochs per cell", flush=True)
        for protocol, extra in (("equal trials", ()), ("equal compute", ("--set", f"budget.epochs={budget}"))):
            for pruner in PRUNERS:
                r = results[protocol, pruner, seed] = _tune(tmp_path / f"{pruner}-{protocol[6:]}-{seed}", pruner,
                                                            seed, *extra)
                gap = (none["best"] - r["best"]).dropna() * 100
                print(f"seed {seed} {pruner}, {protocol}: {none['compute'].sum() / r['compute'].sum():.2f}x fewer "
                      f"backbone epochs, best val lost {gap.mean():.2f} points, {r['seconds']:.0f} s", flush=True)
    summary = []
    for protocol, pruner in [("none", "none")] + [(p, q) for p in ("equal trials", "equal compute") for q in PRUNERS]:
        mine = [results[protocol, pruner, s] for s in SEEDS]
        base = [results["none", "none", s] for s in SEEDS]
        gaps = pd.concat([(b["best"] - m["best"]).dropna() * 100 for b, m in zip(base, mine)])
        summary.append({"protocol": protocol, "pruner": pruner,
                        "backbone epochs": sum(m["compute"].sum() for m in mine),
                        "fewer than none": (sum(b["compute"].sum() for b in base)
                                            / sum(m["compute"].sum() for m in mine)),
                        "per seed": ", ".join(f"{b['compute'].sum() / m['compute'].sum():.2f}x"
                                              for b, m in zip(base, mine)),
                        "best val lost (points)": gaps.mean(), "worst cell": gaps.max(),
                        # the selected configuration's test accuracy (one evaluation seed per cell: noisy)
                        "test, 1 seed": sum(m["test"] for m in mine) / len(mine),
                        "wall s": sum(m["seconds"] for m in mine)})
    result = pd.DataFrame(summary).set_index(["protocol", "pruner"])
    print(f"\nquick suite ({STRATEGIES}), 20 trials per cell or {SHARE:g}x less compute, suite seeds {SEEDS}, "
          f"{os.cpu_count()} cores")
    print(result.round(2).to_string())
    stores = [str(tmp_path / f"none-{seed}" / "store.journal") for seed in SEEDS]
    cells = pruner_replay.cells_of(stores)
    budgets = {str(i): results["none", "none", seed]["budget"] for i, seed in enumerate(SEEDS)}  # by store index
    within = pruner_replay.unpruned_within(cells, lambda key: budgets[key.split(pruner_replay.SEP)[0]])
    print(f"no pruning within the equal-compute budget (the unpruned runs' first trials, replayed): "
          f"{within.ratio:.2f}x fewer backbone epochs, best val lost {within.lost:.2f} points (worst cell "
          f"{within.worst:.1f}), {within.finished:.1f} trials per cell")
    print("\nreplay of the unpruned runs' learning curves (pruner_replay.py):")
    print(pruner_replay.summary(cells))
    losses = pruner_replay.cells_of(stores, signal="loss")
    print("\nthe same, the pruners seeing the validation loss (pruner_replay.py --signal loss):")
    print(pruner_replay.summary(losses, signal="loss"))
    assert losses.keys() == cells.keys()  # every unpruned trial kept its losses
    assert result.loc[("equal trials", "median"), "fewer than none"] > 1
    assert result.loc[("equal compute", "median"), "fewer than none"] > 2
