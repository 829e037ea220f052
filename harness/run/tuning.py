"""Tuning: one Optuna study per cell, the same budget for every strategy (finished trials,
or backbone epochs of training)."""

from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Any, Callable, Literal

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from tlbench.core.budget import Budget
from tlbench.core.errors import NonFiniteLoss
from tlbench.core.phases import PHASES
from tlbench.data.splits import Task
from tlbench.run.samplers import (
    SAMPLER_CLASSES,
    GridSampler,
    SlotQMCSampler,
    SlotRandomSampler,
    SlotSeededTPESampler,
    SlotView,
    make_sampler,
    trial_slot,
)
from tlbench.run.spaces import Override, SpaceTrial
from tlbench.store import optuna_internals
from tlbench.store.claims import Heartbeat, claim, recover_orphans, release_claim
from tlbench.store.progress import Slots, TuneResult, slot_of, slots, summarize, trial_compute, tuning_seed
from tlbench.store.records import Protocol
from tlbench.strategies.base import Strategy, stacks_seeds
from tlbench.suites.schema import SearchSpec
from tlbench.training.backbones import Backbone
from tlbench.training.context import OwnTime, Runtime
from tlbench.training.loop import NullReporter, forward_flops
from tlbench.training.vectorised import side_by_side

__all__ = ["SlotSeededTPESampler", "TrialReporter", "compute_unit", "independent_slots", "make_study", "next_slots",
           "protocol", "trial_slot", "tune", "tune_step"]

def protocol(budget: Budget, search: SearchSpec | None = None, *,
             decay_norm_and_bias: bool = False) -> Protocol:
    """The budget, the sampler and pruner settings and the weight-decay convention, identical for
    every strategy of a suite."""
    search = search or SearchSpec()
    return Protocol(sampler=SAMPLER_CLASSES[search.sampler], n_startup_trials=startup_trials(budget, search),
                    pruner=PRUNER_CLASSES[search.pruner],
                    pruner_reduction_factor=reduction_factor(search),
                    pruner_startup_trials=search.pruner_startup_trials,
                    pruner_warmup_epochs=search.pruner_warmup_epochs,
                    budget=budget, objective="validation accuracy after the last epoch",
                    weight_decay="every parameter" if decay_norm_and_bias else
                    "weights of two or more dimensions only (none on biases and normalisation parameters)")


PRUNER_CLASSES = {"median": "MedianPruner", "successive_halving": "SuccessiveHalvingPruner",
                  "hyperband": "HyperbandPruner", "none": "NopPruner"}


#: Optuna's default reduction factors of its rung pruners.
REDUCTION_FACTORS = {"successive_halving": 4, "hyperband": 3}


def reduction_factor(search: SearchSpec) -> int | None:
    """The rungs' reduction factor of successive halving and Hyperband (the suite's, else Optuna's
    default); None for the other pruners."""
    default = REDUCTION_FACTORS.get(search.pruner)
    return None if default is None else (search.pruner_reduction_factor or default)


class SlotHyperbandPruner(optuna.pruners.HyperbandPruner):
    """Optuna's Hyperband with brackets assigned by slot, not trial number, and bracket studies
    that are views of the slot's view: a retried slot lands in its bracket again, and its
    sampler and pruner see the lower slots of its bracket only, as a single worker's would.
    (Optuna's bracket study reads the storage directly, past any view.)"""

    def _get_bracket_id(self, study: Any, trial: Any) -> int:
        slot = slot_of(trial)
        if slot is None or slot == trial.number:
            return super()._get_bracket_id(study, trial)
        renumbered = copy.copy(trial)
        renumbered.number = slot
        return super()._get_bracket_id(study, renumbered)

    def _create_bracket_study(self, study: Any, bracket_id: int) -> Any:
        return _BracketView(study, self, bracket_id)


