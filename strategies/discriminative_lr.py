"""Discriminative learning rates: each layer group trains at a rate that decays towards the
input (layer-wise decay).
"""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import (
    layerwise_lr_groups,
    suggest_decay,
    suggest_optimizer,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class DiscriminativeLR(Strategy):
    """Discriminative fine-tuning (Howard & Ruder 2018, §3.2), a.k.a. layer-wise learning-rate
    decay (Bao et al. 2022, BEiT; timm's ``param_groups_layer_decay``): all groups train,
    group ``i`` of ``n`` at ``lr · decay^(n − i)`` and the head at ``lr``; ``decay`` is
    searched in [0.3, 1.0] (1.0 is plain fine-tuning)."""

    name = "discriminative_lr"
    description = "layer-wise learning-rate decay: lower groups train at geometrically smaller rates"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "lr_decay": suggest_decay(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, groups=layerwise_lr_groups(model, params["lr_decay"]))
