"""Transferability scores in the store: a record kind of its own beside the evaluation runs.

Each task × backbone of a suite with a ``model_selection:`` block has one study,
``suite::task::backbone::select`` (four parts, so :class:`~tlbench.store.records.StudyName`
and everything that reads cells pass it by). Each of its trials is one unit of work — the
scorers the pair still lacks, scored together — claimed like an evaluation seed
(:func:`tlbench.store.claims.claim`): a worker killed while scoring leaves a RUNNING trial that
the next worker fails and redoes, and two workers never score the same unit. A finished unit's
``scores`` user attribute is a list of :class:`ScoreRecord` (``schema_version`` 1), one per
scorer: its values over the scorer's seeds, the seconds each took, and what the score was
computed on. A scorer is done for a pair once a finished unit holds its record with its current
code, so adding a scorer (or editing a plugin's) later scores only it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from tlbench.core.frozen import Frozen
from tlbench.store.records import SEP, StoreError, studies, validate_stored

if TYPE_CHECKING:
    import pandas as pd

SCORE_SCHEMA_VERSION = 1
KIND = "select"


def score_study_name(suite: str, task: str, backbone: str) -> str:
    return SEP.join((suite, task, backbone, KIND))


def parse_score_study(name: str) -> tuple[str, str, str] | None:
    """(suite, task, backbone) of a score study's name; None for any other study."""
    parts = name.split(SEP)
    if len(parts) != 4 or parts[3] != KIND or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


class ScoreRecord(Frozen):
    """One scorer on one backbone and task: its value per scorer seed (empty when skipped)."""

    schema_version: int = SCORE_SCHEMA_VERSION
    suite: str
    task: str
    backbone: str
    scorer: str
    scorer_origin: str = "tlbench"
    higher_is_better: bool
    definition: str
    seeds: list[int]
    values: list[float]
    seconds: list[float]  # each seed's scoring time (the feature pass not included)
    skipped: str = ""  # why there is no value (the inputs the backbone lacks)
    feature_seconds: float  # the cached feature pass on train + val, as computed
    n_train: int
    n_val: int
    num_classes: int
    feature_dim: int
    split_fingerprint: str
    weights_id: str
    code_version: str
    started_at: str

    @classmethod
    def from_stored(cls, data: Any, *, where: str) -> ScoreRecord:
        if not isinstance(data, dict):
            raise StoreError(f"{where}: a score record must be a mapping, got {type(data).__name__}")
        version = data.get("schema_version")
        if isinstance(version, int) and version > SCORE_SCHEMA_VERSION:
            raise StoreError(f"{where}: score record schema {version} is newer than this tlbench reads "
                             f"({SCORE_SCHEMA_VERSION}); upgrade tlbench")
        return validate_stored(cls, data, what="a score record", where=where)


def score_records(storage: BaseStorage, suite: str | None = None) -> list[ScoreRecord]:
    """The store's score records (of ``suite`` only, when given): per task, backbone and scorer the
    latest, so a scorer scored again after its code changed (an edited plugin) is read once, as
    its current code computed it."""
    latest: dict[tuple[str, str, str, str], ScoreRecord] = {}
    for summary in studies(storage):
        parsed = parse_score_study(summary.study_name)
        if parsed is None or (suite is not None and parsed[0] != suite):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            stored = trial.user_attrs.get("scores", [])
            if not isinstance(stored, list):
                raise StoreError(f"{summary.study_name} trial {trial.number}: malformed scores (not a list)")
            for item in stored:  # trials in creation order: a later record replaces an earlier one
                record = ScoreRecord.from_stored(item, where=f"{summary.study_name} trial {trial.number}")
                latest[(record.suite, record.task, record.backbone, record.scorer)] = record
    return list(latest.values())


def score_progress(storage: BaseStorage, suite: str) -> tuple[int, int, int, int] | None:
    """(task × backbone pairs, scores stored, units running, units failed) of ``suite``'s
    scoring; None when it has none (no ``model_selection:`` run yet)."""
    pairs = done = running = failed = 0
    for summary in studies(storage):
        parsed = parse_score_study(summary.study_name)
        if parsed is None or parsed[0] != suite:
            continue
        pairs += 1
        trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials(deepcopy=False)
        scored = {(r.get("scorer"), r.get("code_version")) for t in trials if t.state == TrialState.COMPLETE
                  for r in t.user_attrs.get("scores", []) if isinstance(r, dict)}
        done += len({name for name, _ in scored})  # each scorer once, however often it was scored again
        for trial in trials:
            codes = trial.user_attrs.get("codes") or {}
            if trial.state == TrialState.RUNNING:
                running += 1
            elif (trial.state == TrialState.FAIL and "claim_lost" not in trial.user_attrs
                  and any(name not in {n for n, _ in scored} for name in codes)):
                failed += 1  # a failed unit whose scorers no finished unit has scored since
    return (pairs, done, running, failed) if pairs else None


def _named(storage: BaseStorage, suite: str | None, attr: str) -> list[str] | None:
    named: list[str] = []
    for summary in studies(storage):
        parsed = parse_score_study(summary.study_name)
        if parsed is None or (suite is not None and parsed[0] != suite):
            continue
        for name in summary.user_attrs.get(attr) or []:
            if name not in named:
                named.append(name)
    return named or None


def ground_truth(storage: BaseStorage, suite: str | None = None) -> list[str] | None:
    """The ground-truth strategies the suite's ``model_selection:`` named (stored on its score
    studies by the latest run); None when it named none (every strategy is then a ground truth)."""
    return _named(storage, suite, "ground_truth")


def scorers_named(storage: BaseStorage, suite: str | None = None) -> list[str] | None:
    """The scorers the suite's latest run scored (a scorer dropped from the suite's list, or whose
    plugin is gone, is no longer shown); None for stores that did not record them."""
    return _named(storage, suite, "scorers")


def load_scores(storage: BaseStorage, suite: str | None = None) -> pd.DataFrame:
    """One row per (suite, task, backbone, scorer, seed) with its value and seconds, for the
    scorers the suite's latest run named; a skipped unit is one row with no value and its reason."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    shown = scorers_named(storage, suite)
    for r in score_records(storage, suite):
        if shown is not None and r.scorer not in shown:
            continue
        base = {"suite": r.suite, "task": r.task, "backbone": r.backbone, "scorer": r.scorer,
                "scorer_origin": r.scorer_origin, "higher_is_better": r.higher_is_better,
                "definition": r.definition, "skipped": r.skipped, "feature_seconds": r.feature_seconds,
                "n_train": r.n_train, "n_val": r.n_val, "num_classes": r.num_classes,
                "feature_dim": r.feature_dim, "weights_id": r.weights_id}
        if not r.values:
            rows.append({**base, "seed": None, "value": None, "seconds": None})
        for seed, value, seconds in zip(r.seeds, r.values, r.seconds):
            rows.append({**base, "seed": seed, "value": value, "seconds": seconds})
    columns = ["suite", "task", "backbone", "scorer", "seed", "value", "seconds", "skipped", "higher_is_better",
               "definition", "scorer_origin", "feature_seconds", "n_train", "n_val", "num_classes", "feature_dim",
               "weights_id"]
    return pd.DataFrame(rows, columns=columns)