class _BracketView(optuna_internals.StudyView):
    def __init__(self, study: Any, pruner: SlotHyperbandPruner, bracket_id: int) -> None:
        super().__init__(study)
        self._pruner, self._bracket_id = pruner, bracket_id

    def visible(self, trials: list[Any], *, deepcopy: bool) -> list[Any]:
        kept = [t for t in trials if self._pruner._get_bracket_id(self, t) == self._bracket_id]
        return copy.deepcopy(kept) if deepcopy else kept


def make_pruner(p: Protocol) -> optuna.pruners.BasePruner:
    """The pruner a suite's protocol names. Successive halving and Hyperband start their first
    rung at the warm-up epochs (at least 1); their rungs keep 1 / ``reduction_factor`` of the
    trials that reach them."""
    first_rung = max(1, p.pruner_warmup_epochs)
    if p.pruner == "MedianPruner":
        return optuna.pruners.MedianPruner(n_startup_trials=p.pruner_startup_trials,
                                           n_warmup_steps=p.pruner_warmup_epochs)
    if p.pruner == "SuccessiveHalvingPruner":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=first_rung, reduction_factor=p.pruner_reduction_factor or REDUCTION_FACTORS["successive_halving"])
    if p.pruner == "HyperbandPruner":
        return SlotHyperbandPruner(min_resource=first_rung,
                                   reduction_factor=p.pruner_reduction_factor or REDUCTION_FACTORS["hyperband"])
    return optuna.pruners.NopPruner()


def startup_trials(budget: Budget, search: SearchSpec) -> int:
    """Random start-up trials of a model-based sampler: the suite's, else a third of a
    trial budget (at least 3), else 5 for an epochs budget."""
    if search.sampler_startup_trials is not None:
        return search.sampler_startup_trials
    return max(3, budget.trials // 3) if budget.trials is not None else 5


def make_study(name: str, storage: Any, *, budget: Budget, seed: int, search: SearchSpec | None = None,
               grid: list[dict[str, Any]] | None = None) -> optuna.Study:
    """Creates or loads a cell's tuning study with the suite's sampler and pruner (``grid``:
    the configurations of a grid search, in order)."""
    search = search or SearchSpec()
    p = protocol(budget, search)
    sampler = make_sampler(search.sampler, seed=seed, n_startup_trials=p.n_startup_trials, grid=grid)
    return optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(p),
                               direction="maximize", load_if_exists=True)


class TrialReporter:
    """Forwards per-epoch validation accuracy to an Optuna trial, prunes on request, keeps the
    per-epoch validation loss (:meth:`val_loss`) and adds up the FLOPs the trial's training spends
    (:meth:`spend`)."""

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.last: float | None = None
        self.post_fit: float | None = None  # a choice after the last epoch changed it (report_final)
        self.flops = 0.0
        self.epochs = 0
        self.losses: list[float] = []  # validation cross-entropy after each epoch, kept as ``val_loss``

    @property
    def objective(self) -> float | None:
        """What the trial maximises: the validation accuracy of what fit returned."""
        return self.post_fit if self.post_fit is not None else self.last

    def final(self, value: float) -> None:
        self.post_fit = value

    def report(self, epoch: int, value: float) -> None:
        self.last = value
        self.epochs += 1
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            name = type(self.trial.study.pruner).__name__.removeprefix("Slot").removesuffix("Pruner")
            raise optuna.TrialPruned(f"{name} pruner at epoch {epoch} (val accuracy {value:.4f})")

    def val_loss(self, epoch: int, value: float) -> None:
        self.losses.append(value)

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


