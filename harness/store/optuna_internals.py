"""Every use of Optuna's private API, in one place.

tlbench needs a few things Optuna's public API does not offer: to create a trial and stamp it in one
write (a claim), to show a sampler only part of a study (a slot's view), to re-seed a sampler's
random state per slot, and to read a database store's heartbeats. Each private name it uses is
listed here with why; nothing else in tlbench touches one (``tests/test_architecture.py`` checks),
and ``tests/test_optuna_internals.py`` exercises each of them against the installed Optuna, so an
upgrade that moves one fails that test by name instead of changing results. ``pyproject.toml``
accepts the major versions that test has passed on.

Private names used, and why:

- ``Study._storage``, ``Study._study_id``: a claim creates its trial through the storage, with its
  stamp in the same write (``create_new_trial(study_id, template_trial=…)``); workers write
  attributes of trials they hold no ``Trial`` object for.
- ``FrozenTrial._trial_id``: the storage's id of a trial (``number`` counts within a study).
- ``Study._thread_local.cached_all_trials``: ``Study.ask`` clears this cache after creating a trial;
  a claim creates trials without ``ask`` and clears it the same way, so the sampler reads the study
  afresh.
- ``Study._get_trials``: samplers and pruners read a study's trials through it; a slot's view
  overrides it to show the lower slots only.
- ``optuna.Trial(study, trial_id)``: a ``Trial`` handle on a claimed trial, built on the slot's
  view (the constructor is public but documented as not for users).
- ``optuna.samplers._lazy_random_state.LazyRandomState``: each sampler's random state, re-seeded
  from (seed, slot) before every trial.
- ``QMCSampler._find_sample_id``: which point of its sequence a QMC trial gets (Optuna counts them in
  a study attribute that a killed trial has already advanced; tlbench gives slot *k* point *k*). Its
  arguments changed in Optuna 5.
- ``optuna.storages._heartbeat.is_heartbeat_enabled``: whether a storage records heartbeats
  (database stores opened with an interval).
- ``RDBStorage._get_stale_trial_ids``: the running trials whose heartbeat is older than the grace
  period.
- ``_CachedStorage._backend``, ``RDBStorage.grace_period``: that grace period.
- ``RDBStorage.scoped_session``, ``optuna.storages._rdb.models.TrialHeartbeatModel``: which running
  trials have ever recorded a heartbeat (a worker killed before its first beat leaves a trial Optuna
  never calls stale).
- ``optuna.storages.journal._storage.JournalOperation``: the operation codes a journal line may
  carry, to tell a damaged line from a record.

A trial that another worker failed meanwhile (it judged this worker dead) makes ``Study.tell`` raise;
:func:`finished_elsewhere` recognises that case from the trial's stored state, not from the error's
text.
"""

from __future__ import annotations

from collections.abc import Container, Iterator
from typing import Any

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

#: The operation codes of journal lines (Optuna's ``JournalOperation``).
JOURNAL_OPS = frozenset(int(op) for op in JournalOperation)


def storage_of(study: Any) -> BaseStorage:
    """The storage behind a study (or behind a view of one)."""
    return study._storage


def study_id(study: Any) -> int:
    return study._study_id


def trial_id(trial: FrozenTrial | optuna.Trial) -> int:
    """The storage's id of a trial."""
    return trial._trial_id


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial:
    storage = storage_of(study)
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id(study), number))


def create_trial(study: optuna.Study, template: FrozenTrial) -> int:
    """A new trial made from ``template`` (state, user attributes) in one write; its id."""
    return storage_of(study).create_new_trial(study_id(study), template_trial=template)


def forget_cached_trials(study: optuna.Study) -> None:
    """Makes the study read its trials afresh, as ``Study.ask`` does after creating one."""
    study._thread_local.cached_all_trials = None


def trial_on(view: Any, trial_id_: int) -> optuna.Trial:
    """A ``Trial`` handle on trial ``trial_id_``, whose sampler and pruner see ``view`` (a :class:`StudyView`)."""
    return optuna.Trial(view, trial_id_)


class StudyView:
    """A study as a sampler and a pruner see it, with some trials hidden or renumbered: subclasses say
    which in :meth:`visible`. Everything else is the study's own."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    @property
    def study(self) -> optuna.Study:
        return self._study

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def visible(self, trials: list[FrozenTrial], *, deepcopy: bool) -> list[FrozenTrial]:
        raise NotImplementedError

    def _get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None,
                    use_cache: bool = False) -> list[FrozenTrial]:
        return self.visible(self._study._get_trials(deepcopy=False, states=states, use_cache=use_cache),
                            deepcopy=deepcopy)

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        return self._get_trials(deepcopy=deepcopy, states=states)

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()


def random_states(sampler: Any, seen: set[int] | None = None) -> Iterator[np.random.RandomState]:
    """Every random state inside a sampler, its nested samplers' included."""
    seen = seen if seen is not None else set()
    if id(sampler) in seen:
        return
    seen.add(id(sampler))
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            yield value.rng
        elif isinstance(value, optuna.samplers.BaseSampler):
            yield from random_states(value, seen)


class QMCAtIndex:
    """Mixin for :class:`optuna.samplers.QMCSampler`: a trial gets the point :meth:`qmc_index` of the
    sequence, not the next one Optuna counted."""

    def qmc_index(self) -> int:
        raise NotImplementedError

    def _find_sample_id(self, study: optuna.Study, *args: Any, **kwargs: Any) -> int:
        return self.qmc_index()


def heartbeat_enabled(storage: BaseStorage) -> bool:
    return is_heartbeat_enabled(storage)


def stale_trial_ids(study: optuna.Study) -> set[int]:
    """The running trials of ``study`` whose heartbeat is older than the grace period (heartbeat stores)."""
    return set(storage_of(study)._get_stale_trial_ids(study_id(study)))  # type: ignore[attr-defined]


def heartbeat_grace(storage: BaseStorage) -> float:
    """Seconds after its last heartbeat a running trial is stale (heartbeat stores)."""
    backend = getattr(storage, "_backend", storage)
    interval = storage.get_heartbeat_interval()  # type: ignore[attr-defined]
    return float(getattr(backend, "grace_period", None) or 2 * interval)


def trials_that_beat(storage: BaseStorage, trial_ids: list[int]) -> set[int] | None:
    """Those of ``trial_ids`` that have ever recorded a heartbeat; None when the storage cannot say."""
    backend = getattr(storage, "_backend", storage)
    if not trial_ids or not hasattr(backend, "scoped_session"):
        return None
    try:
        from optuna.storages._rdb import models

        session = backend.scoped_session()
        try:
            rows = session.query(models.TrialHeartbeatModel.trial_id).filter(
                models.TrialHeartbeatModel.trial_id.in_(trial_ids)).all()
        finally:
            backend.scoped_session.remove()
        return {row[0] for row in rows}
    except Exception:  # noqa: BLE001 - another storage layout: rely on the stale list only
        return None


def finished_elsewhere(study: optuna.Study, trial: FrozenTrial | optuna.Trial, err: BaseException) -> bool:
    """Whether ``err``, raised while this worker finished ``trial``, means another worker finished it
    first (it judged this worker dead and failed the trial): the trial is no longer running."""
    if isinstance(err, UpdateFinishedTrialError):
        return True
    if not isinstance(err, ValueError):
        return False
    try:
        return storage_of(study).get_trial(trial_id(trial)).state != TrialState.RUNNING
    except Exception:  # noqa: BLE001 - the store cannot say: not this case
        return False
