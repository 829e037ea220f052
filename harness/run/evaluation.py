"""Evaluation: the best configuration re-run on fresh seeds, scored on held-out data."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState
from pydantic import ValidationError

from tlbench.core.errors import ConfigError, NonFiniteLoss
from tlbench.core.phases import PHASES
from tlbench.core.provenance import provenance
from tlbench.data.splits import Task
from tlbench.run.model_server import Members, member_from
from tlbench.run.tuning import Step
from tlbench.store import optuna_internals
from tlbench.store.claims import Heartbeat, claim, recover_orphans, release_claim, worker_id
from tlbench.store.progress import seed_states, stored_form
from tlbench.store.records import RunContext, RunRecord
from tlbench.strategies.base import Predictor, Strategy, stacks_seeds
from tlbench.training.backbones import Backbone
from tlbench.training.context import OwnTime, Runtime
from tlbench.training.loop import NullReporter, accuracy, median_seconds
from tlbench.training.memory import PeakMemory
from tlbench.training.vectorised import side_by_side


def _same_run(params: dict[str, Any], seed: int) -> Callable[[FrozenTrial], bool]:
    return lambda t: t.user_attrs.get("seed") == seed and t.user_attrs.get("params") == params


def evaluate_step(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task,
                  params: dict[str, Any], *, seeds: list[int], context: RunContext, runtime: Runtime,
                  share: bool = True, on_seed: Callable[[int], None] = lambda n: None) -> Step:
    """One step of a cell's evaluation: fails dead workers' runs, then claims and runs the
    first seed that no one has run or holds; ``wait`` while the rest are held elsewhere."""
    params = stored_form(params)
    recover_orphans(study)
    if study.user_attrs.get("params") != params:
        study.set_user_attr("params", params)  # the configuration the table reports
    done, held = seed_states(study.get_trials(deepcopy=False), params)
    on_seed(sum(s in done for s in seeds))
    todo = [s for s in seeds if s not in done]
    if not todo:
        return "done"
    together = runtime.seeds_together if stacks_seeds(strategy) else 1
    if together > 1:
        # fixed groups in seed-list order: a group trains whole (its recorded seeds too), so each
        # seed's numbers are the same whoever runs the group, after any kill, with any workers
        for group in (seeds[i:i + together] for i in range(0, len(seeds), together)):
            free = [s for s in group if s not in done and s not in held]
            if free:
                _run_group(study, strategy, backbone, task, params, group=group, free=free, context=context,
                           runtime=runtime, share=share)
                return "ran"
        return "wait"
    free = [s for s in todo if s not in held]
    if not free:
        return "wait"
    _run_one(study, strategy, backbone, task, params, seed=free[0], context=context, runtime=runtime, share=share)
    return "ran"


def evaluate(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task,
             params: dict[str, Any], *, seeds: list[int], context: RunContext,
             runtime: Runtime, on_seed: Callable[[int], None] = lambda n: None,
             share: bool = True, poll_s: float = 0.5) -> list[RunRecord]:
    """Runs every seed not yet recorded in ``study``, with other workers if there are any
    (each seed is claimed by one: :func:`tlbench.store.claims.claim`); returns the records this
    worker made, once every seed is done wherever it ran.

    ``context`` (suite, task, backbone, strategy, tuning summary) is copied into each record.
    ``share``: offer the trained models to the strategies that reuse them (not for the
    variations of a sensitivity study).
    """
    before = {t.number for t in study.get_trials(deepcopy=False)}
    while (step := evaluate_step(study, strategy, backbone, task, params, seeds=seeds, context=context,
                                 runtime=runtime, share=share, on_seed=on_seed)) != "done":
        if step == "wait":
            time.sleep(poll_s)
    mine = worker_id()
    return [RunRecord.from_stored(t.user_attrs["record"]) for t in study.get_trials(deepcopy=False)
            if t.number not in before and t.state == TrialState.COMPLETE and t.user_attrs.get("worker") == mine]


def _run_one(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task,
             params: dict[str, Any], *, seed: int, context: RunContext,
             runtime: Runtime, share: bool = True) -> RunRecord | None:
    frozen = claim(study, {"seed": seed, "params": params}, _same_run(params, seed))
    if frozen is None:  # another worker claimed this seed first
        return None
    try:
        seen: set[str] = set()  # how the run's image inputs were produced, noted by every reader it drives
        noting = _noting(runtime, seen)
        with Heartbeat.of(study, frozen):
            fitted = _fit(strategy, backbone, task, params, seed=seed, runtime=noting, share=share)
            return _record(study, frozen, fitted, strategy, task, params, seed=seed, context=context,
                           runtime=noting, share=share, seen=seen)
    except (UpdateFinishedTrialError, ValueError) as err:
        if not optuna_internals.finished_elsewhere(study, frozen, err):
            release_claim(study, frozen, err)
            raise
        return None  # taken over after this worker was judged dead: the seed's new claim runs it
    except BaseException as err:  # training, scoring or recording stopped: the seed is free again
        release_claim(study, frozen, err)
        raise


def _noting(runtime: Runtime, seen: set[str]) -> Runtime:
    loading = runtime.execution.loading.noting(seen)
    return dataclasses.replace(runtime, execution=dataclasses.replace(runtime.execution, loading=loading))


def _run_group(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task, params: dict[str, Any], *,
               group: list[int], free: list[int], context: RunContext, runtime: Runtime, share: bool) -> None:
    """Claims the ``free`` seeds of ``group``, trains every seed of the group side by side
    (:mod:`tlbench.training.vectorised`) and records the claimed ones. A seed claimed elsewhere in
    the meantime is trained here too but recorded there, with the same numbers."""
    claimed: dict[int, FrozenTrial] = {}
    try:
        for seed in free:
            frozen = claim(study, {"seed": seed, "params": params}, _same_run(params, seed))
            if frozen is not None:
                claimed[seed] = frozen
        if not claimed:
            return
        seen: set[str] = set()
        noting = _noting(runtime, seen)
        with contextlib.ExitStack() as beating:
            for frozen in claimed.values():
                beating.enter_context(Heartbeat.of(study, frozen))
            fits = _fit_side_by_side(strategy, backbone, task, params, seeds=group, runtime=noting, share=share)
            for seed, fitted in zip(group, fits):
                if seed not in claimed:
                    continue
                try:
                    _record(study, claimed[seed], fitted, strategy, task, params, seed=seed, context=context,
                            runtime=noting, share=share, seen=seen)
                except (UpdateFinishedTrialError, ValueError) as err:
                    if not optuna_internals.finished_elsewhere(study, claimed[seed], err):
                        raise
                del claimed[seed]  # recorded (or recorded by the worker that took it over)
    except BaseException as err:  # the seeds not recorded are free again
        for frozen in claimed.values():
            release_claim(study, frozen, err)
        raise


@dataclasses.dataclass
class _Fitted:
    """A trained run, before it is scored and recorded."""

    predictor: Predictor | None  # None: the loss diverged (``error``)
    error: NonFiniteLoss | None
    seconds: float  # own training time
    feature_seconds: float
    memory: PeakMemory
    started: dt.datetime
    stacked: int = 1


def _fit(strategy: Strategy, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
         runtime: Runtime, share: bool) -> _Fitted:
    started = dt.datetime.now(dt.timezone.utc)
    clock = OwnTime(runtime.members)  # models trained on demand count as reused, not as own time
    # a sensitivity study's variations (not shared) are charged as their own phase
    phase = "evaluation" if share else "sensitivity"
    try:
        with PHASES(phase), PeakMemory(runtime.device) as memory, runtime.features.charge() as features:
            predictor = strategy.fit(backbone, task, params, seed=seed, reporter=NullReporter(per_epoch=False),
                                     runtime=runtime)
    except NonFiniteLoss as err:  # deterministic for this seed: recorded, not retried
        return _Fitted(None, err, 0.0, 0.0, memory, started)
    # The feature pass is charged as its own cost (feature_seconds, the same for every run of the
    # cell), so own time leaves it out whether this run computed the features or found them cached.
    # Features computed while training members on demand are already inside those models' time.
    on_demand = runtime.members.fit_seconds - clock.nested if runtime.members is not None else 0.0
    seconds = clock.seconds - (features.computed_seconds if on_demand == 0 else 0.0)
    return _Fitted(predictor, None, seconds, features.pass_seconds or 0.0, memory, started)


def _fit_side_by_side(strategy: Strategy, backbone: Backbone, task: Task, params: dict[str, Any], *,
                      seeds: list[int], runtime: Runtime, share: bool) -> list[_Fitted]:
    """Every seed's ``fit`` (which registers its training), then the training of all of them together;
    each run's own time is its setup plus its share of the group's training."""
    fits, slots = [], []
    with side_by_side() as together:
        for seed in seeds:
            with together.fit() as slot:
                fits.append(_fit(strategy, backbone, task, params, seed=seed, runtime=runtime, share=share))
            slots.append(slot)
        with PHASES("evaluation" if share else "sensitivity"), PeakMemory(runtime.device) as memory:
            together.train()
    for fitted, slot in zip(fits, slots):
        job = slot.job
        if job is None:
            continue
        if isinstance(job.error, NonFiniteLoss):
            fitted.predictor, fitted.error = None, job.error
        elif job.error is not None:
            raise job.error
        fitted.seconds += job.seconds
        fitted.memory, fitted.stacked = memory, job.stacked
    return fits


def _record(study: optuna.Study, trial: FrozenTrial, fitted: _Fitted, strategy: Strategy, task: Task,
            params: dict[str, Any], *, seed: int, context: RunContext, runtime: Runtime, share: bool,
            seen: set[str]) -> RunRecord | None:
    """Scores a trained run on the test (and shifted) split and records it in its claimed trial."""
    storage, trial_id = optuna_internals.storage_of(study), optuna_internals.trial_id(trial)
    if fitted.predictor is None:
        storage.set_trial_user_attr(trial_id, "failed_reason", str(fitted.error))
        storage.set_trial_user_attr(trial_id, "final", True)
        study.tell(trial.number, state=TrialState.FAIL)
        return None
    predictor, seconds, memory, started = fitted.predictor, fitted.seconds, fitted.memory, fitted.started
    shifted = task.shifted_test
    with PHASES("inference"):
        test_logits = predictor.logits(task.test)  # the warm-up pass; its logits are the ones scored
        measured = median_seconds(lambda: predictor.logits(task.test))
        inference_seconds = predictor.inference_seconds(task.test, measured=measured)
        logits = {task.test.fingerprint: test_logits, task.val.fingerprint: predictor.logits(task.val)}
        if shifted is not None:
            logits[shifted.fingerprint] = predictor.logits(shifted)
    members = runtime.members
    # kept for the strategies that reuse it
    if share and isinstance(members, Members) and strategy.name in members.reuse.needed:
        key = members.key(strategy.name, seed, params)
        members.record(key, member_from(
            predictor, key=key, strategy=strategy.name, index=members.index_of(seed), seed=seed,
            params=params, task=task, seconds=seconds, inference_seconds=inference_seconds, logits=logits,
            keep_weights=strategy.name in members.reuse.keep_weights))
    fields = {
        "seed": seed, "params": dict(params), "strategy_info": predictor.info(), "chosen": predictor.post_fit_choices,
        "metrics": {"test_accuracy": accuracy(test_logits, task.test.y),
                    "val_accuracy": accuracy(logits[task.val.fingerprint], task.val.y),
                    "shifted_test_accuracy": accuracy(logits[shifted.fingerprint], shifted.y) if shifted else None},
        "costs": {
            # own training time plus that of reused models (a teacher, ensemble members)
            "train_seconds": seconds + predictor.reused_seconds, "own_train_seconds": seconds,
            "feature_seconds": fitted.feature_seconds,  # 0: the strategy reads no cached features
            "trainable_parameters": predictor.trainable_parameters,
            "inference_parameters": predictor.inference_parameters,
            "inference_seconds": inference_seconds,
            "inference_ms_per_example": 1000 * inference_seconds / max(1, len(task.test)),
            "peak_memory_mb": memory.peak_mb, "memory_growth_mb": memory.growth_mb, "peak_memory_kind": memory.kind},
        "data": {
            "n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test),
            "num_classes": task.num_classes, "split_fingerprint": task.fingerprint,
            # every read of the run is in (fit and the scored passes); "features": it read cached features only
            "image_inputs": "+".join(sorted(seen)) or ("features" if task.lazy else ""),
            "loader_workers": runtime.execution.loading.workers if "files" in seen else 0},
        "provenance": {
            "started_at": started.isoformat(), "precision": runtime.execution.tag,
            "channels_last": runtime.execution.channels_last, "compiled": runtime.execution.compile,
            "vectorised": fitted.stacked,
            **provenance(runtime.device)},
    }
    try:
        record = RunRecord.model_validate({**context.model_dump(), **fields})
    except ValidationError as err:  # a predictor (a plugin's) reported something that is not a number
        first = err.errors()[0]
        reason = f"{'.'.join(map(str, first['loc']))}: {first['msg']} (got {first.get('input')!r})"
        storage.set_trial_user_attr(trial_id, "failed_reason", f"invalid run record: {reason}")
        study.tell(trial.number, state=TrialState.FAIL)
        raise ConfigError(f"strategy {strategy.name!r}: its run record is invalid ({reason}); "
                          f"`tlbench check {strategy.name}` checks its predictor") from None
    storage.set_trial_user_attr(trial_id, "record", record.model_dump())
    study.tell(trial.number, record.metrics.test_accuracy)
    return record
