"""Runs a plan: materialise backbones, tune each cell, evaluate its best configuration.

The runner reports what happens through a :class:`RunObserver` (no-op by default) and
returns what it ran; it neither prints nor writes reports — the command line does both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.backbones import Backbone
from tlbench.codeversion import code_version
from tlbench.data import Task
from tlbench.errors import ConfigError
from tlbench.evaluate import evaluate
from tlbench.members import ArtifactStore, CellRecipes, Members, Reuse
from tlbench.plan import Cell, Plan
from tlbench.pretrain import materialize_backbone
from tlbench.records import RunContext, StudyName
from tlbench.runtime import Runtime
from tlbench.search import Budget, TuneResult, evaluation_seed, make_study, protocol, summarize, tune, tuning_seed
from tlbench.spaces import Fixed, SpaceTrial
from tlbench.store import check_compatible
from tlbench.strategies import STRATEGIES, Strategy
from tlbench.suites.config import SensitivitySpec


class RunObserver:
    """What a run tells whoever watches it; every hook is a no-op by default."""

    def log(self, message: str) -> None:
        """A line worth showing (a backbone pretrained or reused from the cache)."""

    def plan_started(self, plan: Plan) -> None: ...

    def cell_started(self, cell: Cell, *, phase: str, total: int) -> None:
        """``phase`` is ``tuning`` (``total`` trials) or ``evaluating`` (``total`` seeds)."""

    def cell_progress(self, cell: Cell, *, phase: str, done: int) -> None: ...

    def cell_finished(self, cell: Cell, outcome: "CellOutcome") -> None: ...


@dataclass(frozen=True)
class CellOutcome:
    """What became of a cell: evaluated (with its tuning summary), or why not."""

    cell: Cell
    evaluated: bool
    tuning: TuneResult | None = None  # None for a strategy with nothing to search
    seconds: float = 0.0
    skipped: str = ""  # why the cell was not evaluated

    @property
    def summary(self) -> str:
        """One line for the cell, as the command line prints it."""
        if self.skipped:
            return f"{self.cell.label}: {self.skipped}"
        t = self.tuning
        tuned = (f"best val {t.best_value:.3f} | trials {t.n_complete} complete, {t.n_pruned} pruned"
                 if t is not None else "not tuned (nothing to search)")
        return f"{self.cell.label}: {tuned} | {self.seconds:.1f} s"


@dataclass(frozen=True)
class RunResult:
    """The cells a run covered and its evaluation seeds: what its report shows."""

    suite: str
    cells: frozenset[tuple[str, str, str]]
    seeds: tuple[int, ...]
    outcomes: tuple[CellOutcome, ...]


def run_plan(plan: Plan, *, out: Path, storage: BaseStorage, runtime: Runtime, cache_dir: Path,
             observer: RunObserver | None = None) -> RunResult:
    """Runs every cell of ``plan`` into ``storage`` (artifacts of reused models under
    ``out/models``); returns what ran."""
    observer = observer or RunObserver()
    suite = plan.suite
    runtime = dataclasses.replace(runtime, decay_norm_and_bias=suite.training.decay_norm_and_bias)
    check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path)
    check_plugin_code(storage, plan)
    backbones = {name: materialize_backbone(name, suite, cache_dir=cache_dir, device=runtime.device,
                                            log=observer.log, loading=runtime.execution.loading)
                 for name in plan.backbones}
    needed, keep_weights = plan.reused()
    reuse = Reuse(needed, keep_weights)
    observer.plan_started(plan)
    recipes: SuiteCell | None = None
    members: Members | None = None
    outcomes = []
    for cell in plan.cells:
        if recipes is None or members is None or (recipes.plan_cell.task, recipes.backbone_name) != (cell.task,
                                                                                                   cell.backbone):
            # one per task × backbone (cells come grouped): its strategies share models
            recipes = SuiteCell(storage, plan, cell, backbones[cell.backbone], reuse)
            members = Members(recipes, ArtifactStore(out / "models"), backbones)
        outcome = run_cell(cell, plan, plan.make_strategy(cell.strategy), backbones[cell.backbone],
                           storage=storage, tuning=recipes, runtime=dataclasses.replace(runtime, members=members),
                           observer=observer)
        outcomes.append(outcome)
        observer.cell_finished(cell, outcome)
        for spec in plan.suite.sensitivity:
            if outcome.evaluated and spec.strategy == cell.strategy and spec.covers(cell.task,
                                                                                      plan.suite.tasks[cell.task]):
                run_sensitivity(cell, plan, spec, backbones[cell.backbone], storage=storage, tuning=recipes,
                                runtime=dataclasses.replace(runtime, members=members), observer=observer)
    seeds = tuple(evaluation_seed(suite.seed, k) for k in range(suite.seeds))
    return RunResult(suite.name, frozenset((c.task, c.backbone, c.strategy) for c in plan.cells), seeds,
                     tuple(outcomes))


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
        self.context = f"{plan.suite.fingerprint()}:{code_version()}"
        self.backbone_name = cell.backbone
        self.reuse = reuse
        self._known: dict[str, Tuned] = {}

    def __call__(self, strategy: str) -> Tuned:
        if strategy not in self._known:
            self._known[strategy] = tuned_params(self.storage, self.plan, self.plan_cell, strategy, self.backbone)
        return self._known[strategy]

    def strategy(self, name: str) -> Strategy:
        return self.plan.make_strategy(name)

    def params(self, name: str) -> dict[str, Any]:
        tuned = self(name)
        if tuned.params is None:
            raise ConfigError(f"{self.plan_cell.task} / {self.plan_cell.backbone}: {name!r} {tuned.reason}, and "
                              f"another strategy reuses its models")
        return tuned.params

    def seed(self, index: int) -> int:
        return evaluation_seed(self.plan.suite.seed, index)

    def task(self, backbone: str) -> Task:
        return self.plan.task_for(self.plan_cell.task, backbone)


def _slots(budget: Budget, result: TuneResult | None) -> int:
    """The tuning slots a cell used: its trial budget, or the trials an epochs budget counted."""
    if budget.epochs is None or result is None:
        return budget.cap
    return max(1, result.n_complete + result.n_pruned)


def check_plugin_code(storage: BaseStorage, plan: Plan) -> None:
    """Before anything runs: no plugin strategy of the plan has studies in the store written
    by other code of that plugin, so runs of an edited plugin are never mixed with the old
    code's in one cell (one line, instead of silently counting old seeds as done)."""
    plugin_cells = {(c.task, c.backbone, c.strategy): c for c in plan.cells if STRATEGIES.source(c.strategy)}
    if not plugin_cells:
        return
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        name = StudyName.parse(summary.study_name)
        if name is None or name.suite != plan.suite.name or name.cell not in plugin_cells:
            continue
        cell = plugin_cells[name.cell]
        stored, source = summary.user_attrs.get("strategy_source"), STRATEGIES.source(cell.strategy)
        if stored is not None and stored != source:
            raise ConfigError(f"{plan.suite.path}: {cell.label}: the store holds runs of {cell.strategy!r} from "
                              f"other plugin code (sha256 {stored}, now {source}, {STRATEGIES.origin(cell.strategy)}); "
                              f"use another --out or --storage, or rename the strategy")


