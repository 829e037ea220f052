"""ULMFiT (Howard and Ruder 2018): gradual unfreezing with discriminative learning rates and a
slanted triangular schedule.
"""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import (
    FreezeSchedule,
    layerwise_lr_groups,
    suggest_decay,
    suggest_optimizer,
    suggest_stage_length,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class ULMFiT(Strategy):
    """ULMFiT's whole recipe (Howard & Ruder 2018): gradual unfreezing + discriminative
    learning rates + slanted triangular schedule — the parts of the two strategies above,
    composed in a few lines (see docs/guides/own-strategy.md, "Writing your own strategy")."""

    name = "ulmfit"
    description = "gradual unfreezing + discriminative learning rates + slanted triangular schedule"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial, warmup=False), "schedule": "stlr", "epochs": self.suggest_epochs(trial),
                "epochs_per_stage": suggest_stage_length(trial, backbone, self.epochs[0]),
                "lr_decay": suggest_decay(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, groups=layerwise_lr_groups(model, params["lr_decay"]),
                        hooks=[FreezeSchedule.gradual(len(backbone.groups) + 1, params["epochs_per_stage"])])
