"""Where a run stands, read from its store: per cell, the tuning slots finished, held and failed,
the evaluation seeds and sensitivity runs done, the workers holding work (alive or dead), and
what is left. Reads only; ``tlbench status`` prints it."""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from tlbench.run.evaluation import seed_states
from tlbench.run.plan import Cell, Plan
from tlbench.run.sensitivity import sensitivity_points
from tlbench.run.tuning import evaluation_seed, slots, summarize
from tlbench.store.claims import dead_trials, lost_claim
from tlbench.store.records import StudyName


@dataclass
class CellStatus:
    cell: Cell
    budget: str  # "6 trials" or "40 backbone epochs"
    tuned: int = 0  # slots finished (counted by the budget)
    tuning_total: int | None = None  # slots of a trial budget (None: an epochs budget, or nothing to tune)
    tuning_done: bool = False
    held: int = 0  # units a live worker's claim holds right now (any phase)
    orphaned: int = 0  # units a dead worker's claim still holds: the next worker that looks takes them over
    failed: int = 0  # trials that failed (killed workers, errors; not claims lost in a race)
    evaluated: int = 0
    seeds: int = 0
    sensitivity_done: int = 0
    sensitivity_total: int = 0
    workers: dict[str, bool] = field(default_factory=dict)  # holding worker → alive

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


def cell_status(storage: BaseStorage, plan: Plan, cell: Cell, names: set[str]) -> CellStatus:
    suite = plan.suite
    strategy = plan.make_strategy(cell.strategy)
    budget = plan.budget(cell.strategy, cell.backbone)
    status = CellStatus(cell, budget.describe(), seeds=suite.seeds)
    studies = {kind: _trials(storage, StudyName(suite.name, cell.task, cell.backbone, cell.strategy, kind), names)
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
    if strategy.tunable:
        study, trials = studies["tune"]
        status.tuning_total = budget.trials
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
        status.evaluated = len(done & set(evaluation_seed(suite.seed, k) for k in range(suite.seeds)))
    for spec in suite.sensitivity:
        if spec.strategy == cell.strategy and spec.covers(cell.task, suite.tasks[cell.task]):
            status.sensitivity_total += len(sensitivity_points(spec)) * spec.seeds
    sens_study, sens_trials = studies["sens"]
    if sens_study is not None:
        status.sensitivity_done = min(status.sensitivity_total,
                                      sum(t.state == TrialState.COMPLETE for t in sens_trials))
    return status


def run_status(storage: BaseStorage, plan: Plan) -> list[CellStatus]:
    """Every cell of the plan as the store has it now."""
    names = set(optuna.get_all_study_names(storage))
    return [cell_status(storage, plan, cell, names) for cell in plan.cells]
