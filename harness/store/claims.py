"""Keeping the store sound under several workers and crashes.

One Optuna storage URL holds every tuning trial and evaluation run (opened by
:mod:`tlbench.store.opening`; what they hold: :mod:`tlbench.store.records`). Every unit of work (a tuning
slot, an evaluation seed) is *claimed* by creating a stamped RUNNING trial (:func:`claim`);
a dead worker's trial is failed (by its process on this host, by its heartbeat on a database
storage), which frees the unit for the next claim.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Callable

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.core.errors import ConfigError
from tlbench.core.processes import worker_alive, worker_id
from tlbench.store import optuna_internals
from tlbench.store.records import StudyName, studies

# ------------------------------------------------------------------ claims

#: Trials this process holds right now (claimed, not yet finished). A RUNNING trial stamped by this
#: process but not held is left over from an earlier run in the same process (a test calling the
#: command line twice, a cut-off journal that lost the trial's last write): dead like any other.
_HELD: set[int] = set()


def claim(study: optuna.Study, attrs: dict[str, Any], same: Callable[[FrozenTrial], bool]) -> FrozenTrial | None:
    """Claims one unit of work (a tuning slot, an evaluation seed) for this worker, atomically.

    The claim is a RUNNING trial created in one write with the worker's stamp and ``attrs``
    (so no process can die between creating a trial and saying whose it is); it holds the unit
    when it is the lowest-numbered trial of the unit (``same``) that has not failed. Both
    storages number trials in the order they are created and show a trial only after every
    lower-numbered one, so of two workers racing for a unit exactly one sees no earlier claim;
    the other fails its trial (``claim_lost``) and returns None. A failed claim (its worker
    died, or was interrupted) frees the unit for the next claim."""
    template = FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=dt.datetime.now(),
                           datetime_complete=None, params={}, distributions={},
                           user_attrs={"worker": worker_id(), **attrs}, system_attrs={}, intermediate_values={},
                           trial_id=-1)
    storage = optuna_internals.storage_of(study)
    trial_id = optuna_internals.create_trial(study, template)
    _HELD.add(trial_id)
    beat(storage, trial_id)
    mine = storage.get_trial(trial_id)
    for t in study.get_trials(deepcopy=False):
        if t.number < mine.number and t.state != TrialState.FAIL and same(t):
            storage.set_trial_user_attr(trial_id, "claim_lost", t.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            _HELD.discard(trial_id)
            return None
    optuna_internals.forget_cached_trials(study)  # the sampler reads the study afresh (as ask() does)
    return mine


def release_claim(study: optuna.Study, trial: FrozenTrial, err: BaseException) -> None:
    """Fails a claimed run on the way out of an error or interrupt (an unreadable test image,
    Ctrl-C), with the reason, so that no run is left RUNNING until the next start on this
    host; the next claim of its seed runs it again. A run already finished stays as it is."""
    reason = "interrupted" if isinstance(err, KeyboardInterrupt) else f"{type(err).__name__}: {str(err)[:200]}"
    try:
        optuna_internals.storage_of(study).set_trial_user_attr(optuna_internals.trial_id(trial), "failed_reason",
                                                               reason)
        study.tell(trial.number, state=TrialState.FAIL)
    except (UpdateFinishedTrialError, ValueError):
        pass


def lost_claim(trial: FrozenTrial) -> bool:
    """A trial that lost the race for its unit: it never ran (not a failure of the work)."""
    return "claim_lost" in trial.user_attrs


def beat(storage: BaseStorage, trial_id: int) -> None:
    """Records a heartbeat for a running trial, on storages that keep them (databases)."""
    if optuna_internals.heartbeat_enabled(storage):
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]


class Heartbeat:
    """Holds a claimed trial while it runs (every claim is run inside one). Its heartbeat is
    recorded every ``heartbeat_interval`` seconds in a thread (database storages; Optuna's own
    thread only runs inside ``Study.optimize``), so workers anywhere can tell a dead worker's
    trial by its stale heartbeat."""

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def of(cls, study: optuna.Study, trial: FrozenTrial) -> "Heartbeat":
        """The heartbeat of a claimed trial of ``study``."""
        return cls(optuna_internals.storage_of(study), optuna_internals.trial_id(trial))

    def __enter__(self) -> "Heartbeat":
        if optuna_internals.heartbeat_enabled(self.storage):
            interval = float(self.storage.get_heartbeat_interval())  # type: ignore[attr-defined]
            self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True, name="tlbench-heartbeat")
            self._thread.start()
        return self

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                beat(self.storage, self.trial_id)
            except Exception:  # noqa: BLE001 - a dropped connection: the next beat retries
                pass

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        _HELD.discard(self.trial_id)  # finished (or failed) by now


def _age(trial: FrozenTrial) -> float:
    started = trial.datetime_start
    if started is None:
        return 0.0
    now = dt.datetime.now(started.tzinfo) if started.tzinfo else dt.datetime.now()
    return (now - started).total_seconds()


def dead_trials(study: optuna.Study, *, grace_s: float = 120.0) -> list[FrozenTrial]:
    """RUNNING trials whose worker is gone: one on this host whose process has ended; on a
    database storage, one whose heartbeat is older than the grace period (on any host) or that
    never beat and is older than it; a trial no tlbench worker stamped, older than ``grace_s``.
    A journal file keeps no heartbeat: a worker on another host counts as alive."""
    storage = optuna_internals.storage_of(study)
    running = [t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
               if t.user_attrs.get("worker") != worker_id() or optuna_internals.trial_id(t) not in _HELD]
    if not running:
        return []
    stale: set[int] = set()
    never: set[int] = set()
    grace = grace_s
    if optuna_internals.heartbeat_enabled(storage):
        grace = optuna_internals.heartbeat_grace(storage)
        stale = optuna_internals.stale_trial_ids(study)
        # A worker killed between creating its claim and its first heartbeat leaves a trial Optuna never
        # calls stale: such a trial is judged by its age instead.
        beaten = optuna_internals.trials_that_beat(storage, [optuna_internals.trial_id(t) for t in running])
        if beaten is not None:
            never = {optuna_internals.trial_id(t) for t in running if optuna_internals.trial_id(t) not in beaten}
    dead = []
    for t in running:
        worker = t.user_attrs.get("worker")
        if worker is None:
            gone = _age(t) > grace_s
        elif worker == worker_id():
            gone = True  # stamped by this process, which does not hold it (see _HELD)
        else:
            gone = (not worker_alive(worker) or optuna_internals.trial_id(t) in stale
                    or (optuna_internals.trial_id(t) in never and _age(t) > grace))
        if gone:
            dead.append(t)
    return dead


def recover_orphans(study: optuna.Study, *, grace_s: float = 120.0) -> list[FrozenTrial]:
    """Fails the RUNNING trials whose worker died (:func:`dead_trials`), which frees their units
    for the next claim (a tuning slot keeps its number, so its retry trains the same
    configuration with the same seed); returns them. Waiting trials left by older releases
    (which queued retries) are failed too: a slot is claimed, never queued."""
    storage = optuna_internals.storage_of(study)
    orphans = []
    for trial in dead_trials(study, grace_s=grace_s):
        worker = trial.user_attrs.get("worker")
        try:  # another worker may be reclaiming the same orphan right now
            trial_id = optuna_internals.trial_id(trial)
            storage.set_trial_user_attr(trial_id, "failed_reason", f"orphaned: worker {worker} died")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        orphans.append(trial)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        try:
            trial_id = optuna_internals.trial_id(trial)
            storage.set_trial_user_attr(trial_id, "failed_reason", "superseded: slots are claimed")
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        except (UpdateFinishedTrialError, RuntimeError):
            continue
    return orphans


def check_compatible(storage: BaseStorage, suite: str, fingerprint: str, *, where: str,
                     settings: dict[str, Any] | None = None) -> None:
    """Refuses to mix results of different settings under one suite name in one store; the refusal
    names the fields that differ (``settings``: the suite's now, against those the store recorded
    for its fingerprint; stores written before settings were recorded: the two fingerprints)."""
    from tlbench.store.settings import changed_fields, stored_settings

    for summary in studies(storage):
        name = StudyName.parse(summary.study_name)
        if name is None or name.suite != suite:
            continue
        stored = summary.user_attrs.get("suite_fingerprint")
        if stored is not None and stored != fingerprint:
            before = stored_settings(storage, suite).get(stored)
            changed = changed_fields(before["settings"], settings) if before and settings is not None else []
            shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
            what = (f"with other settings ({shown})" if changed else
                    f"with other settings (fingerprint {stored}, now {fingerprint})")
            raise ConfigError(
                f"{where}: the store already holds results of suite {suite!r} run {what}; use another --out or "
                f"--storage, or rename the suite")
