"""Strategies, registered explicitly (no registration by import side effect)."""

from __future__ import annotations

from harness.registry import Registry
from strategies.base import Predictor, Strategy
from strategies.distillation import KnowledgeDistillation
from strategies.ensemble import Ensemble
from strategies.full_finetune import FullFinetune, Scratch
from strategies.linear_probe import LinearProbe
from strategies.regularized import LPFT, L2SPStrategy
from strategies.schedules import ULMFiT, DiscriminativeLR, GradualUnfreeze, Surgical

STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
for _cls in (LinearProbe, FullFinetune, Scratch, GradualUnfreeze, DiscriminativeLR, LPFT, L2SPStrategy,
             Surgical, KnowledgeDistillation, Ensemble, ULMFiT):
    STRATEGIES.add(_cls)

__all__ = ["STRATEGIES", "Predictor", "Strategy"]
