"""Evaluation: the best configuration re-run on fresh seeds, scored on held-out data."""

from __future__ import annotations

import datetime as dt
from typing import Any, Callable

import optuna
from optuna.trial import TrialState
from pydantic import ValidationError

from tlbench.backbones import Backbone
from tlbench.data import Task
from tlbench.errors import ConfigError, NonFiniteLoss
from tlbench.members import Members, member_from
from tlbench.memory import PeakMemory
from tlbench.provenance import provenance
from tlbench.records import RunContext, RunRecord
from tlbench.reuse import OwnTime
from tlbench.runtime import Runtime
from tlbench.store import recover_orphans, worker_alive, worker_id
from tlbench.strategies.base import Strategy
from tlbench.train import NullReporter, accuracy, median_seconds


def _taken_seeds(study: optuna.Study, params: dict[str, Any]) -> set[int]:
    """Seeds evaluated with exactly ``params`` (a new best configuration makes earlier
    evaluations stale), or being evaluated right now by another live worker."""
    taken = set()
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("params") != params or "seed" not in t.user_attrs:
            continue
        final = t.state == TrialState.FAIL and t.user_attrs.get("final")
        running_elsewhere = (t.state == TrialState.RUNNING and t.user_attrs.get("worker") != worker_id()
                             and worker_alive(t.user_attrs.get("worker", "")))
        if t.state == TrialState.COMPLETE or final or running_elsewhere:
            taken.add(int(t.user_attrs["seed"]))
    return taken


def evaluate(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task,
             params: dict[str, Any], *, seeds: list[int], context: RunContext,
             runtime: Runtime, on_seed: Callable[[int], None] = lambda n: None,
             share: bool = True) -> list[RunRecord]:
    """Runs every seed not yet recorded in ``study``; returns the new records.

    ``context`` (suite, task, backbone, strategy, tuning summary) is copied into each record.
    ``share``: offer the trained models to the strategies that reuse them (not for the
    variations of a sensitivity study).
    """
    recover_orphans(study)
    study.set_user_attr("params", params)  # the configuration the table reports
    records = []
    for i, seed in enumerate(seeds):
        on_seed(i)
        if seed in _taken_seeds(study, params):  # re-read: other workers make progress too
            continue
        record = _run_one(study, strategy, backbone, task, params, seed=seed, context=context,
                          runtime=runtime, share=share)
        if record is not None:
            records.append(record)
    on_seed(len(seeds))
    return records


def _run_one(study: optuna.Study, strategy: Strategy, backbone: Backbone, task: Task,
             params: dict[str, Any], *, seed: int, context: RunContext,
             runtime: Runtime, share: bool = True) -> RunRecord | None:
    trial = study.ask()
    trial.set_user_attr("worker", worker_id())
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("params", params)
    started = dt.datetime.now(dt.timezone.utc)
    clock = OwnTime(runtime.members)  # models trained on demand count as reused, not as own time
    try:
        with PeakMemory(runtime.device) as memory, runtime.features.charge() as features:
            predictor = strategy.fit(backbone, task, params, seed=seed, reporter=NullReporter(),
                                     runtime=runtime)
    except NonFiniteLoss as err:  # deterministic for this seed: recorded, not retried
        trial.set_user_attr("failed_reason", str(err))
        trial.set_user_attr("final", True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    # The feature pass is charged as its own cost (feature_seconds, the same for every run of the
    # cell), so own time leaves it out whether this run computed the features or found them cached.
    # Features computed while training members on demand are already inside those models' time.
    on_demand = runtime.members.fit_seconds - clock.nested if runtime.members is not None else 0.0
    seconds = clock.seconds - (features.computed_seconds if on_demand == 0 else 0.0)
    shifted = task.shifted_test
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
        "seed": seed, "params": dict(params),
        "test_accuracy": accuracy(test_logits, task.test.y),
        "val_accuracy": accuracy(logits[task.val.fingerprint], task.val.y),
        "shifted_test_accuracy": accuracy(logits[shifted.fingerprint], shifted.y) if shifted else None,
        # cost: own training time plus that of reused models (a teacher, ensemble members)
        "train_seconds": seconds + predictor.reused_seconds, "own_train_seconds": seconds,
        "feature_seconds": features.pass_seconds or 0.0,  # 0: the strategy reads no cached features
        "trainable_parameters": predictor.trainable_parameters,
        "inference_parameters": predictor.inference_parameters,
        "inference_seconds": inference_seconds,
        "inference_ms_per_example": 1000 * inference_seconds / max(1, len(task.test)),
        "peak_memory_mb": memory.peak_mb, "memory_growth_mb": memory.growth_mb,
        "peak_memory_kind": memory.kind, "strategy_info": predictor.info(),
        "n_train": len(task.train), "n_val": len(task.val), "n_test": len(task.test),
        "num_classes": task.num_classes, "precision": runtime.execution.tag,
        "channels_last": runtime.execution.channels_last, "compiled": runtime.execution.compile,
        "loader_workers": runtime.execution.loading.workers if task.lazy else 0,
        "split_fingerprint": task.fingerprint, "started_at": started.isoformat(),
        **provenance(runtime.device),
    }
    try:
        record = RunRecord(**context.model_dump(), **fields)
    except ValidationError as err:  # a predictor (a plugin's) reported something that is not a number
        first = err.errors()[0]
        reason = f"{'.'.join(map(str, first['loc']))}: {first['msg']} (got {first.get('input')!r})"
        trial.set_user_attr("failed_reason", f"invalid run record: {reason}")
        study.tell(trial, state=TrialState.FAIL)
        raise ConfigError(f"strategy {strategy.name!r}: its run record is invalid ({reason}); "
                          f"`tlbench check {strategy.name}` checks its predictor") from None
    trial.set_user_attr("record", record.model_dump())
    study.tell(trial, record.test_accuracy)
    return record
