"""Keeping the store sound under several workers and crashes.

One Optuna storage URL holds every tuning trial and evaluation run (opened by
:mod:`tlbench.storage`; what they hold: :mod:`tlbench.records`). Journal storage has no
heartbeat, so trials are stamped with the worker that runs them and a RUNNING trial whose
worker is dead is failed on resume.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from pathlib import Path

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.errors import ConfigError
from tlbench.records import StudyName


def _proc_start(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time since boot


@functools.lru_cache(maxsize=1)
def worker_id() -> str:
    """host:pid:start-time of this process; unique even when a pid is reused."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_proc_start(pid) or dt.datetime.now().timestamp()}"


def worker_alive(worker: str) -> bool:
    """Whether the process that stamped a trial still runs. Workers on other hosts cannot
    be checked and count as alive; without /proc only the pid is checked."""
    try:
        host, pid_text, start = worker.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True  # not a stamp of ours: leave it alone
    if host != socket.gethostname():
        return True
    if _proc_start(os.getpid()) is None:  # no /proc (macOS): is the pid in use at all?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _proc_start(pid) == start


def recover_orphans(study: optuna.Study, *, grace_s: float = 120.0) -> list[FrozenTrial]:
    """Fails RUNNING trials whose worker died (or that were never stamped and are older
    than ``grace_s``); returns them so the caller can retry their configuration."""
    orphans = []
    now = dt.datetime.now()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker == worker_id():
            continue
        started = trial.datetime_start or now
        if worker is None and (now - started).total_seconds() < grace_s:
            continue
        if worker is not None and worker_alive(worker):
            continue
        storage = study._storage
        try:  # another worker may be reclaiming the same orphan right now
            storage.set_trial_user_attr(trial._trial_id, "failed_reason", f"orphaned: worker {worker} died")
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        orphans.append(trial)
    return orphans


def check_compatible(storage: BaseStorage, suite: str, fingerprint: str, *, where: str) -> None:
    """Refuses to mix results of different settings under one suite name in one store."""
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        name = StudyName.parse(summary.study_name)
        if name is None or name.suite != suite:
            continue
        stored = summary.user_attrs.get("suite_fingerprint")
        if stored is not None and stored != fingerprint:
            raise ConfigError(
                f"{where}: the store already holds results of suite {suite!r} run with other settings "
                f"(fingerprint {stored}, now {fingerprint}); use another --out or --storage, or rename "
                f"the suite")