def independent_slots(study: optuna.Study, budget: Budget) -> float:
    """How many leading slots may run at once: those whose proposal and pruning ignore every
    other trial (their view of lower slots cannot matter) — all of them for random, QMC and
    grid search, the random start-up trials of a model-based sampler, fewer than the median
    pruner's start-up trials, none under successive halving or Hyperband (a rung ranks a trial
    against every trial that reached it before). Any later slot waits until every lower slot has finished, so
    that it is proposed (and pruned) exactly as a single worker would; an epochs budget runs
    its slots one after another (whether a slot is spent at all depends on the ones before)."""
    if budget.epochs is not None:
        return 1
    sampler, pruner = study.sampler, study.pruner
    free: float = 0
    if isinstance(sampler, (SlotRandomSampler, SlotQMCSampler, GridSampler)):
        free = math.inf
    elif hasattr(sampler, "_n_startup_trials"):
        free = sampler._n_startup_trials
    if isinstance(pruner, optuna.pruners.MedianPruner):
        free = min(free, pruner._n_startup_trials)
    elif not isinstance(pruner, optuna.pruners.NopPruner):
        free = 0
    return free


def next_slots(state: Slots, budget: Budget, independent: float, together: int = 1) -> list[int] | None:
    """The slots to run now: the lowest slot no one holds that may start, or None (the budget is
    spent, or every open slot waits for lower ones still running elsewhere). With ``together`` > 1 the independent
    slots are trained in fixed groups of that many (0…K−1, K…2K−1, … up to the last independent
    slot of the budget): the whole group of that slot is returned (finished slots included: a group
    trains whole, so each slot's numbers are the same whoever runs it, after any kill), or the next
    group when a slot of it is held."""
    spent = 0.0
    span = int(min(independent, budget.cap)) if together > 1 else 0
    for s in range(budget.cap):
        if s in state.finished:
            spent += trial_compute(state.finished[s])
            if budget.epochs is not None and spent >= budget.epochs:
                return None
            continue
        if s in state.held:
            continue
        if s < span:
            first = s - s % together
            group = list(range(first, min(first + together, span)))
            if any(x in state.held for x in group):
                continue
            return group
        return [s] if s < independent or all(x in state.finished for x in range(s)) else None
    return None


Step = Literal["ran", "wait", "done"]


def tune_step(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *, budget: Budget,
              suite_seed: int, runtime: Runtime, space: dict[str, Override] | None = None,
              unit: float | None = None, on_trial: Callable[[int], None] = lambda n: None) -> Step:
    """One step of a cell's tuning: fails dead workers' trials, then claims and runs the next
    slot that may start; ``wait`` when every open slot is held or waits for lower ones."""
    recover_orphans(study)
    trials = study.get_trials(deepcopy=False)
    state = slots(trials)
    result = summarize(study, budget, trials)
    on_trial(budget.spent(result.n_complete + result.n_pruned, result.compute))
    if result.done:
        return "done"
    together = runtime.trials_together if stacks_seeds(strategy) else 1
    group = next_slots(state, budget, independent_slots(study, budget), together)
    if group is None:
        return "wait"
    if len(group) > 1:
        return _run_group(study, group, state, strategy, backbone, task, suite_seed=suite_seed, runtime=runtime,
                          unit=unit, space=space or {})
    _run_trial(study, group[0], state.failed.get(group[0]), strategy, backbone, task, suite_seed=suite_seed,
               runtime=runtime, unit=unit, space=space or {})
    return "ran"


def tune(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, *, budget: Budget,
         suite_seed: int, runtime: Runtime, on_trial: Callable[[int], None] = lambda n: None,
         space: dict[str, Override] | None = None, poll_s: float = 0.5) -> TuneResult:
    """Runs trials until ``budget`` is spent: that many finished (completed or pruned)
    trials, or that many backbone epochs of training. ``space``: the suite's overrides of
    the strategy's search space. Other workers may tune the same study at the same time:
    each slot is claimed by one of them (:func:`tlbench.store.claims.claim`), and this call returns
    once every counted slot has finished, wherever it ran.

    A dead worker's trial is failed and its slot claimed again (same configuration, same
    seed). A trial whose loss turns NaN/inf is pruned with the reason recorded.
    """
    unit = compute_unit(backbone, task)
    while (step := tune_step(study, strategy, backbone, task, budget=budget, suite_seed=suite_seed, runtime=runtime,
                             space=space, unit=unit, on_trial=on_trial)) != "done":
        if step == "wait":
            time.sleep(poll_s)
    return summarize(study, budget)


