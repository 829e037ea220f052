"""Where a process's wall time goes: pretraining, tuning, evaluation training, inference,
scores, sensitivity runs, the report, and everything else.

:data:`PHASES` is one accountant per process. Code that starts a phase wraps it in
``with PHASES("tuning"):``; phases nest and the innermost one is charged (an evaluation run's
test pass inside ``evaluation`` is ``inference``), so the totals never count a second twice.
Time outside every phase (start-up, planning, claims, store reads and writes between units,
waiting for other workers) is *everything else*: what :func:`Phases.breakdown` reports as
``other`` against the wall time since :meth:`Phases.reset`.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

#: The phases in the order a breakdown shows them.
ORDER = ("pretraining", "scores", "tuning", "evaluation", "inference", "sensitivity", "report")
LABELS = {"evaluation": "evaluation training"}


class Phases:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Starts a new account (a command's wall time starts now)."""
        self.started = self._last = time.perf_counter()
        self.totals: dict[str, float] = {}
        self._stack: list[str] = []

    def _charge(self) -> None:
        now = time.perf_counter()
        if self._stack:
            self.totals[self._stack[-1]] = self.totals.get(self._stack[-1], 0.0) + now - self._last
        self._last = now

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        self._charge()
        self._stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self._stack.pop()

    def breakdown(self) -> dict[str, float]:
        """Seconds per phase (those that ran, in :data:`ORDER`), ``other`` and ``wall``."""
        self._charge()
        wall = time.perf_counter() - self.started
        phases = {name: self.totals[name] for name in (*ORDER, *sorted(set(self.totals) - set(ORDER)))
                  if name in self.totals}
        return {**phases, "other": max(0.0, wall - sum(phases.values())), "wall": wall}


def describe(breakdown: dict[str, float]) -> str:
    """One line: ``time: 312.0 s: pretraining 29.0 s (9%), tuning 105.0 s (34%), …, other 20.0 s (6%)``."""
    wall = breakdown["wall"]
    parts = [f"{LABELS.get(name, name)} {seconds:.1f} s ({100 * seconds / wall:.0f}%)" if wall > 0 else
             f"{LABELS.get(name, name)} {seconds:.1f} s" for name, seconds in breakdown.items() if name != "wall"]
    return f"time: {wall:.1f} s: " + ", ".join(parts)


PHASES = Phases()
