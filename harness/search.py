"""Tuning: one Optuna study per cell, the same finished-trial budget for every strategy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from tlbench.backbones import Backbone
from tlbench.data import Task
from tlbench.errors import NonFiniteLoss
from tlbench.records import Protocol
from tlbench.reuse import OwnTime
from tlbench.runtime import Runtime
from tlbench.store import recover_orphans, worker_id
from tlbench.strategies.base import Strategy
from tlbench.suites.config import SearchSpec

SEED_STRIDE = 1_000_003
EVAL_OFFSET = 500_000


def tuning_seed(suite_seed: int, slot: int) -> int:
    """The training seed of the tuning trial in ``slot`` (see :func:`trial_slot`)."""
    return suite_seed * SEED_STRIDE + slot


def evaluation_seed(suite_seed: int, k: int) -> int:
    """Evaluation seeds never coincide with tuning seeds (tuning slots stay < 500,000)."""
    return suite_seed * SEED_STRIDE + EVAL_OFFSET + k


def protocol(budget: int, search: SearchSpec | None = None, *, decay_norm_and_bias: bool = False) -> Protocol:
    """The sampler and pruner settings and the weight-decay convention, identical for every
    strategy of a suite."""
    search = search or SearchSpec()
    startup = search.sampler_startup_trials
    return Protocol(sampler="TPESampler", n_startup_trials=max(3, budget // 3) if startup is None else startup,
                    pruner="MedianPruner" if search.pruner == "median" else "NopPruner",
                    pruner_startup_trials=search.pruner_startup_trials,
                    pruner_warmup_epochs=search.pruner_warmup_epochs,
                    budget=budget, objective="validation accuracy after the last epoch",
                    weight_decay="every parameter" if decay_norm_and_bias else
                    "weights of two or more dimensions only (none on biases and normalisation parameters)")


def trial_slot(study: optuna.Study, number: int) -> int:
    """The position of trial ``number`` among the study's non-failed trials: the count of
    finished ones plus the other running ones that a worker has stamped. One worker gets
    0, 1, 2, … whether or not the study was interrupted and resumed; concurrent workers get
    distinct slots. A running trial without a stamp is one whose process died between
    creating and stamping it (or, for a moment, a live worker's): counting it would shift
    every later slot of a resumed run."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                      TrialState.RUNNING))
    return sum(t.number != number and (t.state != TrialState.RUNNING or "worker" in t.user_attrs)
               for t in trials)


class SlotSeededTPESampler(optuna.samplers.TPESampler):
    """TPE whose random state is re-derived before every trial from (seed, slot).

    A resumed study therefore proposes exactly what an uninterrupted one would have, and two
    workers asking at the same moment do not propose the same random start-up points.
    """

    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        state = (self._base_seed * SEED_STRIDE + trial_slot(study, trial.number)) % 2**32
        for rng in (getattr(self, "_rng", None), getattr(self._random_sampler, "_rng", None)):
            if rng is not None:  # optuna's LazyRandomState
                rng.rng.seed(state)
        super().before_trial(study, trial)


def make_study(name: str, storage: Any, *, budget: int, seed: int,
               search: SearchSpec | None = None) -> optuna.Study:
    """Creates or loads a cell's tuning study with the suite's sampler and pruner."""
    p = protocol(budget, search)
    sampler = SlotSeededTPESampler(seed=seed, n_startup_trials=p.n_startup_trials)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if p.pruner == "MedianPruner":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=p.pruner_startup_trials,
                                             n_warmup_steps=p.pruner_warmup_epochs)
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
    best_seed: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float


def summarize(study: optuna.Study, budget: int | None = None) -> TuneResult:
    """The outcome of the first ``budget`` finished trials (all when None): a study tuned
    further by an earlier, longer run still compares at the suite's budget."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    counted = sorted(finished, key=lambda t: t.number)[:budget]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    return TuneResult(
        best_params=dict(best.user_attrs["params"]) if best else None,
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_seed=best.user_attrs.get("seed") if best else None,
        n_complete=len(complete),
        n_pruned=len(counted) - len(complete),
        n_failed=sum(t.state == TrialState.FAIL for t in trials),
        seconds=sum(t.user_attrs.get("seconds", 0.0) for t in counted),
    )


def tune(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *, budget: int,
         suite_seed: int, runtime: Runtime, on_trial: Callable[[int], None] = lambda n: None) -> TuneResult:
    """Runs trials until ``budget`` of them have finished (completed or pruned).

    Trials orphaned by a dead worker are failed and their configuration is queued again.
    A trial whose loss turns NaN/inf is pruned with the reason recorded.
    """
    for orphan in recover_orphans(study):
        # Retried with its own configuration and training seed, as if never interrupted; but
        # only when its whole configuration was drawn (a process killed between two suggest
        # calls leaves a partial one): otherwise the next trial takes the same slot, and the
        # slot-seeded sampler proposes the same configuration again.
        if "params" in orphan.user_attrs:
            study.enqueue_trial(orphan.params, user_attrs={"retry_of": orphan.number,
                                                          "seed": orphan.user_attrs.get("seed")})
    while (done := _finished(study)) < budget:
        on_trial(done)
        _run_trial(study, strategy, backbone, task, suite_seed=suite_seed, runtime=runtime)
    on_trial(min(_finished(study), budget))
    return summarize(study, budget)


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _run_trial(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *,
               suite_seed: int, runtime: Runtime) -> None:
    trial = study.ask()
    trial.set_user_attr("worker", worker_id())
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = tuning_seed(suite_seed, trial_slot(study, trial.number))
        trial.set_user_attr("seed", seed)
    params = strategy.search_space(trial, backbone)
    trial.set_user_attr("params", params)
    reporter = TrialReporter(trial)
    clock = OwnTime(runtime.members)  # a teacher trained on demand is not this trial's time
    try:
        strategy.fit(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime)
    except optuna.TrialPruned as pruned:
        _finish(study, trial, clock, TrialState.PRUNED, reason=str(pruned))
    except NonFiniteLoss as err:
        _finish(study, trial, clock, TrialState.PRUNED, reason=str(err))
    except KeyboardInterrupt:  # Ctrl-C: the next run retries this configuration first
        if "params" in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "seed": seed})
        _finish(study, trial, clock, TrialState.FAIL, reason="interrupted")
        raise
    except BaseException:
        _finish(study, trial, clock, TrialState.FAIL, reason="exception")
        raise
    else:
        _finish(study, trial, clock, TrialState.COMPLETE, value=reporter.last)


def _finish(study: optuna.Study, trial: optuna.Trial, clock: OwnTime, state: TrialState, *,
            value: float | None = None, reason: str | None = None) -> None:
    trial.set_user_attr("seconds", clock.seconds)
    if reason:
        trial.set_user_attr("prune_reason" if state == TrialState.PRUNED else "failed_reason", reason)
    if state == TrialState.COMPLETE and value is None:
        state, value = TrialState.FAIL, None
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