def _claim_slot(study: optuna.Study, slot: int, retry_of: int | None, suite_seed: int) -> Any:
    """Claims ``slot`` with its seed (and the failed trial it retries); None when another worker has it."""
    attrs: dict[str, Any] = {"slot": slot, "seed": tuning_seed(suite_seed, slot)}
    if retry_of is not None:
        attrs["retry_of"] = retry_of
    return claim(study, attrs, lambda t: slot_of(t) == slot)


def _trial_of(study: optuna.Study, slot: int, frozen: Any) -> optuna.Trial:
    """The claimed trial, on the slot's view of the study: its sampler and pruner see the lower slots only."""
    return optuna_internals.trial_on(SlotView(study, slot), optuna_internals.trial_id(frozen))


def _configure(trial: optuna.Trial, strategy: Strategy, backbone: Backbone,
               space: dict[str, Override]) -> dict[str, Any]:
    """The trial's configuration from the strategy's search space (with the suite's overrides), stored with it."""
    params = strategy.search_space(SpaceTrial(trial, space) if space else trial, backbone)
    trial.set_user_attr("params", params)
    return params


def _run_trial(study: optuna.Study, slot: int, retry_of: int | None, strategy: Strategy, backbone: Backbone,
               task: Task, *, suite_seed: int, runtime: Runtime, unit: float | None,
               space: dict[str, Override]) -> None:
    frozen = _claim_slot(study, slot, retry_of, suite_seed)
    if frozen is None:  # another worker claimed this slot first
        return
    trial = _trial_of(study, slot, frozen)
    reporter = TrialReporter(trial)
    clock = OwnTime(runtime.members)  # a teacher trained on demand is not this trial's time
    with Heartbeat.of(study, frozen):
        try:
            params = _configure(trial, strategy, backbone, space)
            with PHASES("tuning"):
                predictor = strategy.fit(backbone, task, params, seed=tuning_seed(suite_seed, slot),
                                         reporter=reporter, runtime=runtime)
        except UpdateFinishedTrialError:
            return  # taken over after this worker was judged dead: the slot's new claim runs it
        except (optuna.TrialPruned, NonFiniteLoss) as err:
            _finish(study, trial, clock.seconds, reporter, unit, err)
        except BaseException as err:  # Ctrl-C ("interrupted") too: the slot is free again; the next run retries it
            _finish(study, trial, clock.seconds, reporter, unit, err)
            raise
        else:
            _finish(study, trial, clock.seconds, reporter, unit, predictor=predictor)


def _run_group(study: optuna.Study, group: list[int], state: Slots, strategy: Strategy, backbone: Backbone,
               task: Task, *, suite_seed: int, runtime: Runtime, unit: float | None,
               space: dict[str, Override]) -> Step:
    """Claims the open slots of ``group`` and trains every slot of the group side by side
    (:mod:`tlbench.training.vectorised`, each trial with its own optimizer, schedule and epochs),
    then finishes the claimed trials. A finished slot of the group (a kill between the group's
    trials) trains again with its stored configuration, unrecorded, so the others come out as in
    the uninterrupted run."""
    claimed: dict[int, Any] = {}
    try:
        for slot in group:
            if slot in state.finished:
                continue
            frozen = _claim_slot(study, slot, state.failed.get(slot), suite_seed)
            if frozen is None:  # another worker took this slot: the group is theirs
                for mine in claimed.values():
                    release_claim(study, mine, RuntimeError("another worker claimed a slot of the group"))
                return "wait" if claimed else "ran"
            claimed[slot] = frozen
        with contextlib.ExitStack() as beating:
            for frozen in claimed.values():
                beating.enter_context(Heartbeat.of(study, frozen))
            _train_group(study, group, claimed, state, strategy, backbone, task, suite_seed=suite_seed,
                         runtime=runtime, unit=unit, space=space)
    except UpdateFinishedTrialError as err:  # one was taken over (this worker judged dead): the rest are free again
        for frozen in claimed.values():
            release_claim(study, frozen, err)
    except BaseException as err:  # the trials not finished are free again
        for frozen in claimed.values():
            release_claim(study, frozen, err)
        raise
    return "ran"


