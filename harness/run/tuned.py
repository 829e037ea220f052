"""The configuration each strategy of a cell is evaluated with — the one its evaluation study
recorded, the best of its finished tuning, or its fixed configuration when it has nothing to
search — and the model servers that hand one strategy's models to another
(:class:`ModelServers`, one per task × backbone).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.core.budget import Budget
from tlbench.core.codeversion import strategy_version
from tlbench.core.errors import ConfigError
from tlbench.data.splits import Task
from tlbench.run.model_server import ArtifactStore, CellRecipes, Members, Reuse
from tlbench.run.plan import Cell, Plan
from tlbench.store.progress import TuneResult, evaluation_seed, summarize, tuning_seed
from tlbench.store.records import CellFacts, RunContext, StudyName, TuningFacts
from tlbench.strategies import STRATEGIES, Strategy
from tlbench.training.backbones import Backbone


class ModelServers:
    """The model server of each task × backbone (its strategies share models), built on first
    use; the two most recently used are kept (cells of one group come together in the plan)."""

    def __init__(self, storage: BaseStorage, plan: Plan, backbones: dict[str, Backbone], reuse: Reuse,
                 models: Path) -> None:
        self.storage, self.plan, self.backbones, self.reuse, self.models = storage, plan, backbones, reuse, models
        self._groups: dict[tuple[str, str], tuple[SuiteCell, Members]] = {}

    def __call__(self, cell: Cell) -> tuple["SuiteCell", Members]:
        key = (cell.task, cell.backbone)
        if key not in self._groups:
            recipes = SuiteCell(self.storage, self.plan, cell, self.backbones[cell.backbone], self.reuse)
            self._groups[key] = (recipes, Members(recipes, ArtifactStore(self.models), self.backbones))
            while len(self._groups) > 2:
                del self._groups[next(iter(self._groups))]
        else:
            self._groups[key] = self._groups.pop(key)  # most recently used last
        return self._groups[key]


def with_dependencies(params: dict[str, Any], strategy: Strategy, members: Members) -> dict[str, Any]:
    """A reusing strategy's params plus a digest of the configurations it reuses: when a
    dependency is re-tuned, the dependent's old runs stop counting as current (like runs of
    an old best configuration) and its artifacts get new keys."""
    if not strategy.requires():
        return params
    deps = {name: members.best_params(name) for name in sorted(set(strategy.requires()))}
    digest = hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {**params, "reuses": digest}


def fixed_params(strategy: Strategy, backbone: Backbone) -> dict[str, Any]:
    """The configuration of a strategy with nothing to search (``tunable = False``)."""
    return strategy.search_space(optuna.trial.FixedTrial({}), backbone)


@dataclass(frozen=True)
class Tuned:
    """A strategy's configuration in a cell, or why there is none; ``finished`` when its
    tuning ran to the budget without completing a trial (dependents are skipped, not failed)."""

    params: dict[str, Any] | None
    reason: str = ""
    finished: bool = False


def tuned_params(storage: BaseStorage, plan: Plan, cell: Cell, strategy: str, backbone: Backbone) -> Tuned:
    """The configuration a strategy is evaluated with in a cell: the one its evaluation
    study recorded, else the best of its finished tuning; else None and why."""
    suite = plan.suite
    instance = plan.make_strategy(strategy)
    if not instance.tunable:
        return Tuned(fixed_params(instance, backbone))
    names = optuna.get_all_study_names(storage)
    eval_name = str(StudyName(suite.name, cell.task, cell.backbone, strategy, "eval"))
    if eval_name in names:
        params = optuna.load_study(study_name=eval_name, storage=storage).user_attrs.get("params")
        if params is not None:
            return Tuned(dict(params))
    tune_name = str(StudyName(suite.name, cell.task, cell.backbone, strategy, "tune"))
    if tune_name in names:
        result = summarize(optuna.load_study(study_name=tune_name, storage=storage),
                           plan.budget(strategy, cell.backbone))
        if result.done:
            if result.best_params is None:
                return Tuned(None, f"completed no tuning trial ({result.n_pruned} pruned)", finished=True)
            return Tuned(result.best_params)
    return Tuned(None, f"has no tuned configuration in this store; include {strategy} in --strategies")


class SuiteCell(CellRecipes):
    """A task × backbone of a suite as its model server sees it. The configurations of the
    strategies others reuse are read from the store once each (they are asked for by every
    tuning trial of a dependent; a dependency has finished before its dependents run, so
    its answer does not change)."""

    def __init__(self, storage: BaseStorage, plan: Plan, cell: Cell, backbone: Backbone, reuse: Reuse) -> None:
        self.storage, self.plan, self.plan_cell, self.backbone = storage, plan, cell, backbone
        self.cell = (plan.suite.name, cell.task, cell.backbone)
        self.context = plan.suite.fingerprint()
        self.backbone_name = cell.backbone
        self.reuse = reuse
        self._known: dict[str, Tuned] = {}

    def __call__(self, strategy: str) -> Tuned:
        if strategy not in self._known:
            self._known[strategy] = tuned_params(self.storage, self.plan, self.plan_cell, strategy, self.backbone)
        return self._known[strategy]

    def strategy(self, name: str) -> Strategy:
        return self.plan.make_strategy(name)

    def code(self, strategy: str) -> str:
        return strategy_version(STRATEGIES.get(strategy), source=STRATEGIES.source(strategy))

    def params(self, name: str) -> dict[str, Any]:
        tuned = self(name)
        if tuned.params is None:
            raise ConfigError(f"{self.plan_cell.task} / {self.plan_cell.backbone}: {name!r} {tuned.reason}, and "
                              f"another strategy reuses its models")
        return tuned.params

    def seed(self, index: int) -> int:
        return evaluation_seed(self.plan.suite.seed, index)

    def seeds(self) -> int:
        return self.plan.suite.seeds

    def task(self, backbone: str) -> Task:
        """The task reused models are (re)fitted on: the evaluation runs' (:meth:`Task.final`)."""
        return self.tuning_task(backbone).final()

    def tuning_task(self, backbone: str) -> Task:
        return self.plan.task_for(self.plan_cell.task, backbone)


