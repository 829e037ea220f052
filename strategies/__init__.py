"""Strategies, registered explicitly (no registration by import side effect)."""

from __future__ import annotations

from tlbench.core.registry import Registry
from tlbench.strategies.adapter import Adapter
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.bitfit import BitFit
from tlbench.strategies.discriminative_lr import DiscriminativeLR
from tlbench.strategies.distillation import KnowledgeDistillation
from tlbench.strategies.ensemble import Ensemble
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.strategies.gradual_unfreeze import GradualUnfreeze
from tlbench.strategies.l2_sp import L2SPStrategy
from tlbench.strategies.linear_probe import LinearProbe
from tlbench.strategies.lora import LoRA
from tlbench.strategies.lp_ft import LPFT
from tlbench.strategies.scratch import Scratch
from tlbench.strategies.ssf import SSF
from tlbench.strategies.surgical import Surgical
from tlbench.strategies.ulmfit import ULMFiT
from tlbench.strategies.vpt import VPT

STRATEGIES: Registry[Strategy] = Registry("strategy", Strategy)
for _cls in (LinearProbe, FullFinetune, Scratch, GradualUnfreeze, DiscriminativeLR, LPFT, L2SPStrategy,
             Surgical, KnowledgeDistillation, Ensemble, ULMFiT, BitFit, LoRA, Adapter, VPT, SSF):
    STRATEGIES.add(_cls)

__all__ = ["STRATEGIES", "Predictor", "Strategy"]
