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
from tlbench.evaluate import evaluate_step
from tlbench.members import ArtifactStore, CellRecipes, Members, Reuse
from tlbench.plan import Cell, Plan
from tlbench.pretrain import materialize_backbone
from tlbench.records import RunContext, StudyName
from tlbench.runtime import Runtime
from tlbench.search import (
    Budget,
    Step,
    TuneResult,
    compute_unit,
    evaluation_seed,
    make_study,
    protocol,
    summarize,
    tune_step,
    tuning_seed,
)
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
             observer: RunObserver | None = None, poll_s: float = 0.2) -> RunResult:
    """Runs every cell of ``plan`` into ``storage`` (artifacts of reused models under
    ``out/models``) until all of it is done, with whatever other workers share the storage;
    returns what ran.

    Work is taken in plan order, one unit at a time (a tuning slot, an evaluation seed, a
    sensitivity run), each claimed in the store (:func:`tlbench.store.claim`): the first unit
    of the plan that may start now and that no one holds. A single worker therefore runs
    cell after cell exactly as before; several workers spread over the slots that may run at
    once (:func:`tlbench.search.independent_slots`), other cells and evaluation seeds, and a
    cell that reuses another's models waits for that cell to finish. A worker with nothing
    it may start waits for the others (looking again after ``poll_s``, then less and less often,
    up to every 5 s), so a run that ends has every cell done."""
    observer = observer or RunObserver()
    suite = plan.suite
    runtime = dataclasses.replace(runtime, decay_norm_and_bias=suite.training.decay_norm_and_bias)
    check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path)
    check_plugin_code(storage, plan)
    backbones = {name: materialize_backbone(name, suite, cache_dir=cache_dir, device=runtime.device,
                                            log=observer.log, loading=runtime.execution.loading)
                 for name in plan.backbones}
    needed, keep_weights = plan.reused()
    groups = Groups(storage, plan, backbones, Reuse(needed, keep_weights), out / "models")
    observer.plan_started(plan)
    works: dict[tuple[str, str, str], CellWork] = {}
    for cell in plan.cells:
        works[(cell.task, cell.backbone, cell.strategy)] = CellWork(
            cell, plan, backbones[cell.backbone], storage=storage, groups=groups, runtime=runtime,
            observer=observer, works=works)
    noted = time.monotonic()
    lost = Reconnect(observer.log)
    pause = poll_s
    while True:
        waiting = []
        for work in works.values():
            if work.outcome is not None:
                continue
            try:
                step = work.step()
            except optuna.exceptions.StorageInternalError as err:  # the database went away for a moment
                lost.wait(err)
                break  # scan again from the top; a unit left half-written is failed and redone by its claim rules
            lost.ok()
            if step == "ran":
                pause = poll_s
                break  # back to the first open cell: one worker keeps the plan's order
            if step == "wait":
                waiting.append(work)
        else:
            if not waiting:
                break
            if time.monotonic() - noted > 60:
                noted = time.monotonic()
                observer.log(f"waiting for other workers: {', '.join(w.cell.label for w in waiting[:3])}"
                             f"{' …' if len(waiting) > 3 else ''} ({len(waiting)} cells have work held elsewhere "
                             f"or waiting for it)")
            time.sleep(pause)
            pause = min(5.0, pause * 1.5)  # others are busy for a while: look less often (a database is shared)
    seeds = tuple(evaluation_seed(suite.seed, k) for k in range(suite.seeds))
    return RunResult(suite.name, frozenset((c.task, c.backbone, c.strategy) for c in plan.cells), seeds,
                     tuple(w.outcome for w in works.values() if w.outcome is not None))


class Reconnect:
    """Backoff for a database that drops the connection in the middle of a run (a restart, a
    failover, the network): one line per retry, waits doubling from 1 s to 60 s, and the error
    itself after ``attempts`` in a row. Optuna's RDBStorage rolls back and raises
    StorageInternalError; its pool (pre-pinged) opens a fresh connection on the next call."""

    def __init__(self, log: Any, attempts: int = 8) -> None:
        self.log, self.attempts, self.failures = log, attempts, 0

    def wait(self, err: Exception) -> None:
        self.failures += 1
        if self.failures >= self.attempts:
            raise err
        delay = min(60.0, 2.0 ** (self.failures - 1))
        self.log(f"storage: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}; retrying in "
                 f"{delay:.0f} s (attempt {self.failures + 1} of {self.attempts})")
        time.sleep(delay)

    def ok(self) -> None:
        self.failures = 0


class Groups:
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


