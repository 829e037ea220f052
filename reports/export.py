"""Exporting a store to an experiment tracker: MLflow, TensorBoard, or a lab's own sink.

The store stays the record; an export is a copy of it in a tracker's terms, written from what a
report reads (:func:`tlbench.reports.results.load_results`), so it never trains and never writes to
the store. What is exported is grouped per cell (suite × task × backbone × strategy) as a
:class:`CellExport`: the cell's evaluation runs (:class:`EvaluationRun`, one per seed: the tuned
configuration retrained) and its finished tuning trials (:class:`TuningTrial`: completed, pruned
and failed; a running trial is exported once it has finished).

A sink (:class:`Sink`) is handed one cell at a time and keeps each cell once: a cell is identified
by the store it was read from (:attr:`CellExport.source`: a journal's absolute path, or a database
URL without its password) and its key (its study name without the kind,
``suite::task::backbone::strategy``), and has a digest of its content. A sink skips a cell it
already holds with the same digest and replaces one whose content changed (more seeds, a re-tuned
configuration). Exporting the same store twice therefore writes nothing the second time and never
duplicates a run, while two stores of the same suite (two runs of ``quick``) are kept side by side.

Built in:

- ``mlflow`` (:class:`MlflowSink`, ``pip install 'tlbench[mlflow]'``): one MLflow experiment per
  suite; per cell a parent run (tags ``suite``, ``task``, ``backbone``, ``strategy``; params: the
  tuned configuration and the budget; metrics: the mean and standard deviation over seeds and the
  tuning's cost), and nested under it (tag ``mlflow.parentRunId``) one run per evaluation run
  (params: its hyperparameters and seed; metrics: its accuracies, times and sizes; tags: the cell
  and its provenance) and one run per tuning trial (params: the trial's configuration and seed;
  metrics: its validation accuracy, seconds and compute; status FINISHED, KILLED for a pruned
  trial, FAILED).
- ``tensorboard`` (:class:`TensorBoardSink`, ``pip install 'tlbench[tensorboard]'``): event files,
  one folder per cell (``DEST/suite/task/backbone/strategy``) holding one run per evaluation seed
  (``seed-N``: an HParams session with the cell, hyperparameters and seed, and its metrics as
  scalars) and a ``tuning`` run whose scalars are indexed by trial number (trials as steps).

A lab plugs its own sink in with an entry point in the group ``tlbench.sinks`` naming a
:class:`Sink` subclass; ``tlbench export --to NAME`` finds it by the entry point's name
(:func:`sink_class`: built-ins first, then the group).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import math
import re
import shutil
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pandas as pd

from tlbench.core.errors import ConfigError
from tlbench.reports.results import Results
from tlbench.store.records import SEP, RunRecord

#: The entry-point group a distribution declares its sinks in (``name = "module:SinkClass"``).
SINK_GROUP = "tlbench.sinks"

#: Columns of the runs frame exported as an evaluation run's metrics (when not missing).
RUN_METRICS = ("test_accuracy", "shifted_test_accuracy", "val_accuracy", "train_seconds", "own_train_seconds",
               "feature_seconds", "inference_seconds", "inference_ms_per_example", "trainable_parameters",
               "inference_parameters", "peak_memory_mb", "memory_growth_mb")
#: Columns of the runs frame exported as an evaluation run's tags: where and from what it ran.
RUN_TAGS = ("strategy_origin", "suite_fingerprint", "backbone_weights", "split_fingerprint", "n_train", "n_val",
            "n_test", "num_classes", "image_inputs", "peak_memory_kind", "started_at", "tlbench_version",
            "torch_version", "git_commit", "device", "host", "precision", "channels_last", "compiled", "vectorised")
#: The cell's tuning facts (the same on every run of the cell), exported once per cell as metrics.
TUNING_METRICS = ("tuning_best_val_accuracy", "tuning_trials_complete", "tuning_trials_pruned", "tuning_seconds",
                  "tuning_compute")
#: The trial states that are exported: finished ones (a running or waiting trial is left for a later export).
FINISHED = ("COMPLETE", "PRUNED", "FAIL")
#: The runs frame's columns a record fills; any other is a strategy's own fact (``strategy_info``).
_RECORD_COLUMNS = frozenset(RunRecord.columns())


@dataclass(frozen=True)
class EvaluationRun:
    """One evaluation run: the cell's tuned configuration trained on one evaluation seed and tested."""

    seed: int
    #: the hyperparameters it trained with, and what the strategy chose after training (``chosen.NAME``);
    #: values are numbers, strings or booleans (anything else as its JSON text)
    params: dict[str, Any]
    #: test, shifted-test and validation accuracy, seconds, parameter counts, memory (see :data:`RUN_METRICS`)
    metrics: dict[str, float]
    #: provenance (see :data:`RUN_TAGS`) and a strategy's own facts (``info.NAME``), as text
    tags: dict[str, str]
    started: datetime | None = None


