"""What a report reads from the store: runs, tuning trials, importances and the protocol.

Only stored results are read; nothing here trains.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Literal

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.reports.parallel import Job, run_jobs
from tlbench.store.opening import open_existing_storage
from tlbench.store.records import Protocol, StudyName, load_runs, load_sensitivity, read_protocol, studies
from tlbench.store.scores import ground_truth, load_scores
from tlbench.store.settings import stored_settings
from tlbench.store.space import Param, SearchSpace


@dataclass
class Results:
    """Everything a report is made of."""

    runs: pd.DataFrame  # one row per evaluation run (tlbench.store.records.load_runs)
    trials: pd.DataFrame  # one row per tuning trial
    importances: pd.DataFrame  # strategy, task, backbone, param, importance
    protocol: Protocol | None = None  # None when the store holds no tuning study
    #: strategy → its searched space: what its tuning studies stored, else what its trials sampled
    spaces: dict[str, SearchSpace] = field(default_factory=dict)
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)  # runs of sensitivity studies
    #: strategy → what its trials' distributions say (every hyperparameter a trial sampled)
    sampled: dict[str, SearchSpace] = field(default_factory=dict)
    #: transferability scores (tlbench.store.scores.load_scores) and the strategies they rank against
    scores: pd.DataFrame = field(default_factory=pd.DataFrame)
    ground_truth: list[str] | None = None
    #: The suite settings the runs were made with, as the store recorded them (``Suite.settings``; empty:
    #: a store written before they were recorded, or runs of several suites or settings), and the
    #: command line's ``--set`` arguments that produced them.
    settings: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    #: The fANOVA work not done yet (``load_results(importances="later")``): one job per cell, keyed
    #: (strategy, task, backbone). :func:`tlbench.reports.build.write_report` runs them beside the
    #: figures and fills :attr:`importances`; :meth:`compute_importances` runs them here.
    importance_jobs: list[tuple[tuple[str, str, str], Job]] = field(default_factory=list, repr=False)

    def compute_importances(self) -> pd.DataFrame:
        """Runs the pending fANOVA jobs (on every core) and returns :attr:`importances`."""
        if self.importance_jobs:
            self.set_importances(run_jobs([job for _, job in self.importance_jobs]))
        return self.importances

    def set_importances(self, found: list[dict[str, float]]) -> None:
        """Fills :attr:`importances` from the results of :attr:`importance_jobs`, in their order."""
        self.importances = importance_frame([key for key, _ in self.importance_jobs], found)
        self.importance_jobs = []

    @property
    def empty(self) -> bool:
        return self.runs.empty

    @functools.cached_property
    def stats(self) -> pd.DataFrame:
        """Every statistic the report's tables and figures show, one row per number (means and
        intervals per cell, paired tests against the best with their correction, ranks, the Friedman
        test, IQM, P(improvement), the sweeps' crossover gaps): what the report writes as
        ``stats.parquet``. Computed on first use; see :mod:`tlbench.reports.statsframe` for the
        columns."""
        from tlbench.reports.statsframe import statistics_frame

        return statistics_frame(self.runs)

    @property
    def search_spaces(self) -> dict[str, dict[str, str]]:
        """strategy → hyperparameter → its range as the report writes it (``[0.001, 0.1] (log)``)."""
        return {strategy: space.describe() for strategy, space in self.spaces.items()}

    @property
    def scales(self) -> dict[str, dict[str, str]]:
        """strategy → hyperparameter → ``log``, ``linear`` or ``categorical``: how a slice figure draws its axis
        (for every hyperparameter a trial sampled, or its stored space declares)."""
        names = sorted(set(self.spaces) | set(self.sampled))
        empty = SearchSpace()
        return {s: dict(sorted({**self.sampled.get(s, empty).scales(), **self.spaces.get(s, empty).scales()}.items()))
                for s in names}


def _lost(trial: FrozenTrial) -> str | None:
    """Why a trial that lost the race for its unit failed (it never ran; the store marks it ``claim_lost``,
    with the number of the trial that holds the unit)."""
    holder = trial.user_attrs.get("claim_lost")
    return None if holder is None else f"claim lost: trial {holder} holds the same unit of work (this one never ran)"


def load_results(storage: BaseStorage | str | Path, suite: str | None = None, *,
                 importances: bool | Literal["later"] = True,
                 cells: Collection[tuple[str, str, str]] | None = None,
                 seeds: Collection[int] | None = None) -> Results:
    """Reads a store: the runs frame, every tuning trial, hyperparameter importances (fANOVA
    over each cell's completed trials) and the protocol the suite was tuned under.

    Args:
        storage: an Optuna storage, or where one is: a journal file (a run's
            ``store.journal``), ``journal:PATH`` or a database URL; it must exist.
        suite: only this suite's studies (default: all; an unknown name gives empty frames,
            :func:`tlbench.store.records.suites_in` lists the store's suites).
        importances: compute fANOVA importances (the slow part of reading a large store);
            ``"later"``: keep the work in :attr:`Results.importance_jobs`, for the report to run
            beside its figures (or :meth:`Results.compute_importances`).
        cells: only these (task, backbone, strategy) cells.
        seeds: only runs of these evaluation seeds (what one ``tlbench run`` ran).
    """
    if importances not in (True, False, "later"):
        raise ValueError(f"load_results: importances={importances!r}; allowed: True, False or 'later'")
    if not isinstance(storage, BaseStorage):
        storage = open_existing_storage(str(storage))
    runs = load_runs(storage, suite)
    if not runs.empty and cells is not None:
        keep = [k in cells for k in zip(runs["task"], runs["backbone"], runs["strategy"])]
        runs = runs[pd.Series(keep, index=runs.index, dtype=bool)]
    if not runs.empty and seeds is not None:
        runs = runs[runs["seed"].isin(list(seeds))]
    runs = runs.reset_index(drop=True)
    rows: list[dict[str, Any]] = []
    fanova: list[tuple[tuple[str, str, str], Job]] = []  # one job per cell, run in parallel below
    protocol: Protocol | None = None
    sampled: dict[str, dict[str, Param]] = {}  # what the trials' distributions say
    declared: dict[str, SearchSpace] = {}  # the effective spaces a run stored (study attribute search_space)
    for summary in studies(storage):
        name = StudyName.parse(summary.study_name)
        if name is None or name.kind != "tune" or (suite is not None and name.suite != suite):
            continue
        suite_name, task, backbone, strategy = name.suite, name.task, name.backbone, name.strategy
        if cells is not None and name.cell not in cells:
            continue
        if protocol is None and "protocol" in summary.user_attrs:  # a study created by a run killed before it
            protocol = read_protocol(summary.user_attrs, where=f"study {name}")  # stored its protocol has none
        if isinstance(summary.user_attrs.get("search_space"), dict):
            stored = SearchSpace.from_stored(summary.user_attrs["search_space"])
            declared[strategy] = declared[strategy] | stored if strategy in declared else stored
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        cell_trials = study.get_trials(deepcopy=False)
        for t in cell_trials:
            steps = t.intermediate_values
            last = steps[max(steps)] if steps else None
            value = t.value if t.state == TrialState.COMPLETE else (last if t.state == TrialState.PRUNED else None)
            rows.append({
                "suite": suite_name, "task": task, "backbone": backbone, "strategy": strategy,
                "number": t.number, "slot": t.user_attrs.get("slot", t.number), "state": t.state.name,
                "value": value, "epochs_reported": len(steps),
                "seconds": t.user_attrs.get("seconds"), "compute": t.user_attrs.get("compute"),
                "seed": t.user_attrs.get("seed"),
                "params": json.dumps(t.user_attrs.get("params", t.params), sort_keys=True, default=str),
                "reason": t.user_attrs.get("prune_reason") or t.user_attrs.get("failed_reason") or _lost(t),
                "retry_of": t.user_attrs.get("retry_of"),
                "started": t.datetime_start.isoformat() if t.datetime_start else None,
                "completed": t.datetime_complete.isoformat() if t.datetime_complete else None,
            })
            for name, dist in t.distributions.items():
                sampled.setdefault(strategy, {}).setdefault(name, Param.of(dist))
        if importances:
            complete = [t for t in cell_trials if t.state == TrialState.COMPLETE]
            fanova.append(((strategy, task, backbone), (importances_of, (study.direction, complete), {})))
    if importances == "later":
        imps, pending = importance_frame([], []), fanova
    else:
        imps, pending = importance_frame([k for k, _ in fanova], run_jobs([job for _, job in fanova])), []
    trials = pd.DataFrame(rows, columns=["suite", "task", "backbone", "strategy", "number", "slot", "state",
                                         "value", "epochs_reported", "seconds", "compute", "seed", "params", "reason",
                                         "retry_of", "started", "completed"])
    # what the run declared wins over what its trials happened to sample
    sampled_spaces = {strategy: SearchSpace(params=params) for strategy, params in sorted(sampled.items())}
    spaces = {**sampled_spaces, **declared}
    sensitivity = load_sensitivity(storage, suite)
    if not sensitivity.empty and cells is not None:
        keep = [k in cells for k in zip(sensitivity["task"], sensitivity["backbone"], sensitivity["strategy"])]
        sensitivity = sensitivity[pd.Series(keep, index=sensitivity.index, dtype=bool)].reset_index(drop=True)
    settings: dict[str, Any] = {}
    overrides: list[str] = []
    if not runs.empty and "suite_fingerprint" in runs and runs["suite"].nunique() == 1:
        prints = runs["suite_fingerprint"].dropna().unique()
        kept = stored_settings(storage, runs["suite"].iloc[0]).get(prints[0]) if len(prints) == 1 else None
        if kept is not None:
            settings, overrides = kept["settings"], kept["overrides"]
    return Results(runs, trials, imps, protocol, dict(sorted(spaces.items())), sensitivity, sampled_spaces,
                   load_scores(storage, suite), ground_truth(storage, suite), settings, overrides, pending)


def importance_frame(cells: list[tuple[str, str, str]], found: list[dict[str, float]]) -> pd.DataFrame:
    """The importances frame (strategy, task, backbone, param, importance) from each cell's fANOVA result."""
    rows = [{"strategy": strategy, "task": task, "backbone": backbone, "param": param, "importance": value}
            for (strategy, task, backbone), result in zip(cells, found) for param, value in result.items()]
    return pd.DataFrame(rows, columns=["strategy", "task", "backbone", "param", "importance"])


def importances_of(direction: optuna.study.StudyDirection, complete: list[FrozenTrial]) -> dict[str, float]:
    """fANOVA importances (Hutter et al. 2014, Optuna's evaluator, seeded) over a cell's completed
    trials; empty when fewer than two completed or nothing varied. (One job per cell, run in
    parallel by :func:`load_results`.)

    Optuna only scores parameters every trial has, so a learning rate drawn per optimizer
    (``lr_sgd`` / ``lr_adamw``) would drop out: the trials are copied into an in-memory study
    with one log-scale ``lr`` instead."""
    if len(complete) < 2:
        return {}
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "A new study created in memory" per cell
    try:
        copy = optuna.create_study(direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    for t in complete:
        params, dists = {}, {}
        for name, value in t.params.items():
            key = "lr" if name.startswith("lr_") else name
            params[key] = value
            dists[key] = (optuna.distributions.FloatDistribution(1e-6, 1.0, log=True)
                          if name.startswith("lr_") else t.distributions[name])
        copy.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=t.value))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = optuna.importance.get_param_importances(
                copy, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError, ZeroDivisionError):
        return {}
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}
