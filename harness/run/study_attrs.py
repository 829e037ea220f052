"""What a run writes on its studies besides their trials: attributes every worker writes alike
(written only when they differ), and a plugin strategy's code digest, so that runs of an edited
plugin are refused rather than mixed with the old code's in one cell.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage

from tlbench.core.errors import ConfigError
from tlbench.run.plan import Cell, Plan
from tlbench.store.records import StudyName, studies
from tlbench.strategies import STRATEGIES


def check_plugin_code(storage: BaseStorage, plan: Plan, *, rerun_edited: bool = False,
                      log: Callable[[str], None] | None = None) -> None:
    """Before anything runs: no plugin strategy of the plan has studies in the store written
    by other code of that plugin, so runs of an edited plugin are never mixed with the old
    code's in one cell (one line, instead of silently counting old seeds as done).

    With ``rerun_edited`` those studies are moved aside instead (:func:`tlbench.store.archive.archive_study`,
    tagged with the old code's digest): the edited strategy's cells run afresh in the same store and
    every other strategy's results stay as they are."""
    plugin_cells = {(c.task, c.backbone, c.strategy): c for c in plan.cells if STRATEGIES.source(c.strategy)}
    if not plugin_cells:
        return
    edited = []
    for summary in studies(storage):
        name = StudyName.parse(summary.study_name)
        if name is None or name.suite != plan.suite.name or name.cell not in plugin_cells:
            continue
        cell = plugin_cells[name.cell]
        stored, source = summary.user_attrs.get("strategy_source"), STRATEGIES.source(cell.strategy)
        if stored is not None and stored != source:
            if not rerun_edited:
                raise ConfigError(f"{plan.suite.path}: {cell.label}: the store holds runs of {cell.strategy!r} from "
                                  f"other plugin code ({_changed(summary.user_attrs.get('strategy_files'), cell.strategy)}"
                                  f"code digest {stored}, now {source}; {_where(cell.strategy)}); rerun it "
                                  f"into this store with --rerun-edited (the old code's results are kept aside, "
                                  f"every other strategy's reused), or use another --out or --storage, or rename "
                                  f"the strategy")
            edited.append((summary.study_name, str(stored)))
    from tlbench.store.archive import archive_study

    for study_name, stored in edited:
        moved = archive_study(storage, study_name, stored[:12])
        if log is not None:
            log(f"edited plugin code: moved {study_name} aside to {moved}; its cell runs again")


def _where(strategy: str) -> str:
    """Where a plugin strategy comes from, without the origin's own file hash (the refusal already shows the
    code digest the store compares)."""
    return STRATEGIES.origin(strategy).split(" (sha256 ")[0]


def _changed(stored: object, strategy: str) -> str:
    """Which files of a plugin's code differ from the stored ones (``a.py changed; b.py is new; ``), when the
    store recorded them file by file."""
    if not isinstance(stored, dict):
        return ""
    now = STRATEGIES.files(strategy)
    changed = [f"{name} changed" for name in sorted(set(stored) & set(now)) if stored[name] != now[name]]
    changed += [f"{name} is new" for name in sorted(set(now) - set(stored))]
    changed += [f"{name} is gone" for name in sorted(set(stored) - set(now))]
    return "; ".join(changed) + "; " if changed else ""


def remember_plugin_code(study: optuna.Study, cell: Cell) -> None:
    """Stores a plugin strategy's code digest (and its files' digests) on its study, for
    :func:`check_plugin_code` to compare the next run against."""
    source = STRATEGIES.source(cell.strategy)
    if source is not None:
        set_changed_attrs(study, {"strategy_source": source, "strategy_files": STRATEGIES.files(cell.strategy)})


def set_changed_attrs(study: optuna.Study, attrs: dict[str, Any]) -> None:
    """Sets a study's attributes that differ from the stored ones (every worker opening the
    study writes the same values; unchanged ones are not written again)."""
    stored = study.user_attrs
    for key, value in attrs.items():
        if stored.get(key) != value:
            study.set_user_attr(key, value)