@dataclass(frozen=True)
class TuningTrial:
    """One finished trial of the cell's tuning study."""

    number: int
    slot: int
    state: str  # COMPLETE, PRUNED or FAIL (Optuna's names)
    value: float | None  # validation accuracy: the final one, a pruned trial's last reported, None if it failed
    seed: int | None
    params: dict[str, Any]
    #: ``val_accuracy`` (when it has a value), ``seconds``, ``compute`` (backbone epochs), ``epochs_reported``
    metrics: dict[str, float]
    reason: str | None = None  # why it was pruned or failed
    started: datetime | None = None
    completed: datetime | None = None


@dataclass(frozen=True)
class CellExport:
    """A cell of a suite with everything exported of it: its evaluation runs and tuning trials."""

    suite: str
    task: str
    backbone: str
    strategy: str
    runs: tuple[EvaluationRun, ...] = ()
    trials: tuple[TuningTrial, ...] = ()
    #: the tuned configuration its evaluation runs trained (empty before the cell was evaluated)
    params: dict[str, Any] = field(default_factory=dict)
    #: the tuning's facts as its runs recorded them (see :data:`TUNING_METRICS`, without the ``tuning_`` prefix)
    tuning: dict[str, float] = field(default_factory=dict)
    #: the tuning budget: ``trials`` (the most that count) and, for an epochs budget, ``epochs``
    budget: dict[str, int | float] = field(default_factory=dict)
    #: the store it was read from (a journal's absolute path, a database URL without its password; "": not said)
    source: str = ""

    @property
    def key(self) -> str:
        """The cell's stable identity, ``suite::task::backbone::strategy`` (its studies' names without the kind)."""
        return SEP.join((self.suite, self.task, self.backbone, self.strategy))

    @property
    def label(self) -> str:
        return f"{self.task}/{self.backbone}/{self.strategy}"

    @property
    def tags(self) -> dict[str, str]:
        """The cell as tags: ``suite``, ``task``, ``backbone``, ``strategy``."""
        return {"suite": self.suite, "task": self.task, "backbone": self.backbone, "strategy": self.strategy}

    @property
    def digest(self) -> str:
        """A digest of everything exported of the cell: it changes when the store's content for the cell does."""
        text = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    @property
    def summary(self) -> dict[str, float]:
        """The cell's figures: the mean and standard deviation (over seeds, n - 1 in the denominator; none
        for one seed) of each evaluation metric, the number of seeds and of trials, and the tuning's facts."""
        out: dict[str, float] = {"seeds": float(len(self.runs)), "trials": float(len(self.trials))}
        for metric in ("test_accuracy", "shifted_test_accuracy", "val_accuracy", "train_seconds"):
            values = [run.metrics[metric] for run in self.runs if metric in run.metrics]
            if values:
                mean = sum(values) / len(values)
                out[f"{metric}_mean"] = mean
                if len(values) > 1:
                    out[f"{metric}_std"] = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
        out.update({f"tuning_{name}": value for name, value in self.tuning.items()})
        return out

    @property
    def started(self) -> datetime | None:
        times = [t for t in (*(r.started for r in self.runs), *(t.started for t in self.trials)) if t is not None]
        return min(times) if times else None

    @property
    def ended(self) -> datetime | None:
        times = [t for t in (*(r.started for r in self.runs), *(t.completed or t.started for t in self.trials))
                 if t is not None]
        return max(times) if times else None


