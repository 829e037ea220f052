"""Surgical fine-tuning (Lee et al. 2023): one layer group, chosen by the tuner, trains with the new
head; the rest stays frozen."""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import (
    FreezeSchedule,
    suggest_optimizer,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class Surgical(Strategy):
    """Surgical fine-tuning (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to
    Distribution Shifts", ICLR): only one layer group trains — which one is a searched
    categorical — while the rest stay frozen (batch-norm statistics included). The task
    has new classes, so the new head trains too (in the paper the head was pretrained)."""

    name = "surgical"
    description = "only one searched layer group (+ the new head) is fine-tuned, the rest frozen"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "group": trial.suggest_categorical("group", list(range(len(backbone.groups))))}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        head = len(backbone.groups)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[FreezeSchedule.only({params["group"], head})])
