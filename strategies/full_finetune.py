"""Full fine-tuning, and the from-scratch baseline that shares its recipe."""

from __future__ import annotations

import copy
from typing import Any

import optuna
import torch

from harness.backbones import Backbone, Classifier
from harness.runtime import Runtime
from harness.train import Reporter, fit_epochs, steps_per_epoch
from strategies.base import ModelPredictor, Predictor, Strategy, count_trainable
from strategies.parts import make_optimizer, suggest_optimizer, warmup_cosine
from suites.tasks import Task


def finetune(backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
             reporter: Reporter, runtime: Runtime, batch_size: int) -> ModelPredictor:
    """Trains every layer group and a fresh head with warmup + cosine; ``backbone`` is
    copied, never changed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(copy.deepcopy(backbone), backbone.new_head(task.num_classes))
        model = model.to(runtime.device)
        opt = make_optimizer(model.parameters(), params)
        total = params["epochs"] * steps_per_epoch(len(task.train), batch_size)
        sched = warmup_cosine(opt, total, params["warmup_fraction"])
        fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y),
                   epochs=params["epochs"], batch_size=batch_size, seed=seed,
                   device=runtime.device, reporter=reporter, scheduler=sched)
    return ModelPredictor(model, device=runtime.device, trainable=count_trainable(model))


class FullFinetune(Strategy):
    """Fine-tune all layer groups from the pretrained weights."""

    name = "full_finetune"
    description = "all layer groups + new head trained; SGD/AdamW, warmup + cosine"

    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        return finetune(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size)


class Scratch(FullFinetune):
    """The same architecture and recipe from random initialisation: did transfer pay off?"""

    name = "scratch"
    description = "same architecture from random init, full-fine-tune recipe (baseline)"

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        return finetune(backbone.reinitialized(seed), task, params, seed=seed, reporter=reporter,
                        runtime=runtime, batch_size=self.batch_size)