@dataclass(frozen=True)
class ExportSummary:
    """What an export did: the cells it wrote, and those the sink already held unchanged."""

    written: tuple[str, ...]  # cell keys
    unchanged: tuple[str, ...]
    runs: int  # evaluation runs of the cells exported (written or unchanged)
    trials: int

    @property
    def cells(self) -> int:
        return len(self.written) + len(self.unchanged)


class Sink(ABC):
    """Where an export goes: a tracker's store, a folder, a lab's database.

    A sink is made with the destination the user gave (``tlbench export … --to NAME DEST``: a path or
    a URI, as the sink reads it), then :meth:`open` is called once, :meth:`write_cell` once per cell,
    and :meth:`close` once (also after an error). A sink keeps each cell once: given a cell it already
    holds (same :attr:`CellExport.source` and :attr:`CellExport.key`) with the same
    :attr:`CellExport.digest` it writes nothing and returns False; with another digest it replaces
    what it held of the cell.

    A subclass registered in the entry-point group ``tlbench.sinks`` is found by the entry point's name.
    """

    #: the name ``--to`` takes (for a plugin, its entry point's name is what counts)
    name: ClassVar[str] = ""
    #: one line for ``tlbench export -h`` and the guide
    description: ClassVar[str] = ""
    #: modules it imports that tlbench does not install by default, checked before anything is read
    requires: ClassVar[tuple[str, ...]] = ()
    #: how to install them: a tlbench extra (``pip install 'tlbench[EXTRA]'``), else the modules themselves
    extra: ClassVar[str | None] = None

    def __init__(self, dest: str) -> None:
        self.dest = dest

    @classmethod
    def missing(cls) -> str | None:
        """Why the sink cannot run here (one line naming what to install), or None."""
        absent = [module for module in cls.requires if importlib.util.find_spec(module) is None]
        if not absent:
            return None
        remedy = f"pip install 'tlbench[{cls.extra}]'" if cls.extra else f"pip install {' '.join(absent)}"
        return f"needs {', '.join(absent)}, which is not installed: {remedy}"

    def open(self) -> None:
        """Called once before the first cell (connect, create the destination)."""

    @abstractmethod
    def write_cell(self, cell: CellExport) -> bool:
        """Writes ``cell``, replacing what the sink held of it; False (and nothing written) when it
        already holds the cell with the same digest."""

    def close(self) -> None:
        """Called once after the last cell, or after an error."""

    def where(self) -> str:
        """Where the export can be looked at, as one line for the user."""
        return self.dest


# ---------------------------------------------------------------------------------------------------------------
# From the report's frames to cells