def remember_plugin_code(study: optuna.Study, cell: Cell) -> None:
    """Stores a plugin strategy's code digest on its study, for :func:`check_plugin_code`
    to compare the next run against."""
    source = STRATEGIES.source(cell.strategy)
    if source is not None:
        study.set_user_attr("strategy_source", source)


def run_cell(cell: Cell, plan: Plan, strategy: Strategy, backbone: Backbone, *, storage: BaseStorage,
             tuning: SuiteCell, runtime: Runtime, observer: RunObserver) -> CellOutcome:
    """Tunes one cell (unless it has nothing to search) and evaluates its best configuration
    on the suite's evaluation seeds."""
    suite, task = plan.suite, plan.task_for(cell.task, cell.backbone)
    start = time.perf_counter()
    members = runtime.members
    for dependency in strategy.requires():  # before any trial: a missing one is one clear line
        tuned = tuning(dependency)
        if tuned.params is None and tuned.finished:
            return CellOutcome(cell, False, skipped=f"skipped: {dependency} {tuned.reason}")
        if tuned.params is None:
            raise ConfigError(f"{cell.task} / {cell.backbone}: {cell.strategy} reuses models of "
                              f"{dependency!r}, which {tuned.reason}")
    budget = plan.budget(cell.strategy, cell.backbone)
    if strategy.tunable:
        name = str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "tune"))
        study = make_study(name, storage, budget=budget, seed=suite.seed, search=suite.search,
                           grid=plan.grids.get((cell.strategy, cell.backbone)))
        remember_plugin_code(study, cell)
        study.set_user_attr("protocol", protocol(budget, suite.search,
                                                 decay_norm_and_bias=suite.training.decay_norm_and_bias).model_dump())
        study.set_user_attr("search_space", plan.searched[(cell.strategy, cell.backbone)])
        study.set_user_attr("suite_fingerprint", suite.fingerprint())
        observer.cell_started(cell, phase="tuning" if budget.epochs is None else "tuning (backbone epochs)",
                              total=budget.total)
        result: TuneResult | None = tune(
            study, strategy, backbone, task, budget=budget, suite_seed=suite.seed, runtime=runtime,
            on_trial=lambda n: observer.cell_progress(cell, phase="tuning", done=n),
            space=plan.space(cell.strategy, cell.backbone))
        best = result.best_params if result is not None else None
        if best is None:
            return CellOutcome(cell, False, result, skipped=f"no trial completed ({result.n_pruned} pruned, "
                                                            f"{result.n_failed} failed); not evaluated")
    else:  # nothing to search: evaluated with its fixed configuration
        result, best = None, fixed_params(strategy, backbone)
    seeds = [evaluation_seed(suite.seed, k) for k in range(suite.seeds)]
    context = RunContext(
        suite=suite.name, task=cell.task, backbone=cell.backbone, strategy=cell.strategy,
        strategy_origin=STRATEGIES.origin(cell.strategy),
        tuning_best_val_accuracy=result.best_value if result else None,
        tuning_best_trial=result.best_trial if result else None,
        tuning_trials_complete=result.n_complete if result else 0,
        tuning_trials_pruned=result.n_pruned if result else 0,
        tuning_seconds=result.seconds if result else 0.0, tuning_budget=budget.cap,
        tuning_compute=result.compute if result else None,
        tuning_seeds=f"{tuning_seed(suite.seed, 0)}..{tuning_seed(suite.seed, _slots(budget, result) - 1)}",
        tuning_best_trial_seed=result.best_seed if result else None,
        suite_fingerprint=suite.fingerprint(), backbone_weights=backbone.weights_id, task_info=task.info)
    eval_study = optuna.create_study(
        study_name=str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "eval")),
        storage=storage, direction="maximize", load_if_exists=True)
    eval_study.set_user_attr("suite_fingerprint", suite.fingerprint())
    remember_plugin_code(eval_study, cell)
    observer.cell_started(cell, phase="evaluating", total=len(seeds))
    params = with_dependencies(best, strategy, members) if isinstance(members, Members) else best
    evaluate(eval_study, strategy, backbone, task, params, seeds=seeds, context=context, runtime=runtime,
             on_seed=lambda n: observer.cell_progress(cell, phase="evaluating", done=n))
    return CellOutcome(cell, True, result, time.perf_counter() - start)



