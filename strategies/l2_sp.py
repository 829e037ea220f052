"""L2-SP (Li et al. 2018): fine-tuning pulled towards the pretrained weights by a penalty on
their distance.
"""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import L2SP, suggest_optimizer
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class L2SPStrategy(Strategy):
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks", ICML): fine-tuning with ``α/2·‖w − w₀‖²`` towards the
    pretrained weights ``w₀`` plus ``β/2·‖w_head‖²`` on the new head, in place of weight
    decay. α in [1e-4, 1] and β in [1e-4, 0.1] on log scales (the paper's α = 0.1,
    β = 0.01 are inside)."""

    name = "l2_sp"
    description = "fine-tuning with an L2 penalty towards the pretrained weights (replaces weight decay)"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial, weight_decay=False), "epochs": self.suggest_epochs(trial),
                "alpha": trial.suggest_float("alpha", 1e-4, 1.0, log=True),
                "beta": trial.suggest_float("beta", 1e-4, 0.1, log=True)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[L2SP(model, params["alpha"], params["beta"])])
