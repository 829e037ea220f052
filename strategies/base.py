"""The Strategy contract and the predictors that strategies return."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import optuna
import torch
from torch import nn

from harness.backbones import Backbone
from harness.runtime import Runtime
from harness.train import Reporter, predict_logits
from suites.tasks import Split, Task


class Predictor(ABC):
    """What a fitted strategy returns: something that scores splits."""

    @abstractmethod
    def logits(self, split: Split) -> torch.Tensor:
        """Logits (N, C) on the CPU for every example of ``split``."""

    @property
    @abstractmethod
    def trainable_parameters(self) -> int:
        """How many parameters the strategy trained."""


class ModelPredictor(Predictor):
    """Predicts with a whole trained network."""

    def __init__(self, model: nn.Module, *, device: torch.device, trainable: int) -> None:
        self.model = model
        self.device = device
        self._trainable = trainable

    def logits(self, split: Split) -> torch.Tensor:
        return predict_logits(self.model, split.x, device=self.device)

    @property
    def trainable_parameters(self) -> int:
        return self._trainable


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class Strategy(ABC):
    """A way of adapting a pretrained backbone to a task.

    ``__init__`` stores options only (scikit-learn's rule); ``search_space`` declares the
    hyperparameters with Optuna's suggest API; ``fit`` trains and returns a predictor. The
    backbone passed to ``fit`` is shared with other strategies and must not be mutated.

    Args:
        epochs: the (min, max) epoch range searched, the same for every strategy of a suite.
        batch_size: the mini-batch size, the same for every strategy of a suite.
    """

    name: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, *, epochs: tuple[int, int] = (5, 40), batch_size: int = 32) -> None:
        self.epochs = tuple(epochs)
        self.batch_size = batch_size

    def suggest_epochs(self, trial: optuna.Trial) -> int:
        low, high = self.epochs
        return trial.suggest_int("epochs", low, high) if low < high else low

    @abstractmethod
    def search_space(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggests one configuration; returns the params ``fit`` consumes."""

    @abstractmethod
    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        """Trains on ``task.train``, reports ``task.val`` accuracy each epoch."""
