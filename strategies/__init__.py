"""Strategies, registered explicitly (no registration by import side effect)."""

from __future__ import annotations

from tlbench.registry import Registry
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.distillation import KnowledgeDistillation
from tlbench.strategies.ensemble import Ensemble
from tlbench.strategies.full_finetune import FullFinetune, Scratch
from tlbench.strategies.linear_probe import LinearProbe
from tlbench.strategies.regularized import LPFT, L2SPStrategy
from tlbench.strategies.schedules import DiscriminativeLR, GradualUnfreeze, Surgical, ULMFiT

STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
for _cls in (LinearProbe, FullFinetune, Scratch, GradualUnfreeze, DiscriminativeLR, LPFT, L2SPStrategy,
             Surgical, KnowledgeDistillation, Ensemble, ULMFiT):
    STRATEGIES.add(_cls)

__all__ = ["STRATEGIES", "Predictor", "Strategy"]