def _scalar(value: Any) -> Any:
    """A hyperparameter's value as a number, string or boolean (anything else as its JSON text)."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        return value
    if hasattr(value, "item"):  # a numpy scalar
        return _scalar(value.item())
    return json.dumps(value, sort_keys=True, default=str)


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not pd.isna(value)
    except (TypeError, ValueError):  # a list or a mapping
        return True


def _finite(value: Any) -> float | None:
    if not _present(value) or isinstance(value, str):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _time(text: Any) -> datetime | None:
    """A stored time: a run's ``started_at`` (ISO 8601 with its offset) or Optuna's trial times (local, naive)."""
    if not _present(text) or not text:
        return None
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return (moment if moment.tzinfo is not None else moment.astimezone()).astimezone(timezone.utc)


def _evaluation_run(row: dict[str, Any]) -> EvaluationRun:
    params = {name: _scalar(value) for name, value in sorted(dict(row.get("params") or {}).items())}
    chosen = row.get("chosen") if isinstance(row.get("chosen"), dict) else {}
    params.update({f"chosen.{name}": _scalar(value) for name, value in sorted(chosen.items())})
    metrics = {name: number for name in RUN_METRICS if name in row and (number := _finite(row[name])) is not None}
    tags = {name: str(row[name]) for name in RUN_TAGS if name in row and _present(row[name]) and row[name] != ""}
    tags.update({f"info.{name}": str(_scalar(value)) for name, value in sorted(row.items())
                 if name not in _RECORD_COLUMNS and _present(value)})
    return EvaluationRun(seed=int(row["seed"]), params=params, metrics=metrics, tags=tags,
                         started=_time(row.get("started_at")))


def _tuning_trial(row: dict[str, Any]) -> TuningTrial:
    value = _finite(row.get("value"))
    metrics = {"val_accuracy": value} if value is not None else {}
    for name in ("seconds", "compute", "epochs_reported"):
        if (number := _finite(row.get(name))) is not None:
            metrics[name] = number
    params = json.loads(row["params"]) if isinstance(row.get("params"), str) else dict(row.get("params") or {})
    return TuningTrial(number=int(row["number"]), slot=int(row["slot"]) if _present(row.get("slot")) else
                       int(row["number"]), state=str(row["state"]), value=value,
                       seed=int(row["seed"]) if _present(row.get("seed")) else None,
                       params={name: _scalar(v) for name, v in sorted(params.items())}, metrics=metrics,
                       reason=str(row["reason"]) if _present(row.get("reason")) else None,
                       started=_time(row.get("started")), completed=_time(row.get("completed")))


def cells_of(results: Results, source: str = "") -> list[CellExport]:
    """The cells of ``results`` (every cell with an evaluation run or a finished tuning trial), in the
    store's order: suite, task, backbone, strategy; ``source`` names the store they were read from."""
    runs: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    trials: dict[tuple[str, str, str, str], list[dict[str, Any]]] = {}
    for row in results.runs.to_dict("records") if not results.runs.empty else []:
        runs.setdefault((row["suite"], row["task"], row["backbone"], row["strategy"]), []).append(row)
    for row in results.trials.to_dict("records") if not results.trials.empty else []:
        if row["state"] in FINISHED:
            trials.setdefault((row["suite"], row["task"], row["backbone"], row["strategy"]), []).append(row)
    cells = []
    for key in sorted(set(runs) | set(trials)):
        rows = sorted(runs.get(key, []), key=lambda r: int(r["seed"]))
        first = rows[0] if rows else {}
        budget: dict[str, int | float] = {}
        if _present(first.get("tuning_budget")):
            budget["trials"] = int(first["tuning_budget"])
        if (epochs := _finite(first.get("tuning_budget_epochs"))) is not None:
            budget["epochs"] = epochs
        cells.append(CellExport(
            *key, runs=tuple(_evaluation_run(r) for r in rows),
            trials=tuple(_tuning_trial(t) for t in sorted(trials.get(key, []), key=lambda t: int(t["number"]))),
            params={name: _scalar(v) for name, v in sorted(dict(first.get("params") or {}).items())},
            tuning={name.removeprefix("tuning_"): number for name in TUNING_METRICS
                    if (number := _finite(first.get(name))) is not None},
            budget=budget, source=source))
    return cells


def export_results(results: Results, sink: Sink, *, source: str = "") -> ExportSummary:
    """Writes every cell of ``results`` to ``sink`` (see :class:`Sink` for the calls it gets).
    ``source`` names the store the results were read from (:func:`tlbench.store.opening.store_label`
    gives it): a cell is the same cell in a later export when it comes from the same store."""
    cells = cells_of(results, source)
    written, unchanged = [], []
    sink.open()
    try:
        for cell in cells:
            (written if sink.write_cell(cell) else unchanged).append(cell.key)
    finally:
        sink.close()
    return ExportSummary(tuple(written), tuple(unchanged), runs=sum(len(c.runs) for c in cells),
                         trials=sum(len(c.trials) for c in cells))


# ---------------------------------------------------------------------------------------------------------------
# MLflow

