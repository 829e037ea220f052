"""Tuning: one Optuna study per cell, the same budget for every strategy (finished trials,
or backbone epochs of training)."""

from __future__ import annotations

import math
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
from tlbench.samplers import SAMPLER_CLASSES, SEED_STRIDE, SlotSeededTPESampler, make_sampler, trial_slot
from tlbench.spaces import Override, SpaceTrial
from tlbench.store import recover_orphans, worker_id
from tlbench.strategies.base import Strategy
from tlbench.suites.config import SearchSpec
from tlbench.train import forward_flops

__all__ = ["Budget", "EVAL_OFFSET", "SEED_STRIDE", "SlotSeededTPESampler", "TrialReporter", "TuneResult",
           "compute_unit", "evaluation_seed", "make_study", "protocol", "summarize", "trial_slot", "tune",
           "tuning_seed"]

EVAL_OFFSET = 500_000


def tuning_seed(suite_seed: int, slot: int) -> int:
    """The training seed of the tuning trial in ``slot`` (see :func:`trial_slot`)."""
    return suite_seed * SEED_STRIDE + slot


def evaluation_seed(suite_seed: int, k: int) -> int:
    """Evaluation seeds never coincide with tuning seeds (tuning slots stay < 500,000)."""
    return suite_seed * SEED_STRIDE + EVAL_OFFSET + k


@dataclass(frozen=True)
class Budget:
    """What one cell's tuning may spend: ``trials`` finished trials, or ``epochs`` backbone
    epochs of training (see :class:`tlbench.suites.config.BudgetSpec`) in at most
    ``max_trials`` trials."""

    trials: int | None = None
    epochs: float | None = None
    max_trials: int = 500

    @classmethod
    def of(cls, budget: "int | Budget") -> "Budget":
        return budget if isinstance(budget, Budget) else cls(trials=int(budget))

    @property
    def cap(self) -> int:
        """The most trials that count."""
        return self.trials if self.trials is not None else self.max_trials

    def progress(self, result: "TuneResult") -> int:
        """How far tuning is, in this budget's unit: finished trials, or backbone epochs spent."""
        done = result.n_complete + result.n_pruned
        return done if self.epochs is None else int(min(result.compute, self.epochs))

    @property
    def total(self) -> int:
        """The budget in its unit (what :meth:`progress` counts up to)."""
        return self.cap if self.epochs is None else int(math.ceil(self.epochs))


def protocol(budget: int | Budget, search: SearchSpec | None = None, *,
             decay_norm_and_bias: bool = False) -> Protocol:
    """The sampler and pruner settings and the weight-decay convention, identical for every
    strategy of a suite."""
    search = search or SearchSpec()
    b = Budget.of(budget)
    return Protocol(sampler=SAMPLER_CLASSES[search.sampler], n_startup_trials=startup_trials(b, search),
                    pruner="MedianPruner" if search.pruner == "median" else "NopPruner",
                    pruner_startup_trials=search.pruner_startup_trials,
                    pruner_warmup_epochs=search.pruner_warmup_epochs,
                    budget=b.cap, budget_epochs=b.epochs, objective="validation accuracy after the last epoch",
                    weight_decay="every parameter" if decay_norm_and_bias else
                    "weights of two or more dimensions only (none on biases and normalisation parameters)")


def startup_trials(budget: Budget, search: SearchSpec) -> int:
    """Random start-up trials of a model-based sampler: the suite's, else a third of a
    trial budget (at least 3), else 5 for an epochs budget."""
    if search.sampler_startup_trials is not None:
        return search.sampler_startup_trials
    return max(3, budget.trials // 3) if budget.trials is not None else 5


def make_study(name: str, storage: Any, *, budget: int | Budget, seed: int, search: SearchSpec | None = None,
               grid: list[dict[str, Any]] | None = None) -> optuna.Study:
    """Creates or loads a cell's tuning study with the suite's sampler and pruner (``grid``:
    the configurations of a grid search, in order)."""
    search = search or SearchSpec()
    p = protocol(budget, search)
    sampler = make_sampler(search.sampler, seed=seed, n_startup_trials=p.n_startup_trials, grid=grid)
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if p.pruner == "MedianPruner":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=p.pruner_startup_trials,
                                             n_warmup_steps=p.pruner_warmup_epochs)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                               direction="maximize", load_if_exists=True)