def slots_used(budget: Budget, result: TuneResult | None) -> int:
    """The tuning slots a cell used: its trial budget, or the trials an epochs budget counted."""
    if budget.epochs is None or result is None:
        return budget.cap
    return max(1, result.n_complete + result.n_pruned)


def run_context(plan: Plan, cell: Cell, backbone: Backbone, task: Task, result: TuneResult | None, budget: Budget,
                *, sensitivity: dict[str, Any] | None = None) -> RunContext:
    """What every run of ``cell`` records besides its own results: the cell and how its configuration
    was tuned (``result``: None for a strategy with nothing to search); for a sensitivity study's
    runs, what they vary."""
    suite = plan.suite
    last = slots_used(budget, result) - 1
    return RunContext(
        cell=CellFacts(suite=suite.name, task=cell.task, backbone=cell.backbone, strategy=cell.strategy,
                       strategy_origin=STRATEGIES.origin(cell.strategy), suite_fingerprint=suite.fingerprint(),
                       backbone_weights=backbone.weights_id, task_info=task.info),
        tuning=TuningFacts(budget=budget, best_val_accuracy=result.best_value if result else None,
                           best_trial=result.best_trial if result else None,
                           trials_complete=result.n_complete if result else 0,
                           trials_pruned=result.n_pruned if result else 0,
                           seconds=result.seconds if result else 0.0, compute=result.compute if result else None,
                           seeds=f"{tuning_seed(suite.seed, 0)}..{tuning_seed(suite.seed, last)}",
                           best_trial_seed=result.best_seed if result else None),
        sensitivity=sensitivity)
