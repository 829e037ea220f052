"""Runs a plan: materialise backbones, then take the cells' work unit by unit until every cell is
done, with whatever other workers share the store.

The runner reports what happens through a :class:`~tlbench.run.cell.RunObserver` (no-op by
default) and returns what it ran; it neither prints nor writes reports — the command line does
both.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage

from tlbench.core.phases import PHASES
from tlbench.run.cell import CellOutcome, CellWork, RunObserver
from tlbench.run.plan import Plan
from tlbench.run.pretrain import materialize_backbone
from tlbench.run.selection import ScoreWork, score_works
from tlbench.run.study_attrs import check_plugin_code
from tlbench.run.tuned import ModelServers
from tlbench.store.claims import check_compatible
from tlbench.store.progress import evaluation_seed
from tlbench.store.settings import store_settings
from tlbench.training.context import Runtime


@dataclass(frozen=True)
class RunResult:
    """The cells a run covered and its evaluation seeds: what its report shows."""

    suite: str
    cells: frozenset[tuple[str, str, str]]
    seeds: tuple[int, ...]
    outcomes: tuple[CellOutcome, ...]


def run_plan(plan: Plan, *, out: Path, storage: BaseStorage, runtime: Runtime, cache_dir: Path,
             observer: RunObserver | None = None, poll_s: float = 0.2) -> RunResult:
    """Runs every cell of ``plan`` into ``storage`` (artifacts of reused models under
    ``out/models``) until all of it is done, with whatever other workers share the storage;
    returns what ran.

    Work is taken in plan order, one unit at a time (a tuning slot, an evaluation seed, a
    sensitivity run), each claimed in the store (:func:`tlbench.store.claims.claim`): the first unit
    of the plan that may start now and that no one holds. A single worker therefore runs
    cell after cell exactly as before; several workers spread over the slots that may run at
    once (:func:`tlbench.run.tuning.independent_slots`), other cells and evaluation seeds, and a
    cell that reuses another's models waits for that cell to finish. A worker with nothing
    it may start waits for the others (looking again after ``poll_s``, then less and less often,
    up to every 5 s), so a run that ends has every cell done."""
    observer = observer or RunObserver()
    suite = plan.suite
    runtime = dataclasses.replace(runtime, decay_norm_and_bias=suite.training.decay_norm_and_bias)
    check_compatible(storage, suite.name, suite.fingerprint(), where=suite.path, settings=suite.settings())
    store_settings(storage, suite.name, suite.fingerprint(), suite.settings(), suite.overrides)
    check_plugin_code(storage, plan)
    with PHASES("pretraining"):  # or reading the pretrained weights from the cache
        backbones = {name: materialize_backbone(name, suite, cache_dir=cache_dir, device=runtime.device,
                                                log=observer.log, loading=runtime.execution.loading,
                                                built={**plan.sources, **plan.tasks})
                     for name in plan.backbones}
    groups = ModelServers(storage, plan, backbones, plan.reused(), out / "models")
    observer.plan_started(plan)
    scoring = score_works(plan, backbones, storage=storage, runtime=runtime, log=observer.log)
    works: dict[tuple[str, str, str], CellWork] = {}
    for cell in plan.cells:
        works[(cell.task, cell.backbone, cell.strategy)] = CellWork(
            cell, plan, backbones[cell.backbone], storage=storage, groups=groups, runtime=runtime,
            observer=observer, works=works)
    noted = time.monotonic()
    lost = Reconnect(observer.log)
    pause = poll_s
    while True:
        waiting: list[CellWork | ScoreWork] = []
        for work in [*scoring, *works.values()]:  # scores first: a forward pass each, before any fine-tuning
            if work.outcome is not None:
                continue
            try:
                step = work.step()
            except optuna.exceptions.StorageInternalError as err:  # the database went away for a moment
                lost.wait(err)
                break  # scan again from the top; a unit left half-written is failed and redone by its claim rules
            lost.ok()
            if step == "ran":
                pause = poll_s
                break  # back to the first open cell: one worker keeps the plan's order
            if step == "wait":
                waiting.append(work)
        else:
            if not waiting:
                break
            if time.monotonic() - noted > 60:
                noted = time.monotonic()
                observer.log(f"waiting for other workers: {', '.join(w.label for w in waiting[:3])}"
                             f"{' …' if len(waiting) > 3 else ''} ({len(waiting)} cells have work held elsewhere "
                             f"or waiting for it)")
            time.sleep(pause)
            pause = min(5.0, pause * 1.5)  # others are busy for a while: look less often (a database is shared)
    seeds = tuple(evaluation_seed(suite.seed, k) for k in range(suite.seeds))
    return RunResult(suite.name, frozenset((c.task, c.backbone, c.strategy) for c in plan.cells), seeds,
                     tuple(w.outcome for w in works.values() if w.outcome is not None))


class Reconnect:
    """Backoff for a database that drops the connection in the middle of a run (a restart, a
    failover, the network): one line per retry, waits doubling from 1 s to 60 s, and the error
    itself after ``attempts`` in a row. Optuna's RDBStorage rolls back and raises
    StorageInternalError; its pool (pre-pinged) opens a fresh connection on the next call."""

    def __init__(self, log: Any, attempts: int = 8) -> None:
        self.log, self.attempts, self.failures = log, attempts, 0

    def wait(self, err: Exception) -> None:
        self.failures += 1
        if self.failures >= self.attempts:
            raise err
        delay = min(60.0, 2.0 ** (self.failures - 1))
        self.log(f"storage: {str(err).splitlines()[0][:200] if str(err) else type(err).__name__}; retrying in "
                 f"{delay:.0f} s (attempt {self.failures + 1} of {self.attempts})")
        time.sleep(delay)

    def ok(self) -> None:
        self.failures = 0
