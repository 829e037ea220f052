"""Full fine-tuning, and :func:`finetune`, the routine every fine-tuning strategy composes."""

from __future__ import annotations

import copy
from typing import Any, Iterable, Sequence

import optuna
import torch
from torch import nn

from tlbench.data.splits import Task
from tlbench.strategies.base import ModelPredictor, Predictor, Strategy
from tlbench.strategies.parts import make_optimizer, make_schedule, suggest_optimizer
from tlbench.training.backbones import Backbone, Classifier
from tlbench.training.context import Runtime
from tlbench.training.loop import Criterion, Hook, Reporter, cross_entropy, fit_epochs, steps_per_epoch


def new_classifier(backbone: Backbone, num_classes: int, *, seed: int, runtime: Runtime,
                   head: nn.Linear | None = None) -> Classifier:
    """A copy of ``backbone`` with a fresh head drawn from ``seed`` (or a copy of ``head``)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = backbone.new_head(num_classes) if head is None else copy.deepcopy(head)
        return Classifier(copy.deepcopy(backbone), new).to(runtime.device)


def finetune(model: Classifier, task: Task, params: dict[str, Any], *, seed: int,
             reporter: Reporter, runtime: Runtime, batch_size: int,
             groups: Iterable[Any] | None = None, hooks: Sequence[Hook] = (),
             criterion: Criterion = cross_entropy) -> ModelPredictor:
    """Trains ``model`` in place for ``params["epochs"]`` epochs and wraps it as a predictor.

    The parts a strategy varies: ``groups`` (parameter groups with ``lr_scale``; default all
    parameters at ``params["lr"]``), the schedule named by ``params["schedule"]`` (default
    warmup + cosine), ``hooks`` (freezing schedules, penalties) and ``criterion``. A
    parameter counts as trained when it was trainable in at least one epoch.
    """
    opt = make_optimizer(model.parameters() if groups is None else groups, params,
                         decay_norm_and_bias=runtime.decay_norm_and_bias)
    total = params["epochs"] * steps_per_epoch(len(task.train), batch_size)
    sched = make_schedule(opt, total, params)
    tracker = _UpdatedParameters(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y),
                   epochs=params["epochs"], batch_size=batch_size, seed=seed,
                   device=runtime.device, reporter=reporter, scheduler=sched,
                   hooks=[*hooks, tracker], criterion=criterion, execution=runtime.execution)
    # counted when asked: trained side by side with other seeds, the run trains after fit returns
    return ModelPredictor(model, device=runtime.device, trainable=lambda: tracker.count, execution=runtime.execution)


class _UpdatedParameters(Hook):
    """Counts the parameters that were trainable in at least one epoch (runs after the
    other hooks, so it sees their freezing). Stackable: it reads the flags of the model it is
    given, by position, and counts the sizes of its own model's parameters."""

    stackable = True

    def __init__(self, model: nn.Module) -> None:
        self.params = list(model.parameters())
        self.seen: set[int] = set()

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.seen |= {i for i, p in enumerate(model.parameters()) if p.requires_grad}

    def stack_key(self) -> tuple[()]:
        return ()  # no settings: it only reads the flags

    @property
    def count(self) -> int:
        return sum(self.params[i].numel() for i in self.seen)


class FullFinetune(Strategy):
    """Fine-tune all layer groups from the pretrained weights."""

    name = "full_finetune"
    description = "all layer groups + new head trained; SGD/AdamW, warmup + cosine"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size)
