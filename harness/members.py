"""Reusing trained models: a teacher for distillation, members for an ensemble.

Every evaluation run leaves an artifact: its logits on each split (and, when an ensemble
may average weights, its weights). :class:`Members` serves the model of strategy ``S`` at
evaluation-seed index ``k`` of a cell: from memory, else from the artifact store, else by
fitting ``S`` with its tuned configuration and that seed (deterministic, so the result is
the same model the evaluation run trained) and storing it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from harness.atomic import load_or_none, save_atomic
from harness.backbones import Backbone
from harness.errors import ConfigError, NonFiniteLoss
from harness.train import NullReporter
from suites.tasks import Split, Task

ARTIFACT_VERSION = 2


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
                           f"{split.name} ({split.fingerprint})") from None

    @property
    def label(self) -> str:
        return f"{self.strategy}#{self.index}"


def splits_of(task: Task) -> list[Split]:
    return [s for s in (task.train, task.val, task.test, task.shifted_test) if s is not None]


def member_from(predictor: Any, *, key: str, strategy: str, index: int, seed: int,
                params: dict[str, Any], task: Task, seconds: float, inference_seconds: float | None = None,
                logits: dict[str, torch.Tensor] | None = None, keep_weights: bool = False) -> Member:
    """Wraps a fitted predictor: its logits on every split of ``task`` (reusing ``logits``
    already computed, by fingerprint), its cost and optionally its weights."""
    logits = dict(logits or {})
    if inference_seconds is None:
        start = time.perf_counter()
        logits[task.test.fingerprint] = predictor.logits(task.test)
        inference_seconds = predictor.inference_seconds(task.test, measured=time.perf_counter() - start)
    for split in splits_of(task):
        if split.fingerprint not in logits:
            logits[split.fingerprint] = predictor.logits(split)
    return Member(strategy, index, seed, dict(params), logits, costs={**predictor.reused, key: seconds},
                  trainable_parameters=predictor.trainable_parameters,
                  inference_parameters=predictor.inference_parameters, inference_seconds=inference_seconds,
                  state=predictor.state() if keep_weights else None)


class ModelStore:
    """Artifacts on disk (``root``), or only in memory when ``root`` is None."""

    def __init__(self, root: Path | None) -> None:
        self.root = root

    def path(self, key: str) -> Path | None:
        return self.root / f"{key}.pt" if self.root else None

    def load(self, key: str, *, need_weights: bool) -> Member | None:
        data = load_or_none(self.path(key))  # a torn or foreign file is refitted, not trusted
        if not isinstance(data, dict) or data.get("version") != ARTIFACT_VERSION:
            return None
        if need_weights and data.get("state") is None:
            return None
        data.pop("version")
        return Member(**data)

    def save(self, key: str, member: Member) -> None:
        path = self.path(key)
        if path is not None:
            save_atomic({"version": ARTIFACT_VERSION, **member.__dict__}, path)


class OwnTime:
    """A stopwatch for a strategy's own time: the wall time since it started, minus the time
    ``members`` spent meanwhile training models on demand (those count as reused)."""

    def __init__(self, members: "Members | None") -> None:
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


@dataclass
class Members:
    """Models of other strategies in one cell (task × backbone), by evaluation-seed index.

    Args:
        cell: ``suite::task::backbone``, the namespace of the cell's artifacts.
        context: what else shapes every model of the cell (the suite's settings
            fingerprint, the code version); part of every artifact key.
        backbone_name: the suite's name of the cell's backbone.
        task, backbone: the cell's task and (pretrained) backbone.
        make_strategy: builds a strategy by name with the suite's options.
        best_params: the tuned configuration of a strategy in this cell (raises
            ``ConfigError`` when it has not been tuned).
        seed_of: evaluation-seed index → training seed.
        store: where artifacts live.
        backbones: every backbone of the suite by name (students for distillation).
        keep_weights: strategies whose artifacts must include weights (soup members).
        task_for: the cell's task as another backbone reads it (image files preprocessed
            for its weights; a distillation student's); default: the cell's task.
    """

    cell: str
    context: str
    backbone_name: str
    task: Task
    backbone: Backbone
    make_strategy: Callable[[str], Any]
    best_params: Callable[[str], dict[str, Any]]
    seed_of: Callable[[int], int]
    store: ModelStore
    backbones: Mapping[str, Backbone] = field(default_factory=dict)
    keep_weights: frozenset[str] = frozenset()
    task_for: Callable[[str], Task] | None = None
    #: Strategies some other strategy reuses: only their evaluation runs leave artifacts.
    needed: frozenset[str] = frozenset()
    #: Seconds spent so far training models on demand; a run that triggered such training
    #: subtracts it from its own time (the models' time is counted as reused instead).
    fit_seconds: float = 0.0
    _memory: dict[str, Member] = field(default_factory=dict, repr=False)
    _failed: dict[str, NonFiniteLoss] = field(default_factory=dict, repr=False)

    def index_of(self, seed: int) -> int:
        """The evaluation-seed index of a training seed; 0 for any other seed (tuning
        trials use the models of evaluation seed 0)."""
        k = seed - self.seed_of(0)
        return k if 0 <= k < 1 << 20 and self.seed_of(k) == seed else 0

    def key(self, strategy: str, seed: int, params: dict[str, Any]) -> str:
        """The artifact key of a model: everything that shapes it. ``params`` of a strategy
        that reuses others include a digest of their configurations (see
        :func:`harness.runner.with_dependencies`), so a re-tuned teacher means a new key."""
        blob = json.dumps({"params": params, "seed": seed, "task": self.task.fingerprint,
                           "weights": self.backbone.weights_id, "context": self.context},
                          sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        safe = self.cell.replace("::", "/")
        return f"{safe}/{strategy}/{digest}"

    def get_backbone(self, name: str) -> Backbone:
        try:
            return self.backbones[name]
        except KeyError:
            raise ConfigError(f"backbone {name!r} is not available to this cell; "
                              f"defined: {', '.join(self.backbones) or 'none'}") from None

    def task_of(self, backbone: str) -> Task:
        """The cell's task as backbone ``backbone`` reads it (same examples, same order)."""
        return self.task if self.task_for is None else self.task_for(backbone)

    def record(self, key: str, member: Member) -> None:
        """Keeps the model an evaluation run just trained (called by the evaluator)."""
        self._memory[key] = member
        self.store.save(key, member)

    def get(self, strategy: str, index: int, runtime: Any) -> Member:
        params = self.best_params(strategy)
        seed = self.seed_of(index)
        key = self.key(strategy, seed, params)
        need_weights = strategy in self.keep_weights
        member = self._memory.get(key)
        if member is not None and (member.state is not None or not need_weights):
            return member
        if key in self._failed:  # diverged before: do not train it again for every trial
            raise self._failed[key]
        member = self.store.load(key, need_weights=need_weights)
        if member is None:
            member = self._fit(key, strategy, index, seed, params, runtime, keep_weights=need_weights)
            self.store.save(key, member)
        self._memory[key] = member
        return member

    def _fit(self, key: str, strategy: str, index: int, seed: int, params: dict[str, Any], runtime: Any, *,
             keep_weights: bool) -> Member:
        clock = OwnTime(self)
        try:
            predictor = self.make_strategy(strategy).fit(self.backbone, self.task, params, seed=seed,
                                                         reporter=NullReporter(), runtime=runtime)
        except NonFiniteLoss as err:
            self._failed[key] = NonFiniteLoss(err.epoch, err.value, what=f"{strategy} model #{index}")
            raise self._failed[key] from None
        member = member_from(predictor, key=key, strategy=strategy, index=index, seed=seed, params=params,
                             task=self.task, seconds=clock.seconds, keep_weights=keep_weights)  # minus models
        self.fit_seconds = clock.nested + clock.elapsed  # it needed in turn; the caller's own time excludes all
        return member
