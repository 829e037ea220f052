"""Runs a plan: materialise backbones, tune each cell, evaluate its best config, write tables."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.errors import ConfigError
from harness.evaluate import evaluate
from harness.members import Members, ModelStore
from harness.plan import Cell, Plan, make_strategy
from harness.pretrain import code_version, materialize_backbone
from harness.runtime import Runtime
from harness.search import TuneResult, evaluation_seed, make_study, protocol, summarize, tune, tuning_seed
from harness.store import check_compatible, study_name
from reports.build import ReportOutputs, write_report
from reports.data import load_results
from strategies import Strategy

optuna.logging.set_verbosity(optuna.logging.WARNING)


def run_plan(plan: Plan, *, out: Path, storage: BaseStorage, runtime: Runtime, cache_dir: Path,
             console: Console) -> ReportOutputs:
    """Runs every cell, then writes the report of this invocation's cells and seeds."""
    suite = plan.suite
    check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path)
    backbones = {name: materialize_backbone(name, suite, cache_dir=cache_dir, device=runtime.device,
                                            log=console.print, loading=runtime.execution.loading)
                 for name in plan.backbones}
    needed, keep_weights = plan.reused()
    members: Members | None = None
    tuning: CellTuning | None = None
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=True) as progress:
        cells_bar = progress.add_task("cells", total=len(plan.cells))
        for cell in plan.cells:
            if members is None or members.backbone_name != cell.backbone or members.task.name != cell.task:
                # one per task × backbone (cells come grouped): its strategies share models
                tuning = CellTuning(storage, plan, cell, backbones[cell.backbone])
                members = cell_members(cell, plan, backbones, tuning=tuning, out=out, needed=needed,
                                       keep_weights=keep_weights)
            assert tuning is not None
            run_cell(cell, plan, make_strategy(suite, cell.strategy), backbones[cell.backbone],
                     storage=storage, tuning=tuning, runtime=dataclasses.replace(runtime, members=members),
                     progress=progress, console=console)
            progress.advance(cells_bar)
    cells = {(c.task, c.backbone, c.strategy) for c in plan.cells}
    results = load_results(storage, suite.name, cells=cells)  # this invocation's cells (a store may hold more)
    if not results.runs.empty:  # … and seeds
        runs = results.runs
        in_plan = pd.Series([k in cells for k in zip(runs["task"], runs["backbone"], runs["strategy"])],
                            index=runs.index, dtype=bool)
        seeds = [evaluation_seed(suite.seed, k) for k in range(suite.seeds)]
        results.runs = runs[in_plan & runs["seed"].isin(seeds)].reset_index(drop=True)
    if results.runs.empty:
        raise ConfigError(f"{suite.path}: no cell produced an evaluation run (every tuning trial was pruned "
                          f"or failed); nothing to report")
    return write_report(results, out, title=f"tlbench suite {suite.name}")  # same seed as tlbench report


def cell_members(cell: Cell, plan: Plan, backbones: dict[str, Any], *, tuning: "CellTuning", out: Path,
                 needed: frozenset[str], keep_weights: frozenset[str]) -> Members:
    """The model server of a task × backbone: artifacts under ``out/models``."""
    suite = plan.suite

    def best_params(strategy: str) -> dict[str, Any]:
        tuned = tuning(strategy)
        if tuned.params is None:
            raise ConfigError(f"{cell.task} / {cell.backbone}: {strategy!r} {tuned.reason}, and another "
                              f"strategy reuses its models")
        return tuned.params

    return Members(cell=f"{suite.name}::{cell.task}::{cell.backbone}",
                   context=f"{suite.fingerprint()}:{code_version()}", backbone_name=cell.backbone,
                   task=plan.task_for(cell.task, cell.backbone), backbone=backbones[cell.backbone],
                   make_strategy=lambda name: make_strategy(suite, name), best_params=best_params,
                   seed_of=lambda k: evaluation_seed(suite.seed, k), store=ModelStore(out / "models"),
                   backbones=backbones, keep_weights=keep_weights, needed=needed,
                   task_for=lambda backbone: plan.task_for(cell.task, backbone))


