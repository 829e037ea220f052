"""Strategies that change *which* layers train *when* or *how fast*: gradual unfreezing,
discriminative learning rates, their ULMFiT combination, and surgical fine-tuning."""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.backbones import Backbone
from tlbench.data import Task
from tlbench.runtime import Runtime
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import finetune, new_classifier
from tlbench.strategies.parts import (
    FreezeSchedule,
    layerwise_lr_groups,
    suggest_optimizer,
    suggest_schedule_and_optimizer,
)
from tlbench.train import Reporter


def suggest_stage_length(trial: optuna.Trial, backbone: Backbone, min_epochs: int) -> int:
    """Epochs per unfreezing stage, at most what lets every group unfreeze within the
    shortest searched run (ULMFiT used one epoch per stage). When even one epoch per stage
    is too long for the shortest runs, their lowest groups stay frozen."""
    stages = len(backbone.groups)  # stages after the head-only one
    return trial.suggest_int("epochs_per_stage", 1, max(1, (min_epochs - 1) // stages))


def suggest_decay(trial: optuna.Trial) -> float:
    """Layer-wise decay; ULMFiT's 1/2.6 ≈ 0.38 and BEiT's 0.65–0.9 are inside the range."""
    return trial.suggest_float("lr_decay", 0.3, 1.0)


class GradualUnfreeze(Strategy):
    """Gradual unfreezing (Howard & Ruder 2018, "Universal Language Model Fine-tuning for
    Text Classification", §3.3): the new head trains alone for ``epochs_per_stage`` epochs,
    then the next layer group from the top is unfrozen at each stage until all train.
    Searched: optimizer and learning rate, epochs, epochs per stage, and the schedule
    (warmup + cosine, or ULMFiT's slanted triangular rate)."""

    name = "gradual_unfreeze"
    description = "ULMFiT gradual unfreezing: head first, one more group from the top per stage"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_schedule_and_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "epochs_per_stage": suggest_stage_length(trial, backbone, self.epochs[0])}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        unfreeze = FreezeSchedule.gradual(len(backbone.groups) + 1, params["epochs_per_stage"])
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[unfreeze])


class DiscriminativeLR(Strategy):
    """Discriminative fine-tuning (Howard & Ruder 2018, §3.2), a.k.a. layer-wise learning-rate
    decay (Bao et al. 2022, BEiT; timm's ``param_groups_layer_decay``): all groups train,
    group ``i`` of ``n`` at ``lr · decay^(n − i)`` and the head at ``lr``; ``decay`` is
    searched in [0.3, 1.0] (1.0 is plain fine-tuning)."""

    name = "discriminative_lr"
    description = "layer-wise learning-rate decay: lower groups train at geometrically smaller rates"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "lr_decay": suggest_decay(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, groups=layerwise_lr_groups(model, params["lr_decay"]))


class ULMFiT(Strategy):
    """ULMFiT's whole recipe (Howard & Ruder 2018): gradual unfreezing + discriminative
    learning rates + slanted triangular schedule — the parts of the two strategies above,
    composed in a few lines (see the README, "writing your own strategy")."""

    name = "ulmfit"
    description = "gradual unfreezing + discriminative learning rates + slanted triangular schedule"

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


class Surgical(Strategy):
    """Surgical fine-tuning (Lee et al. 2023, "Surgical Fine-Tuning Improves Adaptation to
    Distribution Shifts", ICLR): only one layer group trains — which one is a searched
    categorical — while the rest stay frozen (batch-norm statistics included). The task
    has new classes, so the new head trains too (in the paper the head was pretrained)."""

    name = "surgical"
    description = "only one searched layer group (+ the new head) is fine-tuned, the rest frozen"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "group": trial.suggest_categorical("group", list(range(len(backbone.groups))))}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        head = len(backbone.groups)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, hooks=[FreezeSchedule.only({params["group"], head})])