#: MLflow's run status for a trial's state
_MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
#: What one log_batch call sends at most (MLflow takes 100 params and 1000 metrics per call)
_BATCH = 100


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class MlflowSink(Sink):
    """An MLflow tracking store (``DEST``: a tracking URI such as ``sqlite:///mlflow.db``,
    ``http://host:5000``, or a folder for a file store): one experiment per suite, named after it; per
    cell a parent run with its evaluation runs and tuning trials nested under it.

    Bookkeeping tags: ``tlbench.kind`` (``cell``, ``evaluation`` or ``trial``), ``tlbench.store`` (the
    store it was read from), ``tlbench.key`` (the cell's key, with ``::seed=N`` or ``::trial=N`` on a
    nested run) and, on a cell's run,
    ``tlbench.digest``: set once all its nested runs are written, so a cell whose export was cut
    short is replaced by the next export rather than kept half-written. A cell whose content changed
    is replaced: its old runs are deleted (MLflow keeps deleted runs until ``mlflow gc``)."""

    name = "mlflow"
    description = "an MLflow tracking store (URI or folder): one experiment per suite, a parent run per cell"
    requires = ("mlflow",)
    extra = "mlflow"

    def open(self) -> None:
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            self.client = MlflowClient(tracking_uri=self.dest)
            self.client.search_experiments(max_results=1)
        except MlflowException as err:
            raise ConfigError(f"export --to mlflow {self.dest}: {_one_line(err.message)}") from None
        #: suite → (experiment id, (store, cell key) → (parent run id, digest))
        self._experiments: dict[str, tuple[str, dict[tuple[str, str], tuple[str, str | None]]]] = {}

    def _runs(self, experiment_id: str, filter_string: str) -> Iterator[Any]:
        token = None
        while True:
            page = self.client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                           page_token=token)
            yield from page
            token = page.token
            if not token:
                return

    def _experiment(self, suite: str) -> tuple[str, dict[tuple[str, str], tuple[str, str | None]]]:
        if suite not in self._experiments:
            found = self.client.get_experiment_by_name(suite)
            if found is None:
                experiment_id = self.client.create_experiment(suite, tags={"tlbench.suite": suite})
            elif found.lifecycle_stage != "active":
                raise ConfigError(f"export --to mlflow {self.dest}: the experiment {suite!r} is deleted there; "
                                  f"restore it (mlflow experiments restore --experiment-id {found.experiment_id}) "
                                  f"or remove it for good (mlflow gc) and export again")
            else:
                experiment_id = found.experiment_id
            held = {(run.data.tags.get("tlbench.store", ""), run.data.tags["tlbench.key"]):
                    (run.info.run_id, run.data.tags.get("tlbench.digest"))
                    for run in self._runs(experiment_id, "tags.`tlbench.kind` = 'cell'")
                    if "tlbench.key" in run.data.tags}
            self._experiments[suite] = (experiment_id, held)
        return self._experiments[suite]

    def _run(self, experiment_id: str, name: str, *, tags: dict[str, str], params: dict[str, Any],
             metrics: dict[str, float], started: datetime | None) -> str:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(experiment_id, start_time=_ms(started), tags=tags, run_name=name)
        run_id = run.info.run_id
        stamp = _ms(started) or run.info.start_time
        param_list = [Param(k, str(v)) for k, v in params.items()]
        metric_list = [Metric(k, float(v), stamp, 0) for k, v in metrics.items()]
        for i in range(0, max(len(param_list), len(metric_list), 1), _BATCH):
            self.client.log_batch(run_id, params=param_list[i:i + _BATCH], metrics=metric_list[i:i + _BATCH])
        return run_id

    def write_cell(self, cell: CellExport) -> bool:
        experiment_id, held = self._experiment(cell.suite)
        old = held.get((cell.source, cell.key))
        if old is not None and old[1] == cell.digest:
            return False
        if old is not None:
            for child in list(self._runs(experiment_id, f"tags.`mlflow.parentRunId` = '{old[0]}'")):
                self.client.delete_run(child.info.run_id)
            self.client.delete_run(old[0])
        base = {**cell.tags, "tlbench.key": cell.key, **({"tlbench.store": cell.source} if cell.source else {})}
        params = {**cell.params, **{f"budget.{name}": _scalar(v) for name, v in cell.budget.items()}}
        parent = self._run(experiment_id, cell.label, tags={**base, "tlbench.kind": "cell"}, params=params,
                           metrics=cell.summary, started=cell.started)
        nested = {**base, "mlflow.parentRunId": parent}
        for run in cell.runs:
            child = self._run(experiment_id, f"{cell.label} seed {run.seed}",
                              tags={**run.tags, **nested, "tlbench.kind": "evaluation",
                                    "tlbench.key": f"{cell.key}::seed={run.seed}"},
                              params={**run.params, "seed": run.seed}, metrics=run.metrics, started=run.started)
            self.client.set_terminated(child, "FINISHED", end_time=_ms(run.started))
        for trial in cell.trials:
            tags = {**nested, "tlbench.kind": "trial", "tlbench.key": f"{cell.key}::trial={trial.number}",
                    "state": trial.state, "slot": str(trial.slot)}
            if trial.reason:
                tags["reason"] = trial.reason
            params = {**trial.params, **({"seed": trial.seed} if trial.seed is not None else {})}
            child = self._run(experiment_id, f"{cell.label} trial {trial.number}", tags=tags, params=params,
                              metrics=trial.metrics, started=trial.started)
            self.client.set_terminated(child, _MLFLOW_STATUS.get(trial.state, "FINISHED"),
                                       end_time=_ms(trial.completed or trial.started))
        self.client.set_terminated(parent, "FINISHED", end_time=_ms(cell.ended))
        self.client.set_tag(parent, "tlbench.digest", cell.digest)  # last: the cell is complete
        held[(cell.source, cell.key)] = (parent, cell.digest)
        return True

    def where(self) -> str:
        return f"{self.dest} (mlflow ui --backend-store-uri {self.dest})"