def with_dependencies(params: dict[str, Any], strategy: Strategy, members: Members) -> dict[str, Any]:
    """A reusing strategy's params plus a digest of the configurations it reuses: when a
    dependency is re-tuned, the dependent's old runs stop counting as current (like runs of
    an old best configuration) and its artifacts get new keys."""
    if not strategy.requires():
        return params
    deps = {name: members.best_params(name) for name in sorted(set(strategy.requires()))}
    digest = hashlib.sha256(json.dumps(deps, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return {**params, "reuses": digest}


def fixed_params(strategy: Strategy, backbone: Any) -> dict[str, Any]:
    """The configuration of a strategy with nothing to search (``tunable = False``)."""
    return strategy.search_space(optuna.trial.FixedTrial({}), backbone)


@dataclass(frozen=True)
class Tuned:
    """A strategy's configuration in a cell, or why there is none; ``finished`` when its
    tuning ran to the budget without completing a trial (dependents are skipped, not failed)."""

    params: dict[str, Any] | None
    reason: str = ""
    finished: bool = False


def tuned_params(storage: BaseStorage, plan: Plan, cell: Cell, strategy: str, backbone: Any) -> Tuned:
    """The configuration a strategy is evaluated with in a cell: the one its evaluation
    study recorded, else the best of its finished tuning; else None and why."""
    suite = plan.suite
    instance = make_strategy(suite, strategy)
    if not instance.tunable:
        return Tuned(fixed_params(instance, backbone))
    names = optuna.get_all_study_names(storage)
    eval_name = study_name(suite.name, cell.task, cell.backbone, strategy, "eval")
    if eval_name in names:
        params = optuna.load_study(study_name=eval_name, storage=storage).user_attrs.get("params")
        if params is not None:
            return Tuned(dict(params))
    tune_name = study_name(suite.name, cell.task, cell.backbone, strategy, "tune")
    if tune_name in names:
        result = summarize(optuna.load_study(study_name=tune_name, storage=storage), suite.trials)
        if result.n_complete + result.n_pruned >= suite.trials:
            if result.best_params is None:
                return Tuned(None, f"completed no tuning trial ({result.n_pruned} pruned)", finished=True)
            return Tuned(result.best_params)
    return Tuned(None, f"has no tuned configuration in this store; include {strategy} in --strategies")


class CellTuning:
    """The configurations of a task × backbone's strategies that others reuse, each read
    from the store once (they are asked for by every tuning trial of a dependent; a
    dependency has finished before its dependents run, so its answer does not change)."""

    def __init__(self, storage: BaseStorage, plan: Plan, cell: Cell, backbone: Any) -> None:
        self.storage, self.plan, self.cell, self.backbone = storage, plan, cell, backbone
        self._known: dict[str, Tuned] = {}

    def __call__(self, strategy: str) -> Tuned:
        if strategy not in self._known:
            self._known[strategy] = tuned_params(self.storage, self.plan, self.cell, strategy, self.backbone)
        return self._known[strategy]


def run_cell(cell: Cell, plan: Plan, strategy: Strategy, backbone: Any, *, storage: BaseStorage,
             tuning: CellTuning, runtime: Runtime, progress: Progress, console: Console) -> None:
    suite, task = plan.suite, plan.task_for(cell.task, cell.backbone)
    start = time.perf_counter()
    members = runtime.members
    for dependency in strategy.requires():  # before any trial: a missing one is one clear line
        tuned = tuning(dependency)
        if tuned.params is None and tuned.finished:
            console.print(f"[yellow]{cell.label}: skipped: {dependency} {tuned.reason}[/yellow]")
            return
        if tuned.params is None:
            raise ConfigError(f"{cell.task} / {cell.backbone}: {cell.strategy} reuses models of "
                              f"{dependency!r}, which {tuned.reason}")
    if strategy.tunable:
        name = study_name(suite.name, cell.task, cell.backbone, cell.strategy, "tune")
        study = make_study(name, storage, budget=suite.trials, seed=suite.seed, search=suite.search)
        study.set_user_attr("protocol", protocol(suite.trials, suite.search))
        study.set_user_attr("suite_fingerprint", suite.fingerprint())
        bar = progress.add_task(f"  {cell.label}: tuning", total=suite.trials)
        result = tune(study, strategy, backbone, task, budget=suite.trials, suite_seed=suite.seed,
                      runtime=runtime, on_trial=lambda n: progress.update(bar, completed=n))
        progress.remove_task(bar)
    else:  # nothing to search: evaluated with its fixed configuration
        result = TuneResult(fixed_params(strategy, backbone), None, None, None, 0, 0, 0, 0.0)
    if result.best_params is None:
        console.print(f"[yellow]{cell.label}: no trial completed ({result.n_pruned} pruned, "
                      f"{result.n_failed} failed); not evaluated[/yellow]")
        return
    seeds = [evaluation_seed(suite.seed, k) for k in range(suite.seeds)]
    context = {"suite": suite.name, "task": cell.task, "backbone": cell.backbone,
               "strategy": cell.strategy, "tuning_best_val_accuracy": result.best_value,
               "tuning_best_trial": result.best_trial, "tuning_trials_complete": result.n_complete,
               "tuning_trials_pruned": result.n_pruned, "tuning_seconds": result.seconds,
               "tuning_budget": suite.trials,
               "tuning_seeds": f"{tuning_seed(suite.seed, 0)}..{tuning_seed(suite.seed, suite.trials - 1)}",
               "tuning_best_trial_seed": result.best_seed,
               "suite_fingerprint": suite.fingerprint(),
               "backbone_weights": backbone.weights_id, "task_info": task.info}
    eval_study = optuna.create_study(
        study_name=study_name(suite.name, cell.task, cell.backbone, cell.strategy, "eval"),
        storage=storage, direction="maximize", load_if_exists=True)
    eval_study.set_user_attr("suite_fingerprint", suite.fingerprint())
    bar = progress.add_task(f"  {cell.label}: evaluating seeds", total=len(seeds))
    params = with_dependencies(result.best_params, strategy, members) if members else result.best_params
    evaluate(eval_study, strategy, backbone, task, params, seeds=seeds,
             context=context, runtime=runtime, on_seed=lambda n: progress.update(bar, completed=n))
    progress.remove_task(bar)
    tuned = (f"best val {result.best_value:.3f} | trials {result.n_complete} complete, "
             f"{result.n_pruned} pruned" if strategy.tunable else "not tuned (nothing to search)")
    console.print(f"{cell.label}: {tuned} | {time.perf_counter() - start:.1f} s")
