"""Shared inputs for the benchmarks: the quick suite's digits task and glyph backbone."""

from __future__ import annotations

import functools
import os
from pathlib import Path

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
