"""Linear probe: a linear head on frozen, cached backbone features."""

from __future__ import annotations

from typing import Any

import optuna
import torch
from torch import nn

from tlbench.data.splits import Split, Task
from tlbench.strategies.base import Predictor, Strategy, cpu_state
from tlbench.training.backbones import Backbone, Classifier
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter, fit_linear_head, forward_flops, median_seconds, predict_logits, spend


class ProbePredictor(Predictor):
    """Frozen backbone + head; scores splits through the feature cache."""

    def __init__(self, backbone: Backbone, head: nn.Linear, runtime: Runtime) -> None:
        self.backbone = backbone
        self.head = head
        self.runtime = runtime

    def logits(self, split: Split) -> torch.Tensor:
        feats = self.runtime.features.get(self.backbone, split.x, split.fingerprint,
                                          device=self.runtime.device, execution=self.runtime.execution)
        with torch.inference_mode():
            return self.head(feats.to(self.runtime.device)).float().cpu()

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.head.parameters())

    def inference_seconds(self, split: Split, *, measured: float) -> float:
        """Timed through the backbone (:meth:`logits` reads cached features): a warm-up
        pass, then the median of timed ones, as for every other predictor."""
        model = Classifier(self.backbone, self.head)

        def run() -> torch.Tensor:
            return predict_logits(model, split.x, device=self.runtime.device, execution=self.runtime.execution)

        run()
        return median_seconds(run)

    @property
    def inference_parameters(self) -> int:
        return sum(p.numel() for p in self.backbone.parameters()) + self.trainable_parameters

    def state(self) -> dict[str, torch.Tensor]:
        return cpu_state(Classifier(self.backbone, self.head))


def suggest_probe(trial: optuna.Trial, epochs: int, prefix: str = "") -> dict[str, Any]:
    """The probe's AdamW learning rate and weight decay (names prefixed for composites)."""
    return {
        f"{prefix}lr": trial.suggest_float(f"{prefix}lr", 1e-4, 1e-1, log=True),
        f"{prefix}weight_decay": trial.suggest_float(f"{prefix}weight_decay", 1e-6, 1e-1, log=True),
        f"{prefix}epochs": epochs,
    }


def train_probe(backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
                reporter: Reporter, runtime: Runtime, batch_size: int) -> nn.Linear:
    """Trains a fresh linear head with AdamW on cached features; the backbone never runs
    more than once per (weights, split) and no autograd graph is built."""
    def feats(split: Split) -> torch.Tensor:
        return runtime.features.get(backbone, split.x, split.fingerprint, device=runtime.device,
                                    execution=runtime.execution)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = backbone.new_head(task.num_classes).to(runtime.device)
    # The feature pass is charged to every probe, cached or not: what a probe costs does not
    # depend on which run computed the features first.
    x1 = task.train.x.head(1) if task.lazy else task.train.x[:1]  # type: ignore[union-attr]
    spend(reporter, forward_flops(backbone, x1) * len(task.train))
    fit_linear_head(head, (feats(task.train), task.train.y), (feats(task.val), task.val.y),
                    lr=params["lr"], weight_decay=params["weight_decay"], epochs=params["epochs"],
                    batch_size=batch_size, seed=seed, device=runtime.device, reporter=reporter,
                    decay_bias=runtime.decay_norm_and_bias)
    return head


class LinearProbe(Strategy):
    """Train only a linear head on frozen pretrained features (features computed once)."""

    name = "linear_probe"
    description = "frozen backbone, linear head trained on cached features"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return suggest_probe(trial, self.suggest_epochs(trial))

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        head = train_probe(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime,
                           batch_size=self.batch_size)
        return ProbePredictor(backbone, head, runtime)
