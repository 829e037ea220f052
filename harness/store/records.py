"""What the store holds, as typed, versioned records, and how it is read back.

Each cell (task × backbone × strategy) of a suite has a tuning study and an evaluation
study, named by :class:`StudyName`. An evaluation run is a trial of the latter whose
``record`` user attribute is a :class:`RunRecord` (stored as a plain mapping with its
``schema_version``); a tuning study carries its search :class:`Protocol`. Reports read
the store only through this module, so they never depend on how records are written.

Schema versions: 1 — records written before versioning (one flat mapping, a strategy's own
facts mixed in with the metrics); 2 — those facts under ``strategy_info``; 3 — the feature
pass charged as ``feature_seconds``, inference timed as a median after a warm-up, the tuning
compute (``tuning_compute``) and sensitivity-study facts (``sensitivity``). Older
records are read as version 3 (``feature_seconds`` None: not recorded); a record of a newer
schema than this release knows is refused with one line naming it (an older tlbench reading a
version-3 record says to upgrade instead of calling the new field malformed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import optuna
import pandas as pd
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from pydantic import ValidationError

from tlbench.core.errors import TlbenchError
from tlbench.core.frozen import Frozen

SCHEMA_VERSION = 4
SEP = "::"
Kind = Literal["tune", "eval", "sens"]  # tuning, evaluation, sensitivity study


class StoreError(TlbenchError):
    """A store this release cannot read (a newer schema, or a malformed record)."""


@dataclass(frozen=True, order=True)
class StudyName:
    """``suite::task::backbone::strategy::kind``: the one place study names are built and
    parsed (names of the suite file are restricted so that they cannot contain ``::``)."""

    suite: str
    task: str
    backbone: str
    strategy: str
    kind: Kind

    def __str__(self) -> str:
        return SEP.join((self.suite, self.task, self.backbone, self.strategy, self.kind))

    @classmethod
    def parse(cls, name: str) -> "StudyName | None":
        """The parts of a tlbench study name; None for any other study in the store."""
        parts = name.split(SEP)
        if len(parts) != 5 or parts[4] not in ("tune", "eval", "sens") or not all(parts):
            return None
        return cls(*parts)  # type: ignore[arg-type]

    @property
    def cell(self) -> tuple[str, str, str]:
        return self.task, self.backbone, self.strategy


def suites_in(storage: BaseStorage) -> list[str]:
    """The suites a store holds studies of."""
    names = (StudyName.parse(n) for n in optuna.get_all_study_names(storage))
    return sorted({n.suite for n in names if n is not None})


class Protocol(Frozen):
    """How a suite's cells were tuned: identical for every strategy of the suite."""

    sampler: str
    n_startup_trials: int
    pruner: str
    pruner_startup_trials: int
    pruner_warmup_epochs: int
    budget: int  # finished trials per cell; with an epochs budget, the most trials that count
    objective: str
    weight_decay: str | None = None  # which parameters decay (None: a store from before it was recorded)
    budget_epochs: float | None = None  # an epochs budget: backbone epochs of training per cell


class RunContext(Frozen):
    """What every evaluation run of a cell shares: the cell, its tuning, the backbone's
    weights and the task's split facts."""

    suite: str
    task: str
    backbone: str
    strategy: str
    strategy_origin: str = "tlbench"  # a plugin's file and hash, or distribution and version
    tuning_best_val_accuracy: float | None = None
    tuning_best_trial: int | None = None
    tuning_trials_complete: int = 0
    tuning_trials_pruned: int = 0
    tuning_seconds: float = 0.0
    tuning_budget: int
    tuning_seeds: str
    tuning_best_trial_seed: int | None = None
    # Backbone epochs of training the counted tuning trials spent (a forward and backward
    # pass of the cell's backbone over the training split; None: not recorded).
    tuning_compute: float | None = None
    suite_fingerprint: str
    backbone_weights: str
    task_info: dict[str, Any] = {}
    # A run of a sensitivity study: ``varied`` (hyperparameter → the value set), ``tuned``
    # (their tuned values) and ``base`` (a digest of the tuned configuration varied).
    sensitivity: dict[str, Any] | None = None


