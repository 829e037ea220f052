"""Strategies that change *where* fine-tuning starts or *what* it is pulled towards:
LP-FT and L2-SP."""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.backbones import Backbone
from tlbench.data import Task
from tlbench.runtime import Runtime
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.linear_probe import suggest_probe, train_probe
from tlbench.strategies.parts import L2SP, suggest_optimizer
from tlbench.train import Reporter, SpendOnly


class LPFT(Strategy):
    """LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and
    Underperform Out-of-Distribution", ICLR): first a linear probe on the frozen, cached
    features, then full fine-tuning starting from the probed head, so the random head does
    not distort the pretrained features early on. Both stages' hyperparameters are searched;
    the probe stage is cheap (cached features) and the fine-tuning stage reports to the pruner."""

    name = "lp_ft"
    description = "linear probe on cached features, then full fine-tuning from the probed head"

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


class L2SPStrategy(Strategy):
    """L2-SP (Li, Grandvalet & Davoine 2018, "Explicit Inductive Bias for Transfer Learning
    with Convolutional Networks", ICML): fine-tuning with ``α/2·‖w − w₀‖²`` towards the
    pretrained weights ``w₀`` plus ``β/2·‖w_head‖²`` on the new head, in place of weight
    decay. α in [1e-4, 1] and β in [1e-4, 0.1] on log scales (the paper's α = 0.1,
    β = 0.01 are inside)."""

    name = "l2_sp"
    description = "fine-tuning with an L2 penalty towards the pretrained weights (replaces weight decay)"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial, weight_decay=False), "epochs": self.suggest_epochs(trial),
                "alpha": trial.suggest_float("alpha", 1e-4, 1.0, log=True),
                "beta": trial.suggest_float("beta", 1e-4, 0.1, log=True)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[L2SP(model, params["alpha"], params["beta"])])
