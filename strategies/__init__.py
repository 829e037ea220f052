"""Strategies, registered explicitly (no registration by import side effect)."""

from __future__ import annotations

from harness.registry import Registry
from strategies.base import Predictor, Strategy
from strategies.full_finetune import FullFinetune, Scratch
from strategies.linear_probe import LinearProbe

STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
for _cls in (LinearProbe, FullFinetune, Scratch):
    STRATEGIES.add(_cls)

__all__ = ["STRATEGIES", "Predictor", "Strategy"]
