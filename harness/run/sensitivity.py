"""Sensitivity studies: a cell's tuned configuration re-run with one or two hyperparameters set
to each value of the suite's ``sensitivity:`` block, on the suite's first evaluation seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.core.errors import ConfigError
from tlbench.data.splits import Task
from tlbench.run.model_server import Members
from tlbench.run.plan import Cell, Plan
from tlbench.run.spaces import Fixed, SpaceTrial
from tlbench.run.study_attrs import remember_plugin_code, set_changed_attrs
from tlbench.run.tuned import run_context, with_dependencies
from tlbench.store.progress import evaluation_seed, summarize
from tlbench.store.records import RunContext, StudyName
from tlbench.suites.schema import SensitivitySpec
from tlbench.training.backbones import Backbone


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
    set_changed_attrs(study, {"suite_fingerprint": suite.fingerprint(), "base": base})
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
        context = run_context(plan, cell, backbone, task, result, budget,
                              sensitivity={"varied": varied, "tuned": {k: tuned_values.get(k) for k in varied},
                                           "base": base})
        runs.append((study, params, context, [evaluation_seed(suite.seed, k) for k in range(spec.seeds)]))
    return runs
