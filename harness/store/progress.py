"""A run's progress as its trials say, without the training stack (no torch): budget slots,
the seeds of tuning and evaluation runs, a tuning study's outcome at a budget, the evaluation
seeds done, and, per cell, where the run stands (``tlbench status``; the launcher's "work
left"). The run layer trains; this module only reads what it stored.

A run stores its cells' plan (:class:`CellPlan`: budget, seeds, sensitivity runs) in the
study ``SUITE::plan`` under a key of the suite file and the command line that planned it
(:func:`tlbench.suites.reading.plan_key`), so that ``tlbench status`` answers from the store
without parsing the suite against the strategies' code; without a stored plan (or for other
arguments) it plans the suite as the run did.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.core.budget import Budget
from tlbench.store.claims import dead_trials, lost_claim, worker_id
from tlbench.store.records import StudyName, plan_study

SEED_STRIDE = 1_000_003


def slot_of(trial: FrozenTrial) -> int | None:
    """The budget slot a tuning trial holds: claimed with the trial (``slot``), or, for trials
    written before slots were claimed, read back from its training seed
    (``suite_seed·SEED_STRIDE + slot``, slots < 500,000). None for a trial tlbench did not make."""
    slot = trial.user_attrs.get("slot")
    if slot is not None:
        return int(slot)
    seed = trial.user_attrs.get("seed")
    return int(seed) % SEED_STRIDE if seed is not None else None


EVAL_OFFSET = 500_000


def tuning_seed(suite_seed: int, slot: int) -> int:
    """The training seed of the tuning trial in ``slot`` (see :func:`slot_of`)."""
    return suite_seed * SEED_STRIDE + slot


def evaluation_seed(suite_seed: int, k: int) -> int:
    """Evaluation seeds never coincide with tuning seeds (tuning slots stay < 500,000)."""
    return suite_seed * SEED_STRIDE + EVAL_OFFSET + k


def trial_compute(trial: FrozenTrial) -> float:
    """A finished trial's compute in backbone epochs (its reported epochs when its FLOPs
    were not counted, as for a strategy with its own training loop)."""
    value = trial.user_attrs.get("compute")
    return float(value) if value is not None else float(max(1, len(trial.intermediate_values)))


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any] | None
    best_value: float | None
    best_trial: int | None
    best_seed: int | None
    n_complete: int
    n_pruned: int
    n_failed: int
    seconds: float
    compute: float = 0.0  # backbone epochs the counted trials trained
    done: bool = False  # the budget is spent
    best_values: dict[str, Any] | None = None  # the best trial's sampled hyperparameters


@dataclass(frozen=True)
class Slots:
    """A tuning study's budget slots as its trials say: the finished trial of each slot, the
    slots a live claim holds, and the last failed trial of each slot (its retry's ``retry_of``)."""

    finished: dict[int, FrozenTrial] = field(default_factory=dict)
    held: frozenset[int] = frozenset()
    failed: dict[int, int] = field(default_factory=dict)


def slots(trials: list[FrozenTrial]) -> Slots:
    finished: dict[int, FrozenTrial] = {}
    held, failed = set(), {}
    for t in sorted(trials, key=lambda t: t.number):
        slot = slot_of(t)
        if slot is None:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            finished.setdefault(slot, t)  # the lowest-numbered, should an old release have run a slot twice
        elif t.state == TrialState.RUNNING:
            held.add(slot)
        elif t.state == TrialState.FAIL and not lost_claim(t):
            failed[slot] = t.number
    return Slots(finished, frozenset(held - set(finished)), failed)


def _counted(state: Slots, budget: Budget | None) -> tuple[list, bool]:
    """The finished trials a budget counts, in slot order, and whether it is spent: slots
    0 … trials−1; or, for an epochs budget, each slot that starts before the slots before it
    have spent the budget (one worker starts a trial only then)."""
    if budget is None:
        return [state.finished[s] for s in sorted(state.finished)], False
    if budget.epochs is None:
        counted = [state.finished[s] for s in range(budget.cap) if s in state.finished]
        return counted, len(counted) == budget.cap
    counted, spent = [], 0.0
    for s in range(budget.max_trials):
        if spent >= budget.epochs or s not in state.finished:
            break
        counted.append(state.finished[s])
        spent += trial_compute(state.finished[s])
    return counted, spent >= budget.epochs or len(counted) >= budget.max_trials


def summarize(study: optuna.Study, budget: Budget | None = None,
              trials: list[FrozenTrial] | None = None) -> TuneResult:
    """The outcome of the slots ``budget`` counts (all when None): a study tuned further
    by an earlier, longer run still compares at the suite's budget."""
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    counted, done = _counted(slots(trials), budget)
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -slot_of(t))) if complete else None
    return TuneResult(
        best_params=dict(best.user_attrs["params"]) if best else None,
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        best_seed=best.user_attrs.get("seed") if best else None,
        n_complete=len(complete),
        n_pruned=len(counted) - len(complete),
        n_failed=sum(t.state == TrialState.FAIL and not lost_claim(t) for t in trials),
        seconds=sum(t.user_attrs.get("seconds", 0.0) for t in counted),
        compute=sum(trial_compute(t) for t in counted),
        done=done,
        best_values=dict(best.params) if best else None,
    )