class TrialReporter:
    """Forwards per-epoch validation accuracy to an Optuna trial, prunes on request, and
    adds up the FLOPs the trial's training spends (:meth:`spend`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.last: float | None = None
        self.flops = 0.0
        self.epochs = 0

    def report(self, epoch: int, value: float) -> None:
        self.last = value
        self.epochs += 1
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"median pruner at epoch {epoch} (val accuracy {value:.4f})")

    def spend(self, flops: float) -> None:
        self.flops += flops


def compute_unit(backbone: Backbone | None, task: Task | None) -> float | None:
    """FLOPs of one backbone epoch of ``task``: a forward and a backward pass (counted as
    twice the forward, as usual) of the backbone over every training example; None when
    they cannot be counted."""
    if backbone is None or task is None or len(task.train) == 0:
        return None
    x = task.train.x.head(1) if task.lazy else task.train.x[:1]  # type: ignore[union-attr]
    flops = forward_flops(backbone, x)
    return 3 * flops * len(task.train) if flops > 0 else None


def trial_compute(trial: optuna.trial.FrozenTrial) -> float:
    """A finished trial's compute in backbone epochs (its reported epochs when its FLOPs
    were not counted, as for a strategy with its own training loop)."""
    value = trial.user_attrs.get("compute")
    return float(value) if value is not None else float(max(1, len(trial.intermediate_values)))


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
    compute: float = 0.0  # backbone epochs the counted trials trained
    done: bool = False  # the budget is spent
    best_values: dict[str, Any] | None = None  # the best trial's sampled hyperparameters


def _counted(finished: list[optuna.trial.FrozenTrial], budget: Budget | None) -> tuple[list, bool]:
    """The finished trials a budget counts, in number order, and whether it is spent: the
    first ``trials``; or, for an epochs budget, each trial that started before the trials
    before it had spent it (one worker starts a trial only then)."""
    ordered = sorted(finished, key=lambda t: t.number)
    if budget is None:
        return ordered, False
    if budget.epochs is None:
        return ordered[:budget.trials], len(ordered) >= (budget.trials or 0)
    counted, spent = [], 0.0
    for t in ordered:
        if spent >= budget.epochs or len(counted) >= budget.max_trials:
            break
        counted.append(t)
        spent += trial_compute(t)
    return counted, spent >= budget.epochs or len(counted) >= budget.max_trials


def summarize(study: optuna.Study, budget: int | Budget | None = None) -> TuneResult:
    """The outcome of the trials ``budget`` counts (all when None): a study tuned further
    by an earlier, longer run still compares at the suite's budget."""
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    counted, done = _counted(finished, None if budget is None else Budget.of(budget))
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
        compute=sum(trial_compute(t) for t in counted),
        done=done,
        best_values=dict(best.params) if best else None,
    )


def tune(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *, budget: int | Budget,
         suite_seed: int, runtime: Runtime, on_trial: Callable[[int], None] = lambda n: None,
         space: dict[str, Override] | None = None) -> TuneResult:
    """Runs trials until ``budget`` is spent: that many finished (completed or pruned)
    trials, or that many backbone epochs of training. ``space``: the suite's overrides of
    the strategy's search space.

    Trials orphaned by a dead worker are failed and their configuration is queued again.
    A trial whose loss turns NaN/inf is pruned with the reason recorded.
    """
    budget = Budget.of(budget)
    for orphan in recover_orphans(study):
        # Retried with its own configuration and training seed, as if never interrupted; but
        # only when its whole configuration was drawn (a process killed between two suggest
        # calls leaves a partial one): otherwise the next trial takes the same slot, and the
        # slot-seeded sampler proposes the same configuration again.
        if "params" in orphan.user_attrs:
            study.enqueue_trial(orphan.params, user_attrs={"retry_of": orphan.number,
                                                          "seed": orphan.user_attrs.get("seed")})
    unit = compute_unit(backbone, task)
    while not (state := summarize(study, budget)).done:
        on_trial(budget.progress(state))
        _run_trial(study, strategy, backbone, task, suite_seed=suite_seed, runtime=runtime, unit=unit,
                   space=space or {})
    on_trial(budget.progress(state))
    return state


def _run_trial(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *,
               suite_seed: int, runtime: Runtime, unit: float | None, space: dict[str, Override]) -> None:
    trial = study.ask()
    trial.set_user_attr("worker", worker_id())
    seed = trial.user_attrs.get("seed")
    if seed is None:
        seed = tuning_seed(suite_seed, trial_slot(study, trial.number))
        trial.set_user_attr("seed", seed)
    params = strategy.search_space(SpaceTrial(trial, space) if space else trial, backbone)
    trial.set_user_attr("params", params)
    reporter = TrialReporter(trial)
    clock = OwnTime(runtime.members)  # a teacher trained on demand is not this trial's time
    try:
        strategy.fit(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime)
    except optuna.TrialPruned as pruned:
        _finish(study, trial, clock, reporter, unit, TrialState.PRUNED, reason=str(pruned))
    except NonFiniteLoss as err:
        _finish(study, trial, clock, reporter, unit, TrialState.PRUNED, reason=str(err))
    except KeyboardInterrupt:  # Ctrl-C: the next run retries this configuration first
        if "params" in trial.user_attrs:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "seed": seed})
        _finish(study, trial, clock, reporter, unit, TrialState.FAIL, reason="interrupted")
        raise
    except BaseException:
        _finish(study, trial, clock, reporter, unit, TrialState.FAIL, reason="exception")
        raise
    else:
        _finish(study, trial, clock, reporter, unit, TrialState.COMPLETE, value=reporter.last)


def _finish(study: optuna.Study, trial: optuna.Trial, clock: OwnTime, reporter: TrialReporter,
            unit: float | None, state: TrialState, *, value: float | None = None, reason: str | None = None) -> None:
    trial.set_user_attr("seconds", clock.seconds)
    if reporter.flops:
        trial.set_user_attr("flops", reporter.flops)
    trial.set_user_attr("compute", reporter.flops / unit if unit and reporter.flops else float(max(1, reporter.epochs)))
    if reason:
        trial.set_user_attr("prune_reason" if state == TrialState.PRUNED else "failed_reason", reason)
    if state == TrialState.COMPLETE and value is None:
        state, value = TrialState.FAIL, None
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
