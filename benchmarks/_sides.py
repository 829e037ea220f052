"""Comparisons timed side by side with pytest-benchmark, each side a real benchmarked function.

pytest-benchmark times one function per test, so a comparison is a test parametrised over its
sides, each calling :func:`time_side` (rounds, warm-up, the median kept), and a test after them
that reads the ratio with :func:`ratio`. ``pytest benchmarks --benchmark-json=out.json`` keeps
every side's rounds; ``--benchmark-compare`` compares them across commits.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

_MEDIANS: dict[tuple[str, str], float] = {}


def time_side(benchmark: Any, group: str, side: str, fn: Callable[[], Any], *, rounds: int,
              warmup_rounds: int = 1) -> float:
    """Times ``fn`` as side ``side`` of comparison ``group``; returns (and keeps) its median seconds."""
    benchmark.group = group
    benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=warmup_rounds)
    _MEDIANS[group, side] = float(benchmark.stats.stats.median)
    return _MEDIANS[group, side]


def median(group: str, side: str) -> float:
    """A side's median seconds; skips the calling test when that side has not run in this session."""
    if (group, side) not in _MEDIANS:
        pytest.skip(f"run with the sides of {group!r} (side {side!r} did not run)")
    return _MEDIANS[group, side]


def ratio(group: str, slow: str, fast: str) -> float:
    """How many times faster side ``fast`` was than side ``slow`` (medians)."""
    return median(group, slow) / median(group, fast)