class CellWork:
    """One cell's work in a run — tuning slots, then evaluation seeds, then sensitivity runs —
    taken one unit per :meth:`step` (``ran`` a unit, ``wait`` for work others hold, ``done``;
    then :attr:`outcome` says what became of the cell)."""

    def __init__(self, cell: Cell, plan: Plan, backbone: Backbone, *, storage: BaseStorage, groups: Groups,
                 runtime: Runtime, observer: RunObserver, works: dict[tuple[str, str, str], "CellWork"]) -> None:
        self.cell, self.plan, self.backbone, self.storage = cell, plan, backbone, storage
        self.groups, self.base_runtime, self.observer, self.works = groups, runtime, observer, works
        self.strategy = plan.make_strategy(cell.strategy)
        self.budget = plan.budget(cell.strategy, cell.backbone)
        self.outcome: CellOutcome | None = None
        self.result: TuneResult | None = None
        self.params: dict[str, Any] | None = None  # the configuration evaluated (after tuning)
        self.seconds = 0.0
        self._phase = ""
        self._studies: dict[str, optuna.Study] = {}
        self._sensitivity: list[tuple[optuna.Study, dict[str, Any], RunContext, list[int]]] | None = None

    # ---------------------------------------------------------------- the steps
    def step(self) -> Step:
        start = time.perf_counter()
        try:
            return self._step()
        finally:
            self.seconds += time.perf_counter() - start

    def _step(self) -> Step:
        recipes, members = self.groups(self.cell)
        runtime = dataclasses.replace(self.base_runtime, members=members)
        task = self.plan.task_for(self.cell.task, self.cell.backbone)
        cell, suite = self.cell, self.plan.suite
        for dependency in self.strategy.requires():  # its models must exist first
            other = self.works.get((cell.task, cell.backbone, dependency))
            if other is not None and other.outcome is None:
                return "wait"
            tuned = recipes(dependency)
            if tuned.params is None and tuned.finished:
                return self._finish(CellOutcome(cell, False, skipped=f"skipped: {dependency} {tuned.reason}"))
            if tuned.params is None:
                raise ConfigError(f"{cell.task} / {cell.backbone}: {cell.strategy} reuses models of "
                                  f"{dependency!r}, which {tuned.reason}")
        if self.params is None:
            if self.strategy.tunable:
                study = self._tuning_study()
                self._enter("tuning" if self.budget.epochs is None else "tuning (backbone epochs)", self.budget.total)
                step = tune_step(study, self.strategy, self.backbone, task, budget=self.budget, suite_seed=suite.seed,
                                 runtime=runtime, space=self.plan.space(cell.strategy, cell.backbone),
                                 unit=self._unit(task),
                                 on_trial=lambda n: self.observer.cell_progress(cell, phase="tuning", done=n))
                if step != "done":
                    return step
                self.result = summarize(study, self.budget)
                best = self.result.best_params
                if best is None:
                    r = self.result
                    return self._finish(CellOutcome(cell, False, r, skipped=f"no trial completed ({r.n_pruned} "
                                                                              f"pruned, {r.n_failed} failed); not "
                                                                              f"evaluated"))
            else:  # nothing to search: evaluated with its fixed configuration
                best = fixed_params(self.strategy, self.backbone)
            self.params = with_dependencies(best, self.strategy, members)
        seeds = [evaluation_seed(suite.seed, k) for k in range(suite.seeds)]
        self._enter("evaluating", len(seeds))
        step = evaluate_step(self._eval_study(), self.strategy, self.backbone, task, self.params, seeds=seeds,
                             context=self._context(task), runtime=runtime,
                             on_seed=lambda n: self.observer.cell_progress(cell, phase="evaluating", done=n))
        if step != "done":
            return step
        step = self._sensitivity_step(task, runtime)
        if step != "done":
            return step
        return self._finish(CellOutcome(cell, True, self.result, self.seconds))

    def _sensitivity_step(self, task: Task, runtime: Runtime) -> Step:
        if self._sensitivity is None:
            self._sensitivity = []
            for spec in self.plan.suite.sensitivity:
                if spec.strategy == self.cell.strategy and spec.covers(self.cell.task,
                                                                       self.plan.suite.tasks[self.cell.task]):
                    self._sensitivity += sensitivity_runs(self.cell, self.plan, spec, self.backbone, self.storage,
                                                          runtime.members, task)
        if not self._sensitivity:
            return "done"
        self._enter("sensitivity", len(self._sensitivity))
        waited = False
        for i, (study, params, context, seeds) in enumerate(self._sensitivity):
            step = evaluate_step(study, self.strategy, self.backbone, task, params, seeds=seeds,
                                 context=context, runtime=runtime, share=False)
            if step == "ran":
                self.observer.cell_progress(self.cell, phase="sensitivity", done=i)
                return step
            waited = waited or step == "wait"
        return "wait" if waited else "done"

    def _finish(self, outcome: CellOutcome) -> Step:
        self.outcome = outcome
        self.observer.cell_finished(self.cell, outcome)
        return "done"

    def _enter(self, phase: str, total: int) -> None:
        if phase != self._phase:
            self._phase = phase
            self.observer.cell_started(self.cell, phase=phase, total=total)

    # ---------------------------------------------------------------- what a step needs, made once
    def _unit(self, task: Task) -> float | None:
        if "unit" not in self.__dict__:
            self.__dict__["unit"] = compute_unit(self.backbone, task)
        return self.__dict__["unit"]

    def _tuning_study(self) -> optuna.Study:
        if "tune" not in self._studies:
            suite, cell = self.plan.suite, self.cell
            name = str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "tune"))
            study = make_study(name, self.storage, budget=self.budget, seed=suite.seed, search=suite.search,
                               grid=self.plan.grids.get((cell.strategy, cell.backbone)))
            _set_attrs(study, {"protocol": protocol(self.budget, suite.search,
                                                    decay_norm_and_bias=suite.training.decay_norm_and_bias
                                                    ).model_dump(),
                               "search_space": self.plan.searched[(cell.strategy, cell.backbone)],
                               "suite_fingerprint": suite.fingerprint()})
            remember_plugin_code(study, cell)
            self._studies["tune"] = study
        return self._studies["tune"]

    def _eval_study(self) -> optuna.Study:
        if "eval" not in self._studies:
            suite, cell = self.plan.suite, self.cell
            study = optuna.create_study(
                study_name=str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "eval")),
                storage=self.storage, direction="maximize", load_if_exists=True)
            _set_attrs(study, {"suite_fingerprint": suite.fingerprint()})
            remember_plugin_code(study, cell)
            self._studies["eval"] = study
        return self._studies["eval"]

    def _context(self, task: Task) -> RunContext:
        suite, cell, result, budget = self.plan.suite, self.cell, self.result, self.budget
        return RunContext(
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
            suite_fingerprint=suite.fingerprint(), backbone_weights=self.backbone.weights_id, task_info=task.info)


