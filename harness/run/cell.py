"""One cell's work in a run: its tuning slots, then its evaluation seeds, then its sensitivity runs,
one unit per step (:class:`CellWork`), and what became of it (:class:`CellOutcome`), told to
whoever watches the run (:class:`RunObserver`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.core.errors import ConfigError
from tlbench.data.splits import Task
from tlbench.run.evaluation import evaluate_step
from tlbench.run.plan import Cell, Plan
from tlbench.run.sensitivity import sensitivity_runs
from tlbench.run.study_attrs import remember_plugin_code, set_changed_attrs
from tlbench.run.tuned import ModelServers, fixed_params, run_context, with_dependencies
from tlbench.run.tuning import Step, compute_unit, make_study, protocol, tune_step
from tlbench.store.progress import TuneResult, evaluation_seed, summarize
from tlbench.store.records import RunContext, StudyName
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime


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


class CellWork:
    """One cell's work in a run — tuning slots, then evaluation seeds, then sensitivity runs —
    taken one unit per :meth:`step` (``ran`` a unit, ``wait`` for work others hold, ``done``;
    then :attr:`outcome` says what became of the cell)."""

    def __init__(self, cell: Cell, plan: Plan, backbone: Backbone, *, storage: BaseStorage, groups: ModelServers,
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

    @property
    def label(self) -> str:
        return self.cell.label

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
                # the trials reuse models fitted on their own task (train alone under final_fit: train+val)
                trials = dataclasses.replace(runtime, members=members.for_tuning())
                step = tune_step(study, self.strategy, self.backbone, task, budget=self.budget, suite_seed=suite.seed,
                                 runtime=trials, space=self.plan.space(cell.strategy, cell.backbone),
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
        task = task.final()  # evaluation runs train on train + val where the split says final_fit: train+val
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
            set_changed_attrs(study, {"protocol": protocol(self.budget, suite.search,
                                                    decay_norm_and_bias=suite.training.decay_norm_and_bias
                                                    ).model_dump(),
                               "search_space": self.plan.searched[(cell.strategy, cell.backbone)].stored(),
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
            set_changed_attrs(study, {"suite_fingerprint": suite.fingerprint()})
            remember_plugin_code(study, cell)
            self._studies["eval"] = study
        return self._studies["eval"]

    def _context(self, task: Task) -> RunContext:
        return run_context(self.plan, self.cell, self.backbone, task, self.result, self.budget)
