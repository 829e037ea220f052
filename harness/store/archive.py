"""Moving a cell's studies aside, so that an edited plugin strategy can rerun into the same store.

An archived study keeps every trial and attribute under ``<study name>@<tag>``, a name
:meth:`tlbench.store.records.StudyName.parse` does not read as a tlbench study: reports, claims and
``tlbench status`` no longer see it, and nothing is deleted that was not first copied. The move is
three steps (copy, mark the copy complete, delete the original), and a move killed at any point is
finished by calling it again: an unmarked copy is made again, a marked one is kept.
"""

from __future__ import annotations

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tlbench.core.errors import ConfigError
from tlbench.store.claims import recover_orphans
from tlbench.store.records import studies

#: User attribute of a complete archive copy: the name of the study it was copied from.
ARCHIVED_FROM = "archived_from"


def archive_name(study_name: str, tag: str) -> str:
    return f"{study_name}@{tag}"


def archive_study(storage: BaseStorage, study_name: str, tag: str) -> str:
    """Moves ``study_name`` to :func:`archive_name` and returns that name. Refuses (one line) while a
    live worker runs one of its trials; trials of dead workers are failed first, as any worker would."""
    target = archive_name(study_name, tag)
    names = set(optuna.get_all_study_names(storage))
    if study_name not in names:
        return target
    study = optuna.load_study(study_name=study_name, storage=storage)
    recover_orphans(study)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if running:
        workers = sorted({str(t.user_attrs.get("worker", "?")) for t in running})
        raise ConfigError(f"{study_name}: {len(running)} trial(s) still run in worker(s) {', '.join(workers)}; "
                          f"stop the workers of this store before rerunning an edited strategy")
    if target in names:
        copy = optuna.load_study(study_name=target, storage=storage)
        if copy.user_attrs.get(ARCHIVED_FROM) != study_name:  # a copy cut short: make it again
            optuna.delete_study(study_name=target, storage=storage)
            names.discard(target)
    if target not in names:
        optuna.copy_study(from_study_name=study_name, from_storage=storage, to_storage=storage, to_study_name=target)
        optuna.load_study(study_name=target, storage=storage).set_user_attr(ARCHIVED_FROM, study_name)
    optuna.delete_study(study_name=study_name, storage=storage)
    return target


def archived_studies(storage: BaseStorage) -> dict[str, str]:
    """Every complete archive in the store: its name → the study it was moved from."""
    out = {}
    for summary in studies(storage):
        source = summary.user_attrs.get(ARCHIVED_FROM)
        if isinstance(source, str) and summary.study_name.startswith(source + "@"):
            out[summary.study_name] = source
    return out
