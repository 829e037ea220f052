"""A plan's cells as :class:`~tlbench.store.progress.CellPlan` (budget, seeds, sensitivity runs):
what a run stores for ``tlbench status`` and what status plans itself when no run stored it.
The reading of the store is :mod:`tlbench.store.progress` (no torch)."""

from __future__ import annotations

from tlbench.run.plan import Plan
from tlbench.run.sensitivity import sensitivity_points
from tlbench.store.progress import CellPlan


def cell_plans(plan: Plan) -> list[CellPlan]:
    suite = plan.suite
    cells = []
    for cell in plan.cells:
        runs = sum(len(sensitivity_points(spec)) * spec.seeds for spec in suite.sensitivity
                   if spec.strategy == cell.strategy and spec.covers(cell.task, suite.tasks[cell.task]))
        cells.append(CellPlan(cell.task, cell.backbone, cell.strategy,
                              tunable=plan.make_strategy(cell.strategy).tunable,
                              budget=plan.budget(cell.strategy, cell.backbone), seeds=suite.seeds,
                              suite_seed=suite.seed, sensitivity_runs=runs))
    return cells