class RunRecord(RunContext):
    """One evaluation run: the best configuration re-trained on one fresh seed, its scores,
    its cost and its provenance. ``strategy_info`` holds the strategy's own facts (a
    distillation's teacher, an ensemble's members), apart from the metrics."""

    schema_version: int = SCHEMA_VERSION
    seed: int
    params: dict[str, Any]
    test_accuracy: float
    val_accuracy: float
    shifted_test_accuracy: float | None = None
    train_seconds: float  # own training time plus that of every reused model
    own_train_seconds: float
    #: The frozen backbone's pass over the splits a strategy trains on from cached features
    #: (a linear probe's, LP-FT's), as long as it took when computed: charged alike to every run
    #: of the cell, cached or not, and left out of the train seconds. 0: no such pass; None: a
    #: record written before it was charged (its train seconds include the pass when it ran it).
    feature_seconds: float | None = None
    trainable_parameters: int
    inference_parameters: int
    inference_seconds: float
    inference_ms_per_example: float
    peak_memory_mb: float | None = None
    memory_growth_mb: float | None = None
    peak_memory_kind: str = ""
    n_train: int
    n_val: int
    n_test: int
    num_classes: int
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    loader_workers: int = 0
    #: How the run's image inputs were produced: "cache" (decoded once into the image cache and
    #: read from it), "files" (decoded from the files as read), "cache+files", "features" (it read
    #: cached backbone features only), or "" (tensors, or a record written before schema 4).
    image_inputs: str = ""
    split_fingerprint: str
    started_at: str
    tlbench_version: str
    torch_version: str
    git_commit: str
    device: str
    host: str
    strategy_info: dict[str, Any] = {}

    def row(self) -> dict[str, Any]:
        """The record as one row of the runs frame: ``strategy_info`` spread into columns
        (they cannot shadow a field: :meth:`from_stored` and the strategies keep them apart)."""
        data = self.model_dump(exclude={"strategy_info"})
        return {**data, **{k: v for k, v in self.strategy_info.items() if k not in data}}

    @classmethod
    def from_stored(cls, data: dict[str, Any], *, where: str = "") -> "RunRecord":
        """Reads a stored record of any schema this release knows."""
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(f"{where or 'store'}: holds records of schema version {version}; this tlbench "
                             f"({_version()}) reads versions 1..{SCHEMA_VERSION}: upgrade tlbench to read it")
        if version == 1:  # flat: everything that is not a field is the strategy's own
            fields = set(cls.model_fields)
            data = {**{k: v for k, v in data.items() if k in fields},
                    "strategy_info": {k: v for k, v in data.items() if k not in fields},
                    "schema_version": SCHEMA_VERSION}
        elif version in (2, 3):  # without feature_seconds (2: None, not recorded) and image_inputs ("")
            data = {**data, "schema_version": SCHEMA_VERSION}
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            raise StoreError(f"{where or 'store'}: a run record is malformed ({'.'.join(map(str, first['loc']))}: "
                             f"{first['msg']})") from None


def _version() -> str:
    from tlbench.core.version import __version__

    return __version__


def _stored_records(storage: BaseStorage, suite: str | None, kind: Kind):
    """Per study of ``kind`` (of ``suite``, or all): its summary and its completed trials'
    records, in trial order."""
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        name = StudyName.parse(summary.study_name)
        if name is None or name.kind != kind or (suite is not None and name.suite != suite):
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number)
        yield summary, [RunRecord.from_stored(dict(t.user_attrs["record"]), where=f"study {name}")
                        for t in trials if "record" in t.user_attrs]


def load_runs(storage: BaseStorage, suite: str | None = None) -> pd.DataFrame:
    """All completed evaluation runs as a tidy frame (one row per run): only runs of each
    cell's current best configuration, one per seed (two workers racing for a seed may both
    have finished it: the first one counts)."""
    rows: list[dict[str, Any]] = []
    for summary, records in _stored_records(storage, suite, "eval"):
        if not records:
            continue
        current = summary.user_attrs.get("params", records[-1].params)
        seen: set[int] = set()
        for record in records:
            if record.params == current and record.seed not in seen:
                seen.add(record.seed)
                rows.append(record.row())
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["suite", "task", "backbone", "strategy", "seed"], ignore_index=True)
    return frame


def load_sensitivity(storage: BaseStorage, suite: str | None = None) -> pd.DataFrame:
    """The runs of every sensitivity study as a tidy frame, one row per run, with a column
    per varied hyperparameter (``varied:<name>``) and its tuned value (``tuned:<name>``);
    only runs around each cell's current tuned configuration, one per value and seed."""
    rows: list[dict[str, Any]] = []
    for summary, records in _stored_records(storage, suite, "sens"):
        base = summary.user_attrs.get("base")
        seen: set[tuple[str, int]] = set()
        for record in records:
            sens = record.sensitivity or {}
            key = (repr(sorted(sens.get("varied", {}).items())), record.seed)
            if sens.get("base") != base or key in seen:
                continue
            seen.add(key)
            row = record.row()
            row.update({f"varied:{k}": v for k, v in sens.get("varied", {}).items()})
            row.update({f"tuned:{k}": v for k, v in sens.get("tuned", {}).items()})
            rows.append(row)
    return pd.DataFrame(rows)


def read_protocol(attrs: dict[str, Any], *, where: str) -> Protocol:
    """A tuning study's protocol; one line if it is missing or malformed."""
    try:
        return Protocol.model_validate(attrs["protocol"])
    except (KeyError, ValidationError) as err:
        raise StoreError(f"{where}: the tuning protocol is missing or malformed ({type(err).__name__}); "
                         f"was this store written by tlbench?") from None