def _train_group(study: optuna.Study, group: list[int], claimed: dict[int, Any], state: Slots, strategy: Strategy,
                 backbone: Backbone, task: Task, *, suite_seed: int, runtime: Runtime, unit: float | None,
                 space: dict[str, Override]) -> None:
    runs: list[tuple[int, Any, Any, Any, Any, float]] = []  # slot, trial (None: not ours), reporter, predictor,
    with side_by_side(one_configuration=False) as together:  # the fit's slot of the group, its setup seconds
        for slot in group:
            clock = OwnTime(runtime.members)
            if slot in claimed:
                trial = _trial_of(study, slot, claimed[slot])
                params = _configure(trial, strategy, backbone, space)
                reporter: Any = TrialReporter(trial)
            else:
                trial, reporter = None, NullReporter(per_epoch=False)
                params = state.finished[slot].user_attrs["params"]
            with together.fit() as fit, PHASES("tuning"):
                predictor = strategy.fit(backbone, task, params, seed=tuning_seed(suite_seed, slot),
                                         reporter=reporter, runtime=runtime)
            runs.append((slot, trial, reporter, predictor, fit, clock.seconds))
        with PHASES("tuning"):
            together.train()
    failure: BaseException | None = None
    for slot, trial, reporter, predictor, fit, setup in runs:
        if trial is None:
            continue
        job = fit.job
        error = job.error if job is not None else None
        _finish(study, trial, setup + (job.seconds if job is not None else 0.0), reporter, unit, error,
                predictor=predictor, stacked=job.stacked if job is not None else 1)
        if error is not None and not isinstance(error, (optuna.TrialPruned, NonFiniteLoss)):
            failure = failure or error
        del claimed[slot]
    if failure is not None:
        raise failure


def _finish(study: optuna.Study, trial: optuna.Trial, seconds: float, reporter: TrialReporter,
            unit: float | None, error: BaseException | None = None, *, predictor: Any = None,
            stacked: int = 1) -> None:
    """Finishes a trial by how its training ended (``error`` None: complete; the pruner or a
    non-finite loss: pruned, with the reason; anything else: failed), with its time, compute, the
    choices its predictor made after the last epoch and how many trials trained together."""
    try:
        if stacked > 1:
            trial.set_user_attr("vectorised", stacked)
        if error is None and getattr(predictor, "post_fit_choices", None):
            trial.set_user_attr("chosen", predictor.post_fit_choices)
        trial.set_user_attr("seconds", seconds)
        if reporter.flops:
            trial.set_user_attr("flops", reporter.flops)
        if reporter.losses:  # beside the per-epoch accuracies (intermediate values): pruner_replay.py --signal loss
            trial.set_user_attr("val_loss", [v if math.isfinite(v) else None for v in reporter.losses])  # JSON
        trial.set_user_attr("compute", reporter.flops / unit if unit and reporter.flops
                            else float(max(1, reporter.epochs)))
        value = reporter.objective if error is None else None
        if isinstance(error, (optuna.TrialPruned, NonFiniteLoss)):
            state = TrialState.PRUNED
            trial.set_user_attr("prune_reason", str(error))
        elif error is not None or value is None:
            state = TrialState.FAIL
            if error is not None:
                trial.set_user_attr("failed_reason",
                                    "interrupted" if isinstance(error, KeyboardInterrupt) else "exception")
        else:
            state = TrialState.COMPLETE
        study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    except (UpdateFinishedTrialError, ValueError) as err:
        if not optuna_internals.finished_elsewhere(study, trial, err):
            raise
        # another worker failed this trial meanwhile (it judged this worker dead): its result is dropped,
        # and the slot's new claim trains the same configuration with the same seed
