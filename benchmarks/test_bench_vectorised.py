"""Ten evaluation seeds of one configuration: trained one after another vs side by side as one
vectorised model (``--seeds-together``), on the quick suite's two cells and full fine-tuning; and
ten tuning trials of one cell (random search: ten configurations, 10–60 epochs each) one after
another vs side by side (``--trials-together``), through the tuner itself (claims, store, trials).

Each side is the real path: the strategy's ``fit`` for each seed, then (side by side) the group's
training; scoring is the same on both sides and left out. Goal (issue 25): the quick suite's
evaluation phase ≥ 3× faster on 2 cores. The per-cell ratios here bound it: they are the
training part only, for the strategy with the most evaluation time.
"""

from __future__ import annotations

import pytest
import torch
from _setup import QUICK
from _sides import ratio, time_side

from tlbench.run.plan import load_plan
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.training import vectorised
from tlbench.training.backbones import build_backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import NullReporter

SEEDS = list(range(10))
EPOCHS = 30  # about the middle of the quick suite's searched range (10-60) and of its selected epochs
PARAMS = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_fraction": 0.1, "epochs": EPOCHS}
# the quick suite's cells: its tasks with its backbones' architectures (random weights time the same)
CELLS = {"digits-2shot": ("cnn2d", {"width": 32, "depth": 3}), "mnist1d-shifted": ("cnn1d", {"width": 32, "depth": 3})}
_TASKS: dict = {}


def _task(name):
    if not _TASKS:
        _TASKS.update(load_plan(QUICK).tasks)
    return _TASKS[name]


def _train(cell: str, together: bool) -> None:
    arch, args = CELLS[cell]
    backbone, task = build_backbone(arch, args, seed=0), _task(cell)
    strategy, runtime = FullFinetune(epochs=(10, 60), batch_size=32), Runtime()

    def fit(seed):
        return strategy.fit(backbone, task, PARAMS, seed=seed, reporter=NullReporter(per_epoch=False), runtime=runtime)

    if not together:
        for seed in SEEDS:
            fit(seed)
        return
    with vectorised.side_by_side() as group:
        for seed in SEEDS:
            with group.fit():
                fit(seed)
        group.train()
    assert group.stacked == len(SEEDS), group.sequential_reason


@pytest.mark.parametrize("side", ["alone", "together"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_ten_seeds(benchmark, cell, side) -> None:
    torch.set_num_threads(2)
    time_side(benchmark, f"ten-seeds-{cell}", side, lambda: _train(cell, side == "together"), rounds=3)


@pytest.mark.parametrize("cell", list(CELLS))
def test_ten_seeds_ratio(cell) -> None:
    r = ratio(f"ten-seeds-{cell}", "alone", "together")
    print(f"\n{cell}: ten seeds of full fine-tuning, {EPOCHS} epochs: side by side {r:.2f}x faster than one at a time")
    assert r > 1.0


TRIALS = 10


def _tune(cell: str, together: bool, folder) -> None:
    from tlbench.core.budget import Budget
    from tlbench.run.tuning import make_study, tune
    from tlbench.store.opening import open_storage
    from tlbench.suites.schema import SearchSpec

    arch, args = CELLS[cell]
    backbone, task = build_backbone(arch, args, seed=0), _task(cell)
    strategy = FullFinetune(epochs=(10, 60), batch_size=32)
    budget = Budget(trials=TRIALS)
    study = make_study(f"quick::{cell}::{arch}::full_finetune::tune", open_storage(None, folder), budget=budget,
                       seed=0, search=SearchSpec(sampler="random", pruner="none"))
    tune(study, strategy, backbone, task, budget=budget, suite_seed=0,
         runtime=Runtime(trials_together=TRIALS if together else 1))
    stacked = [t.user_attrs.get("vectorised", 1) for t in study.get_trials() if t.state.is_finished()]
    assert len(stacked) == TRIALS and set(stacked) == ({TRIALS} if together else {1}), stacked


@pytest.mark.parametrize("side", ["alone", "together"])
@pytest.mark.parametrize("cell", list(CELLS))
def test_ten_trials(benchmark, cell, side, tmp_path) -> None:
    torch.set_num_threads(2)
    rounds = iter(range(1000))
    time_side(benchmark, f"ten-trials-{cell}", side,
              lambda: _tune(cell, side == "together", tmp_path / str(next(rounds))), rounds=3)


@pytest.mark.parametrize("cell", list(CELLS))
def test_ten_trials_ratio(cell) -> None:
    r = ratio(f"ten-trials-{cell}", "alone", "together")
    print(f"\n{cell}: ten tuning trials of full fine-tuning (random search, 10-60 epochs): side by side {r:.2f}x "
          f"faster than one at a time")
    assert r > 1.0