def _set_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Sets a study's attributes that differ from the stored ones (every worker opening the
    study writes the same values; unchanged ones are not written again)."""
    stored = study.user_attrs
    for key, value in attrs.items():
        if stored.get(key) != value:
            study.set_user_attr(key, value)


def sensitivity_points(spec: SensitivitySpec) -> list[dict[str, Any]]:
    """Every combination of a sensitivity study's values, in the order given."""
    names = list(spec.params)
    return [dict(zip(names, values)) for values in itertools.product(*(spec.params[n] for n in names))]


def sensitivity_runs(cell: Cell, plan: Plan, spec: SensitivitySpec, backbone: Backbone, storage: BaseStorage,
                     members: Any, task: Task) -> list[tuple[optuna.Study, dict[str, Any], RunContext, list[int]]]:
    """The runs of a sensitivity study of a tuned cell: its tuned configuration with ``spec``'s
    hyperparameters set to each combination of its values, each on the first ``spec.seeds``
    evaluation seeds, into the cell's sensitivity study (resumable: stored runs are not repeated)."""
    suite = plan.suite
    strategy = plan.make_strategy(cell.strategy)
    overrides = plan.space(cell.strategy, cell.backbone)
    tune_name = str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "tune"))
    budget = plan.budget(cell.strategy, cell.backbone)
    result = summarize(optuna.load_study(study_name=tune_name, storage=storage), budget)
    if result.best_values is None or result.best_params is None:
        return []
    fixed = {k: o.value for k, o in overrides.items() if isinstance(o, Fixed)}
    tuned_values = {**fixed, **result.best_values}
    base = hashlib.sha256(json.dumps(result.best_params, sort_keys=True, default=str).encode()).hexdigest()[:12]
    study = optuna.create_study(study_name=str(StudyName(suite.name, cell.task, cell.backbone, cell.strategy, "sens")),
                                storage=storage, direction="maximize", load_if_exists=True)
    _set_attrs(study, {"suite_fingerprint": suite.fingerprint(), "base": base})
    remember_plugin_code(study, cell)
    runs = []
    for varied in sensitivity_points(spec):
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
            tuning_budget=budget.cap, tuning_compute=result.compute,
            tuning_seeds="", tuning_best_trial_seed=result.best_seed, suite_fingerprint=suite.fingerprint(),
            backbone_weights=backbone.weights_id, task_info=task.info,
            sensitivity={"varied": varied, "tuned": {k: tuned_values.get(k) for k in varied}, "base": base})
        runs.append((study, params, context, [evaluation_seed(suite.seed, k) for k in range(spec.seeds)]))
    return runs
