"""LP-FT (Kumar et al. 2022): fine-tuning that starts from a linearly probed head, so the first
updates do not distort the pretrained features.
"""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.linear_probe import suggest_probe, train_probe
from tlbench.strategies.parts import suggest_optimizer
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter, SpendOnly


class LPFT(Strategy):
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution", ICLR): first a linear probe on the frozen, cached
    features, then full fine-tuning starting from the probed head, so the random head does
    not distort the pretrained features early on. Both stages' hyperparameters are searched;
    the probe stage is cheap (cached features) and the fine-tuning stage reports to the pruner."""

    name = "lp_ft"
    description = "linear probe on cached features, then full fine-tuning from the probed head"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        probe_epochs = self.suggest_epochs(trial, "probe_epochs")
        return {**suggest_probe(trial, probe_epochs, prefix="probe_"), **suggest_optimizer(trial),
                "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        probe = {k.removeprefix("probe_"): v for k, v in params.items() if k.startswith("probe_")}
        head = train_probe(backbone, task, probe, seed=seed, reporter=SpendOnly(reporter), runtime=runtime,
                           batch_size=self.batch_size)
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime, head=head)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size)