# ---------------------------------------------------------------------------------------------------------------
# TensorBoard

#: The file in each cell's folder that says tlbench wrote it, and what (its key and digest).
MARKER = ".tlbench-export.json"


def _folder(name: str) -> str:
    """A name as one folder name (suite, task, backbone and strategy names are ``[A-Za-z0-9_.+-]+``)."""
    safe = re.sub(r"[^A-Za-z0-9_.+=-]", "_", name)
    return f"_{safe}" if safe in {"", ".", ".."} else safe


class TensorBoardSink(Sink):
    """TensorBoard event files under the folder ``DEST``: per cell the folder
    ``DEST/SUITE/TASK/BACKBONE/STRATEGY`` with

    - ``seed-N`` per evaluation run: an HParams session (hyperparameters: the cell, its configuration and
      the seed; metrics: ``evaluation/<metric>``) and those metrics as scalars at step 0;
    - ``tuning``: per finished trial, at the trial's number as the step, ``tuning/val_accuracy``,
      ``tuning/best_val_accuracy`` (the best completed trial so far), ``tuning/seconds`` and
      ``tuning/compute``.

    A cell's folder is written whole: a cell whose content changed is deleted and rewritten, one that
    did not is left as it is (the folder's ``.tlbench-export.json`` holds its store, key and digest). A
    folder in the way that tlbench did not write, or wrote from another store, is refused rather than
    deleted. Event times are the runs' and trials' own times."""

    name = "tensorboard"
    description = "TensorBoard event files in a folder: per cell, one run per seed (HParams) and the trials as steps"
    requires = ("tensorboard",)
    extra = "tensorboard"

    def cell_dir(self, cell: CellExport) -> Path:
        return Path(self.dest).joinpath(*map(_folder, (cell.suite, cell.task, cell.backbone, cell.strategy)))

    def write_cell(self, cell: CellExport) -> bool:
        root = self.cell_dir(cell)
        marker = root / MARKER
        if marker.is_file():
            try:
                held = json.loads(marker.read_text())
            except (OSError, ValueError):
                held = {}
            if held.get("store", "") != cell.source:
                raise ConfigError(f"export --to tensorboard {self.dest}: {root} holds the export of another store "
                                  f"({held.get('store') or 'not named'}); export this one to another folder")
            if held.get("digest") == cell.digest:
                return False
            shutil.rmtree(root)
        elif root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise ConfigError(f"export --to tensorboard {self.dest}: {root} is in the way and was not written by "
                              f"tlbench export (it has no {MARKER}); move it, or export to another folder")
        root.mkdir(parents=True, exist_ok=True)
        identity = {"store": cell.source, "key": cell.key}
        marker.write_text(json.dumps({**identity, "digest": None}))  # until the cell is complete
        for run in cell.runs:
            self._evaluation(root / f"seed-{run.seed}", cell, run)
        if cell.trials:
            self._tuning(root / "tuning", cell)
        marker.write_text(json.dumps({**identity, "digest": cell.digest}, indent=1) + "\n")
        return True

    @staticmethod
    def _evaluation(folder: Path, cell: CellExport, run: EvaluationRun) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        walltime = run.started.timestamp() if run.started is not None else None
        metrics = {f"evaluation/{name}": value for name, value in run.metrics.items()}
        hyper = {**cell.tags, **run.params, "seed": run.seed}
        with SummaryWriter(log_dir=str(folder)) as writer:
            for summary in hparams(hyper, metrics):
                writer.file_writer.add_summary(summary, 0, walltime)
            for tag, value in metrics.items():
                writer.add_scalar(tag, value, 0, walltime=walltime)

    @staticmethod
    def _tuning(folder: Path, cell: CellExport) -> None:
        from torch.utils.tensorboard import SummaryWriter

        best = None
        with SummaryWriter(log_dir=str(folder)) as writer:
            for trial in cell.trials:
                moment = trial.completed or trial.started
                walltime = moment.timestamp() if moment is not None else None
                if trial.state == "COMPLETE" and trial.value is not None:
                    best = trial.value if best is None else max(best, trial.value)
                scalars = {"val_accuracy": trial.value, "best_val_accuracy": best,
                           "seconds": trial.metrics.get("seconds"), "compute": trial.metrics.get("compute")}
                for name, value in scalars.items():
                    if value is not None:
                        writer.add_scalar(f"tuning/{name}", value, trial.number, walltime=walltime)

    def where(self) -> str:
        return f"{self.dest} (tensorboard --logdir {self.dest})"


