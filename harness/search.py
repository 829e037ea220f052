"""Tuning: one Optuna study per cell, the same finished-trial budget for every strategy."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from harness.backbones import Backbone
from harness.errors import NonFiniteLoss
from harness.runtime import Runtime
from harness.store import recover_orphans, worker_id
from strategies.base import Strategy
from suites.config import SearchSpec
from suites.tasks import Task

SEED_STRIDE = 1_000_003
EVAL_OFFSET = 500_000


def tuning_seed(suite_seed: int, trial_number: int) -> int:
    return suite_seed * SEED_STRIDE + trial_number


def evaluation_seed(suite_seed: int, k: int) -> int:
    """Evaluation seeds never coincide with tuning seeds (trial numbers stay < 500,000)."""
    return suite_seed * SEED_STRIDE + EVAL_OFFSET + k


def protocol(budget: int, search: SearchSpec | None = None) -> dict[str, Any]:
    """The sampler and pruner settings, identical for every strategy of a suite."""
    search = search or SearchSpec()
    startup = search.sampler_startup_trials
    return {"sampler": "TPESampler",
            "n_startup_trials": max(3, budget // 3) if startup is None else startup,
            "pruner": "MedianPruner" if search.pruner == "median" else "NopPruner",
            "pruner_startup_trials": search.pruner_startup_trials,
            "pruner_warmup_epochs": search.pruner_warmup_epochs,
            "budget": budget, "objective": "validation accuracy after the last epoch"}


def make_study(name: str, storage: Any, *, budget: int, seed: int,
               search: SearchSpec | None = None) -> optuna.Study:
    """Creates or loads the tuning study; the sampler seed moves on with the trial count
    so a resumed study does not replay the configurations it already tried."""
    p = protocol(budget, search)
    existing = 0
    try:
        existing = len(optuna.load_study(study_name=name, storage=storage).trials)
    except KeyError:
        pass
    sampler = optuna.samplers.TPESampler(seed=seed + existing, n_startup_trials=p["n_startup_trials"])
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if p["pruner"] == "MedianPruner":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=p["pruner_startup_trials"],
                                             n_warmup_steps=p["pruner_warmup_epochs"])
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


class TrialReporter:
    """Forwards per-epoch validation accuracy to an Optuna trial and prunes on request."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.last: float | None = None

    def report(self, epoch: int, value: float) -> None:
        self.last = value
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"median pruner at epoch {epoch} (val accuracy {value:.4f})")


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any] | None
    best_value: float | None
    best_trial: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float


def summarize(study: optuna.Study) -> TuneResult:
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return TuneResult(
        best_params=dict(best.user_attrs["params"]) if best else None,
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        n_complete=len(complete),
        n_pruned=sum(t.state == TrialState.PRUNED for t in trials),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        seconds=sum(t.user_attrs.get("seconds", 0.0) for t in trials),
    )


def tune(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *, budget: int,
         suite_seed: int, runtime: Runtime, on_trial: Callable[[int], None] = lambda n: None) -> TuneResult:
    """Runs trials until ``budget`` of them have finished (completed or pruned).

    Trials orphaned by a dead worker are failed and their configuration is queued again.
    A trial whose loss turns NaN/inf is pruned with the reason recorded.
    """
    for orphan in recover_orphans(study):
        if orphan.params:
            study.enqueue_trial(orphan.params, user_attrs={"retry_of": orphan.number})
    while (done := _finished(study)) < budget:
        on_trial(done)
        _run_trial(study, strategy, backbone, task, suite_seed=suite_seed, runtime=runtime)
    on_trial(_finished(study))
    return summarize(study)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_trial(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *,
               suite_seed: int, runtime: Runtime) -> None:
    trial = study.ask()
    seed = tuning_seed(suite_seed, trial.number)
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("seed", seed)
    params = strategy.search_space(trial)
    trial.set_user_attr("params", params)
    reporter = TrialReporter(trial)
    start = time.perf_counter()
    try:
        strategy.fit(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime)
    except optuna.TrialPruned as pruned:
        _finish(study, trial, start, TrialState.PRUNED, reason=str(pruned))
    except NonFiniteLoss as err:
        _finish(study, trial, start, TrialState.PRUNED, reason=str(err))
    except KeyboardInterrupt:  # Ctrl-C: the next run retries this configuration first
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        _finish(study, trial, start, TrialState.FAIL, reason="interrupted")
        raise
    except BaseException:
        _finish(study, trial, start, TrialState.FAIL, reason="exception")
        raise
    else:
        _finish(study, trial, start, TrialState.COMPLETE, value=reporter.last)


def _finish(study: optuna.Study, trial: optuna.Trial, start: float, state: TrialState, *,
            value: float | None = None, reason: str | None = None) -> None:
    trial.set_user_attr("seconds", time.perf_counter() - start)
    if reason:
        trial.set_user_attr("prune_reason" if state == TrialState.PRUNED else "failed_reason", reason)
    if state == TrialState.COMPLETE and value is None:
        state, value = TrialState.FAIL, None
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
