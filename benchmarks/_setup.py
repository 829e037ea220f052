"""Shared inputs for the benchmarks: the quick suite's digits task and glyph backbone."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Callable

import torch

from tlbench.run.plan import load_plan
from tlbench.run.pretrain import materialize_backbone

QUICK = Path(__file__).resolve().parent.parent / "suites" / "quick.yaml"


@functools.lru_cache(maxsize=1)
def quick_digits():
    """(plan, task, pretrained glyph backbone) of the quick suite's digits task."""
    plan = load_plan(QUICK)
    backbone = materialize_backbone("glyph-cnn", plan.suite, cache_dir=Path(os.environ["TLBENCH_CACHE"]),
                                    device=torch.device("cpu"), log=lambda m: None)
    return plan, plan.tasks["digits-2shot"], backbone


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Minimum wall time of ``repeats`` calls (the least disturbed measurement)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
