"""Gradual unfreezing: the head trains first, then the layer groups one after another from the
output towards the input.
"""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import (
    FreezeSchedule,
    suggest_schedule_and_optimizer,
    suggest_stage_length,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class GradualUnfreeze(Strategy):
    """Gradual unfreezing (Howard & Ruder 2018, "Universal Language Model Fine-tuning for
    Text Classification", §3.3): the new head trains alone for ``epochs_per_stage`` epochs,
    then the next layer group from the top is unfrozen at each stage until all train.
    Searched: optimizer and learning rate, epochs, epochs per stage, and the schedule
    (warmup + cosine, or ULMFiT's slanted triangular rate)."""

    name = "gradual_unfreeze"
    description = "ULMFiT gradual unfreezing: head first, one more group from the top per stage"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_schedule_and_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "epochs_per_stage": suggest_stage_length(trial, backbone, self.epochs[0])}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        unfreeze = FreezeSchedule.gradual(len(backbone.groups) + 1, params["epochs_per_stage"])
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[unfreeze])
