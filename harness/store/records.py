"""What the store holds, as typed, versioned records, and how it is read back.

Each cell (task × backbone × strategy) of a suite has a tuning study and an evaluation
study, named by :class:`StudyName`. An evaluation run is a trial of the latter whose
``record`` user attribute is a :class:`RunRecord` (stored as a plain mapping with its
``schema_version``); a tuning study carries its search :class:`Protocol`. Reports read
the store only through this module, so they never depend on how records are written.

Schema versions: 1 — records written before versioning (one flat mapping, a strategy's own
facts mixed in with the metrics); 2 — those facts under ``strategy_info``; 3 — the feature
pass charged as ``feature_seconds``, inference timed as a median after a warm-up, the tuning
compute (``tuning_compute``) and sensitivity-study facts (``sensitivity``); 4 — how image inputs
were produced (``image_inputs``); 5 — the fields grouped (``cell``, ``tuning`` with its
:class:`~tlbench.core.budget.Budget`, ``metrics``, ``costs``, ``data``, ``provenance``). Older
records are read as version 5 (``feature_seconds`` None where not recorded); the runs frame's
columns are the same for all. A record of a newer schema than this release knows is refused with
one line naming it (an older tlbench reading a newer record says to upgrade instead of calling
the new field malformed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import optuna
from optuna.storages import BaseStorage
from optuna.trial import TrialState
from pydantic import ValidationError, model_validator

from tlbench.core.budget import Budget
from tlbench.core.errors import TlbenchError
from tlbench.core.frozen import Frozen

if TYPE_CHECKING:  # pandas is imported where frames are made: status and claims read without it
    import pandas as pd

SCHEMA_VERSION = 5
M = TypeVar("M", bound=Frozen)
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


def plan_study(suite: str) -> str:
    """The study a suite's stored plans, settings and timings live in (``StudyName.parse`` ignores it:
    no results)."""
    return f"{suite}{SEP}plan"


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
    budget: Budget
    objective: str
    weight_decay: str | None = None  # which parameters decay (None: a store from before it was recorded)
    pruner_reduction_factor: int | None = None  # successive halving and Hyperband
    LATER_FIELDS = ("pruner_reduction_factor",)  # left out while None: older releases read these stores

    @model_validator(mode="before")
    @classmethod
    def _stored_budget(cls, data: Any) -> Any:
        """Protocols stored before the budget had its type: ``budget`` the trials that count, and
        ``budget_epochs`` beside it for an epochs budget."""
        if isinstance(data, dict) and not isinstance(data.get("budget"), (dict, Budget)) and "budget" in data:
            data = dict(data)
            data["budget"] = Budget.stored(data["budget"], epochs=data.pop("budget_epochs", None))
        return data


class CellFacts(Frozen):
    """Which cell a run belongs to and what it was run from: the suite (and a hash of its settings),
    the task (and its split's facts), the backbone (and its weights) and the strategy (and its origin:
    tlbench, or a plugin's file and hash or distribution and version)."""

    suite: str
    task: str
    backbone: str
    strategy: str
    strategy_origin: str = "tlbench"
    suite_fingerprint: str
    backbone_weights: str
    task_info: dict[str, Any] = {}


class TuningFacts(Frozen):
    """How the configuration a run trained was found: the budget, the best trial, what tuning spent."""

    budget: Budget
    best_val_accuracy: float | None = None
    best_trial: int | None = None
    trials_complete: int = 0
    trials_pruned: int = 0
    seconds: float = 0.0
    #: Backbone epochs of training the counted trials spent (a forward and backward pass of the
    #: cell's backbone over the training split; None: not recorded).
    compute: float | None = None
    seeds: str = ""  # the tuning trials' training seeds, ``first..last``
    best_trial_seed: int | None = None


class RunContext(Frozen):
    """What every evaluation run of a cell shares: the cell and its tuning; for a run of a sensitivity
    study, what it varied: ``varied`` (hyperparameter → the value set), ``tuned`` (their tuned values)
    and ``base`` (a digest of the tuned configuration varied)."""

    cell: CellFacts
    tuning: TuningFacts
    sensitivity: dict[str, Any] | None = None


class Metrics(Frozen):
    test_accuracy: float
    val_accuracy: float
    shifted_test_accuracy: float | None = None


class Costs(Frozen):
    """What a run cost to train and to use."""

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


class DataFacts(Frozen):
    """The data a run saw, and how its inputs were produced."""

    n_train: int
    n_val: int
    n_test: int
    num_classes: int
    split_fingerprint: str
    #: "cache" (decoded once into the image cache and read from it), "files" (decoded from the files
    #: as read), "cache+files", "features" (it read cached backbone features only), or "" (tensors,
    #: or a record written before schema 4).
    image_inputs: str = ""
    loader_workers: int = 0  # DataLoader workers that decoded files (0: none read)


class Provenance(Frozen):
    """Where and how a run ran."""

    started_at: str
    tlbench_version: str
    torch_version: str
    git_commit: str
    device: str
    host: str
    precision: str = "fp32"
    channels_last: bool = False
    compiled: bool = False
    #: how many seeds' runs trained side by side as one vectorised model, this one included (1: alone)
    vectorised: int = 1


#: The groups of a record and of its context, each a typed block.
GROUPS: dict[str, type[Frozen]] = {"cell": CellFacts, "tuning": TuningFacts, "metrics": Metrics, "costs": Costs,
                                   "data": DataFacts, "provenance": Provenance}
#: The fields every record has outside the groups.
OWN_FIELDS = ("schema_version", "seed", "params", "chosen", "sensitivity", "strategy_info")


def _flat_name(group: str, field: str) -> str:
    """A grouped field's name as a column of the runs frame (and as records before schema 5 stored it)."""
    return f"tuning_{field}" if group == "tuning" else field


#: column name → (group, field): how records before schema 5 stored each field (flat), and the runs frame's columns.
FLAT: dict[str, tuple[str, str]] = {_flat_name(g, f): (g, f) for g, block in GROUPS.items() for f in block.model_fields}


class RunRecord(RunContext):
    """One evaluation run: the best configuration re-trained on one fresh seed — its scores
    (``metrics``), its cost (``costs``), the data it saw (``data``) and its provenance — in the
    context of its cell (``cell``, ``tuning``). ``strategy_info`` holds the strategy's own facts (a
    distillation's teacher, an ensemble's members), apart from the metrics."""

    schema_version: int = SCHEMA_VERSION
    seed: int
    params: dict[str, Any]
    #: Hyperparameters the strategy chose after training, on validation data (``Predictor.choose``).
    chosen: dict[str, Any] = {}
    metrics: Metrics
    costs: Costs
    data: DataFacts
    provenance: Provenance
    strategy_info: dict[str, Any] = {}

    @classmethod
    def columns(cls) -> list[str]:
        """The runs frame's columns a record fills (a strategy's facts add their own)."""
        return [*(f for f in OWN_FIELDS if f != "strategy_info"), *FLAT, "tuning_budget_epochs"]

    def row(self) -> dict[str, Any]:
        """The record as one row of the runs frame: every group's fields as columns (the tuning
        facts prefixed ``tuning_``; the budget as ``tuning_budget``, the trials that count, and
        ``tuning_budget_epochs``), and ``strategy_info`` spread into columns (they cannot shadow a
        field: :meth:`from_stored` and the strategies keep them apart)."""
        data: dict[str, Any] = {"schema_version": self.schema_version, "seed": self.seed, "params": self.params,
                                "chosen": self.chosen, "sensitivity": self.sensitivity}
        for group in GROUPS:
            for field, value in getattr(self, group).model_dump().items():
                data[_flat_name(group, field)] = value
        budget = self.tuning.budget
        data["tuning_budget"], data["tuning_budget_epochs"] = budget.cap, budget.epochs
        return {**data, **{k: v for k, v in self.strategy_info.items() if k not in data}}

    @classmethod
    def from_stored(cls, data: dict[str, Any], *, where: str = "") -> "RunRecord":
        """Reads a stored record of any schema this release knows."""
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise StoreError(f"{where or 'store'}: holds records of schema version {version}; this tlbench "
                             f"({_version()}) reads versions 1..{SCHEMA_VERSION}: upgrade tlbench to read it")
        if version < 5:
            data = _nested(data, version)
        return validate_stored(cls, data, what="a run record", where=where)


def validate_stored(model: type[M], data: dict[str, Any], *, what: str, where: str = "") -> M:
    """``data`` as a ``model`` (a record kind of the store), or one :class:`StoreError` line naming
    where it is and its first malformed field."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        raise StoreError(f"{where or 'store'}: {what} is malformed ({'.'.join(map(str, first['loc']))}: "
                         f"{first['msg']})") from None


def _nested(flat: dict[str, Any], version: int) -> dict[str, Any]:
    """A record of schema 1–4 (one flat mapping) in the grouped form. Schema 1 mixed a strategy's
    own facts in with the fields: everything that is not a field is the strategy's. Schemas 2 and 3
    lack ``feature_seconds`` (None: not recorded) and ``image_inputs`` ("")."""
    known = set(FLAT) | set(OWN_FIELDS)
    nested: dict[str, Any] = {group: {} for group in GROUPS}
    for key, value in flat.items():
        if key in FLAT:
            group, field = FLAT[key]
            nested[group][field] = Budget.stored(value) if (group, field) == ("tuning", "budget") else value
        elif key in OWN_FIELDS:
            nested[key] = value
    if version == 1:
        nested["strategy_info"] = {k: v for k, v in flat.items() if k not in known}
    nested["schema_version"] = SCHEMA_VERSION
    return nested


def _version() -> str:
    from tlbench.core.version import __version__

    return __version__


def studies(storage: BaseStorage) -> list[Any]:
    """Every study of a store (``FrozenStudy``: its name and attributes), in creation order, without reading a
    trial: ``optuna.get_all_study_summaries`` deep-copies every trial of every study to count them (half a second
    on the quick suite's store, and a report asked six times)."""
    return storage.get_all_studies()


def _stored_records(storage: BaseStorage, suite: str | None, kind: Kind):
    """Per study of ``kind`` (of ``suite``, or all): its summary and its completed trials'
    records, in trial order."""
    for summary in studies(storage):
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
    import pandas as pd

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
    import pandas as pd

    return pd.DataFrame(rows)


def read_protocol(attrs: dict[str, Any], *, where: str) -> Protocol:
    """A tuning study's protocol; one line if it is missing or malformed."""
    try:
        return Protocol.model_validate(attrs["protocol"])
    except (KeyError, ValidationError) as err:
        raise StoreError(f"{where}: the tuning protocol is missing or malformed ({type(err).__name__}); "
                         f"was this store written by tlbench?") from None
