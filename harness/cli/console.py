"""How the command line shows a run: rich progress bars and one line per finished cell."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from tlbench.run.cell import CellOutcome, RunObserver

if TYPE_CHECKING:
    from tlbench.run.plan import Cell, Plan


class ConsoleObserver(RunObserver):
    """Renders a run: a bar over cells, one per cell phase, one line per finished cell."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=console, transient=True)
        self._cells: TaskID | None = None
        self._bars: dict[str, TaskID] = {}  # one per cell this worker has open (several when workers share a run)

    def __enter__(self) -> "ConsoleObserver":
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message)

    def plan_started(self, plan: "Plan") -> None:
        self._cells = self.progress.add_task("cells", total=len(plan.cells))

    def cell_started(self, cell: "Cell", *, phase: str, total: int) -> None:
        self._end_bar(cell)
        self._bars[cell.label] = self.progress.add_task(f"  {cell.label}: {phase}", total=total)

    def cell_progress(self, cell: "Cell", *, phase: str, done: int) -> None:
        if cell.label in self._bars:
            self.progress.update(self._bars[cell.label], completed=done)

    def cell_finished(self, cell: "Cell", outcome: CellOutcome) -> None:
        self._end_bar(cell)
        style = "yellow" if outcome.skipped else ""
        self.console.print(f"[{style}]{outcome.summary}[/{style}]" if style else outcome.summary)
        if self._cells is not None:
            self.progress.advance(self._cells)

    def _end_bar(self, cell: "Cell") -> None:
        bar = self._bars.pop(cell.label, None)
        if bar is not None:
            self.progress.remove_task(bar)
