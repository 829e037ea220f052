"""Reusing trained models, as a strategy sees it: a teacher for distillation, members for
an ensemble.

A strategy that reuses other strategies' models asks the cell's :class:`ModelServer`
(``runtime.members``) for "model *k* of strategy S" and gets a :class:`Member`: its logits
on every split, its cost and, when asked for, its weights. How models are found, stored or
trained again is the runner's business (:mod:`tlbench.members`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from tlbench.backbones import Backbone
from tlbench.data import Split, Task

if TYPE_CHECKING:
    from tlbench.runtime import Runtime


@dataclass
class Member:
    """A trained model as other strategies see it."""

    strategy: str
    index: int
    seed: int
    params: dict[str, Any]
    logits: dict[str, torch.Tensor]  # split fingerprint → (N, C) logits
    #: Training seconds of every model this one took to make, by model key: its own and
    #: those of the models it reused (a teacher), so a model reused twice is counted once.
    costs: dict[str, float]
    trainable_parameters: int
    inference_parameters: int
    inference_seconds: float  # one pass over the test split
    state: dict[str, torch.Tensor] | None = None

    @property
    def train_seconds(self) -> float:
        return sum(self.costs.values())

    def logits_for(self, split: Split) -> torch.Tensor:
        try:
            return self.logits[split.fingerprint]
        except KeyError:
            raise KeyError(f"{self.strategy} model #{self.index} has no logits for split "
                           f"{split.fingerprint}") from None

    @property
    def label(self) -> str:
        return f"{self.strategy}#{self.index}"


def splits_of(task: Task) -> list[Split]:
    return [s for s in (task.train, task.val, task.test, task.shifted_test) if s is not None]


class ModelServer(ABC):
    """The models other strategies trained in one cell (task × backbone), by evaluation-seed
    index: model *k* of a strategy is the one its evaluation run with seed index *k* trains."""

    #: The suite's name of the cell's backbone.
    backbone_name: str
    #: Seconds spent so far training models on demand; a run that triggered such training
    #: subtracts it from its own time (the models' time is counted as reused instead).
    fit_seconds: float = 0.0

    @abstractmethod
    def get(self, strategy: str, index: int, runtime: "Runtime") -> Member:
        """Model ``index`` of ``strategy`` in this cell (trained on demand if needed)."""

    @abstractmethod
    def index_of(self, seed: int) -> int:
        """The evaluation-seed index of a training seed; 0 for any other seed (tuning trials
        use the models of evaluation seed 0)."""

    @abstractmethod
    def get_backbone(self, name: str) -> Backbone:
        """Another backbone of the suite (a distillation's student)."""

    @abstractmethod
    def task_of(self, backbone: str) -> Task:
        """The cell's task as backbone ``backbone`` reads it (same examples, same order)."""


class OwnTime:
    """A stopwatch for a strategy's own time: the wall time since it started, minus the time
    ``members`` spent meanwhile training models on demand (those count as reused)."""

    def __init__(self, members: ModelServer | None) -> None:
        self.members = members
        self.start = time.perf_counter()
        self.nested = members.fit_seconds if members is not None else 0.0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def seconds(self) -> float:
        on_demand = self.members.fit_seconds - self.nested if self.members is not None else 0.0
        return self.elapsed - on_demand