def sensitivity_points(spec: SensitivitySpec) -> list[dict[str, Any]]:
    """Every combination of a sensitivity study's values, in the order given."""
    names = list(spec.params)
    return [dict(zip(names, values)) for values in itertools.product(*(spec.params[n] for n in names))]


def run_sensitivity(cell: Cell, plan: Plan, spec: SensitivitySpec, backbone: Backbone, *, storage: BaseStorage,
                    tuning: SuiteCell, runtime: Runtime, observer: RunObserver) -> int:
    """Re-runs the cell's tuned configuration with ``spec``'s hyperparameters set to each
    combination of its values, on its first ``spec.seeds`` evaluation seeds, into the cell's
    sensitivity study (resumable: runs already stored are not repeated). Returns the number
    of runs the study should hold."""
    suite = plan.suite
    strategy = plan.make_strategy(cell.strategy)
    overrides = plan.space(cell.strategy, cell.backbone)
    tune_name = str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "tune"))
    result = summarize(optuna.load_study(study_name=tune_name, storage=storage), plan.budget(cell.strategy,
                                                                                               cell.backbone))
    if result.best_values is None or result.best_params is None:
        return 0
    fixed = {k: o.value for k, o in overrides.items() if isinstance(o, Fixed)}
    tuned_values = {**fixed, **result.best_values}
    base = hashlib.sha256(json.dumps(result.best_params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    study = optuna.create_study(study_name=str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "sens")),
                                storage=storage, direction="maximize", load_if_exists=True)
    study.set_user_attr("suite_fingerprint", suite.fingerprint())
    study.set_user_attr("base", base)
    remember_plugin_code(study, cell)
    points = sensitivity_points(spec)
    seeds = [evaluation_seed(suite.seed, k) for k in range(spec.seeds)]
    observer.cell_started(cell, phase="sensitivity", total=len(points))
    task = plan.task_for(cell.task, cell.backbone)
    members = runtime.members
    for i, varied in enumerate(points):
        observer.cell_progress(cell, phase="sensitivity", done=i)
        values = {**tuned_values, **varied}
        try:
            others = {k: o for k, o in overrides.items() if k not in varied}  # a varied value beats a fixed one
            params = strategy.search_space(SpaceTrial(optuna.trial.FixedTrial(values), others), backbone)
        except ValueError as err:  # the varied value opens a branch the tuned configuration has no values for
            raise ConfigError(f"{suite.path}: sensitivity of {cell.strategy} over {', '.join(varied)}: {err}; vary "
                              f"hyperparameters that do not change which others exist") from None
        params = with_dependencies(params, strategy, members) if isinstance(members, Members) else params
        context = RunContext(
            suite=suite.name, task=cell.task, backbone=cell.backbone, strategy=cell.strategy,
            strategy_origin=STRATEGIES.origin(cell.strategy), tuning_best_val_accuracy=result.best_value,
            tuning_best_trial=result.best_trial, tuning_trials_complete=result.n_complete,
            tuning_trials_pruned=result.n_pruned, tuning_seconds=result.seconds,
            tuning_budget=plan.budget(cell.strategy, cell.backbone).cap, tuning_compute=result.compute,
            tuning_seeds="", tuning_best_trial_seed=result.best_seed, suite_fingerprint=suite.fingerprint(),
            backbone_weights=backbone.weights_id, task_info=task.info,
            sensitivity={"varied": varied, "tuned": {k: tuned_values.get(k) for k in varied}, "base": base})
        evaluate(study, strategy, backbone, task, params, seeds=seeds, context=context, runtime=runtime,
                 share=False)
    observer.cell_progress(cell, phase="sensitivity", done=len(points))
    return len(points) * len(seeds)