def stored_form(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` as the store gives them back (JSON: tuples become lists), so that comparing a
    configuration with a stored one never fails on form alone (a seed would never count as done)."""
    return json.loads(json.dumps(params, default=str))


def seed_states(trials: list[FrozenTrial], params: dict[str, Any]) -> tuple[set[int], set[int]]:
    """Seeds evaluated with exactly ``params`` (a new best configuration makes earlier
    evaluations stale; a seed that diverged deterministically counts as done), and seeds a
    live claim holds right now."""
    done, held = set(), set()
    for t in trials:
        if t.user_attrs.get("params") != params or "seed" not in t.user_attrs:
            continue
        if t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get("final")):
            done.add(int(t.user_attrs["seed"]))
        elif t.state == TrialState.RUNNING:
            held.add(int(t.user_attrs["seed"]))
    return done, held - done


@dataclass(frozen=True)
class CellPlan:
    """What a cell has to do, as planned: the part of a plan ``tlbench status`` needs."""

    task: str
    backbone: str
    strategy: str
    tunable: bool
    budget: Budget
    seeds: int  # evaluation seeds
    suite_seed: int
    sensitivity_runs: int = 0  # points × seeds of the sensitivity studies that cover the cell

    @property
    def label(self) -> str:
        return f"{self.task} / {self.backbone} / {self.strategy}"

    def stored(self) -> dict[str, Any]:
        return {**asdict(self), "budget": self.budget.model_dump()}

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> "CellPlan":
        return cls(**{**data, "budget": Budget.stored(data["budget"])})


def store_plan(storage: BaseStorage, suite: str, key: str, cells: list[CellPlan]) -> None:
    """Keeps ``cells`` under ``key`` (every worker of a launch writes the same value)."""
    study = optuna.create_study(study_name=plan_study(suite), storage=storage, load_if_exists=True)
    value = [c.stored() for c in cells]
    if study.user_attrs.get(key) != value:
        study.set_user_attr(key, value)


def store_timing(storage: BaseStorage, suite: str, breakdown: dict[str, float]) -> None:
    """Keeps one run's time per phase (:mod:`tlbench.core.phases`) under ``timing:<end time>:<worker>``
    in the suite's plan study, beside the plans: what :func:`stored_timings` reads back."""
    study = optuna.create_study(study_name=plan_study(suite), storage=storage, load_if_exists=True)
    ended, worker = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"), worker_id()
    study.set_user_attr(f"timing:{ended}:{worker}", {"worker": worker, "ended": ended,
                                                     **{k: round(v, 3) for k, v in breakdown.items()}})


def stored_timings(storage: BaseStorage, suite: str) -> list[dict[str, Any]]:
    """Every run's stored time per phase, oldest first, each with its ``worker`` and ``ended``."""
    if plan_study(suite) not in optuna.get_all_study_names(storage):
        return []
    attrs = optuna.load_study(study_name=plan_study(suite), storage=storage).user_attrs
    rows = [value for key, value in attrs.items() if key.startswith("timing:") and isinstance(value, dict)]
    return sorted(rows, key=lambda r: str(r.get("ended")))


def stored_plan(storage: BaseStorage, suite: str, key: str, names: set[str]) -> list[CellPlan] | None:
    """The cells a run stored under ``key``; None when no run did (or they do not read back)."""
    if plan_study(suite) not in names:
        return None
    value = optuna.load_study(study_name=plan_study(suite), storage=storage).user_attrs.get(key)
    try:
        return [CellPlan.from_stored(c) for c in value] if isinstance(value, list) else None
    except (TypeError, ValueError):  # written by another tlbench version: plan the suite instead
        return None


@dataclass
class CellStatus:
    cell: CellPlan
    tuned: int = 0  # slots finished (counted by the budget)
    tuning_done: bool = False
    held: int = 0  # units a live worker's claim holds right now (any phase)
    orphaned: int = 0  # units a dead worker's claim still holds: the next worker that looks takes them over
    failed: int = 0  # trials that failed (killed workers, errors; not claims lost in a race)
    evaluated: int = 0
    sensitivity_done: int = 0
    workers: dict[str, bool] = field(default_factory=dict)  # holding worker → alive

    @property
    def budget(self) -> str:
        return self.cell.budget.describe()  # "6 trials" or "40 backbone epochs"

    @property
    def tuning_total(self) -> int | None:
        """Slots of a trial budget (None: an epochs budget, or nothing to tune)."""
        return self.cell.budget.trials if self.cell.tunable else None

    @property
    def seeds(self) -> int:
        return self.cell.seeds

    @property
    def sensitivity_total(self) -> int:
        return self.cell.sensitivity_runs

    @property
    def left(self) -> int:
        """Units of work not finished (tuning slots of a trial budget, seeds, sensitivity runs)."""
        tuning = (self.tuning_total - self.tuned) if self.tuning_total is not None else (0 if self.tuning_done else 1)
        return tuning + (self.seeds - self.evaluated) + (self.sensitivity_total - self.sensitivity_done)

    @property
    def state(self) -> str:
        if self.left == 0:
            return "done"
        return "running" if self.held else ("waiting" if self.tuned or self.evaluated else "not started")


def _trials(storage: BaseStorage, name: StudyName, names: set[str]) -> tuple[optuna.Study | None, list[FrozenTrial]]:
    if str(name) not in names:
        return None, []
    study = optuna.load_study(study_name=str(name), storage=storage)
    return study, study.get_trials(deepcopy=False)


def cell_status(storage: BaseStorage, suite: str, cell: CellPlan, names: set[str]) -> CellStatus:
    """One cell as the store has it now (``names``: the store's study names)."""
    budget = cell.budget
    status = CellStatus(cell)
    studies = {kind: _trials(storage, StudyName(suite, cell.task, cell.backbone, cell.strategy, kind), names)
               for kind in ("tune", "eval", "sens")}
    for study, trials in studies.values():
        if study is None:
            continue
        dead = {t.number for t in dead_trials(study)}
        for t in trials:
            if t.state == TrialState.RUNNING and "worker" in t.user_attrs:
                alive = t.number not in dead
                status.held += alive  # a dead worker's unit is free for the next worker that looks
                status.orphaned += not alive
                status.workers[t.user_attrs["worker"]] = alive
            status.failed += t.state == TrialState.FAIL and not lost_claim(t) and not t.user_attrs.get("final")
    if cell.tunable:
        study, trials = studies["tune"]
        if study is not None:
            result = summarize(study, budget, trials)
            status.tuned = result.n_complete + result.n_pruned if budget.epochs is None else len(slots(trials).finished)
            status.tuning_done = result.done
    else:
        status.tuning_done = True
    eval_study, eval_trials = studies["eval"]
    params = eval_study.user_attrs.get("params") if eval_study is not None else None  # set once tuning is done
    if params is not None and status.tuning_done:
        done, _ = seed_states(eval_trials, params)
        status.evaluated = len(done & {evaluation_seed(cell.suite_seed, k) for k in range(cell.seeds)})
    sens_study, sens_trials = studies["sens"]
    if sens_study is not None:
        status.sensitivity_done = min(cell.sensitivity_runs, sum(t.state == TrialState.COMPLETE for t in sens_trials))
    return status


def run_status(storage: BaseStorage, suite: str, cells: list[CellPlan] | Callable[[], list[CellPlan]], *,
               key: str | None = None) -> list[CellStatus]:
    """Every cell as the store has it now: ``cells``, or the plan stored under ``key`` (when a
    run stored one; else ``cells()`` plans it)."""
    names = set(optuna.get_all_study_names(storage))
    if callable(cells):
        cells = (stored_plan(storage, suite, key, names) if key is not None else None) or cells()
    return [cell_status(storage, suite, cell, names) for cell in cells]