# ---------------------------------------------------------------------------------------------------------------
# Finding a sink by name

#: The sinks tlbench ships, by name (they win over an entry point of the same name).
BUILTIN_SINKS: dict[str, type[Sink]] = {"mlflow": MlflowSink, "tensorboard": TensorBoardSink}


def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in sorted(importlib.metadata.entry_points(group=SINK_GROUP), key=lambda e: e.name):
        found.setdefault(ep.name, ep)
    return found


def available_sinks() -> list[str]:
    """The names ``--to`` accepts: the built-ins, then the installed distributions' sinks (group ``tlbench.sinks``)."""
    return [*BUILTIN_SINKS, *(name for name in _entry_points() if name not in BUILTIN_SINKS)]


def sink_class(name: str) -> type[Sink]:
    """The sink called ``name``: a built-in, else an entry point of the group ``tlbench.sinks``. An
    unknown name, a plugin that does not import or is not a :class:`Sink`, and a sink whose packages
    are not installed are each one :class:`~tlbench.core.errors.ConfigError` line."""
    if name in BUILTIN_SINKS:
        cls = BUILTIN_SINKS[name]
    else:
        eps = _entry_points()
        if name not in eps:
            plugins = [n for n in eps if n not in BUILTIN_SINKS]
            listed = ", ".join(BUILTIN_SINKS) + (f" (built in), {', '.join(plugins)} (entry points)" if plugins
                                                 else " (built in; a distribution adds its own in the entry-point "
                                                      f"group {SINK_GROUP})")
            raise ConfigError(f"export --to {name!r}: no such sink; available: {listed}")
        ep = eps[name]
        dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist is not None else "an unknown distribution"
        where = f"export --to {name}: entry point {ep.name} = {ep.value} (group {SINK_GROUP}, {dist})"
        try:
            loaded = ep.load()
        except Exception as err:  # noqa: BLE001 (a plugin's import can fail any way)
            raise ConfigError(f"{where}: import failed: {type(err).__name__}: {_one_line(str(err))}") from None
        if not (isinstance(loaded, type) and issubclass(loaded, Sink)):
            raise ConfigError(f"{where}: {getattr(loaded, '__name__', loaded)!r} is not a subclass of "
                              f"tlbench.reports.export.Sink")
        cls = loaded
    if (missing := cls.missing()) is not None:
        raise ConfigError(f"export --to {name}: {missing}")
    return cls
