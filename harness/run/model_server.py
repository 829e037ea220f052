"""Serving other strategies' trained models inside a cell: the runner's side of model reuse.

Two pieces, one job each:

- :class:`ArtifactStore` keeps a :class:`~tlbench.training.context.Member` (logits per split, cost, and
  weights where an ensemble may average them) on disk under a key, and never trusts a torn
  or foreign file.
- :class:`Members` (a :class:`~tlbench.training.context.ModelServer`) answers "model *k* of strategy S"
  from memory, else from the store, else by fitting S with its tuned configuration and
  evaluation seed *k* (deterministic on CPU, so the same model its evaluation run trained).
  What it needs to know about the suite — how to make a strategy, its tuned configuration,
  the seeds, how another backbone reads the task — comes from a :class:`CellRecipes`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ContextManager, Iterable, Mapping

from tlbench.core.atomic import building, load_or_none, save_atomic
from tlbench.core.errors import ConfigError, NonFiniteLoss
from tlbench.data.splits import Task
from tlbench.training import deferral
from tlbench.training.backbones import Backbone
from tlbench.training.context import Member, ModelServer, OwnTime, splits_of
from tlbench.training.loop import NullReporter, median_seconds
from tlbench.training.vectorised import side_by_side

if TYPE_CHECKING:
    from tlbench.strategies.base import Predictor, Strategy
    from tlbench.training.context import Runtime

ARTIFACT_VERSION = 2


def member_from(predictor: "Predictor", *, key: str, strategy: str, index: int, seed: int,
                params: dict[str, Any], task: Task, seconds: float, inference_seconds: float | None = None,
                logits: dict[str, Any] | None = None, keep_weights: bool = False) -> Member:
    """Wraps a fitted predictor: its logits on every split of ``task`` (reusing ``logits``
    already computed, by fingerprint), its cost and optionally its weights."""
    logits = dict(logits or {})
    if inference_seconds is None:  # timed as an evaluation run's: a warm-up pass, then the median
        logits[task.test.fingerprint] = predictor.logits(task.test)
        measured = median_seconds(lambda: predictor.logits(task.test))
        inference_seconds = predictor.inference_seconds(task.test, measured=measured)
    for split in splits_of(task):
        if split.fingerprint not in logits:
            logits[split.fingerprint] = predictor.logits(split)
    return Member(strategy, index, seed, dict(params), logits, costs={**predictor.reused, key: seconds},
                  trainable_parameters=predictor.trainable_parameters,
                  inference_parameters=predictor.inference_parameters, inference_seconds=inference_seconds,
                  state=predictor.state() if keep_weights else None)


class ArtifactStore:
    """Trained models on disk under ``root`` (only in memory when ``root`` is None)."""

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

    def building(self, key: str) -> ContextManager[None]:
        """While open, this worker alone makes what is stored under ``key``
        (:func:`tlbench.core.atomic.building`: an operating-system lock a killed holder releases);
        workers sharing the folder that miss it too wait, then read it. Without a folder: no lock."""
        path = self.path(key)
        return building(path) if path is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Reuse:
    """Which strategies' models are reused in a suite: ``needed`` (their evaluation runs
    leave artifacts), ``keep_weights`` (those whose weights, not only predictions, are
    reused: soup members) and ``per_seed`` (how many models of each one evaluation run of a
    dependent asks for, the most over the suite's dependents: an ensemble of three, three)."""

    needed: frozenset[str] = frozenset()
    keep_weights: frozenset[str] = frozenset()
    per_seed: Mapping[str, int] = field(default_factory=dict, hash=False)

    @classmethod
    def of(cls, strategies: Iterable["Strategy"]) -> "Reuse":
        """What ``strategies`` (a suite's) reuse of each other."""
        strategies = list(strategies)
        per_seed: dict[str, int] = {}
        for strategy in strategies:
            asked = strategy.models_per_seed()
            for name, count in asked.items():
                if name not in strategy.requires() or isinstance(count, bool) or not isinstance(count, int) \
                        or count < 1:
                    raise ConfigError(f"strategy {strategy.name!r}: models_per_seed() gave {name!r}: {count!r}; "
                                      f"allowed: a whole number ≥ 1 for each of requires() "
                                      f"({', '.join(strategy.requires()) or 'none'})")
                per_seed[name] = max(per_seed.get(name, 1), count)
        return cls(frozenset(r for s in strategies for r in s.requires()),
                   frozenset(r for s in strategies for r in s.requires_weights()), per_seed)


class CellRecipes(ABC):
    """How the models of one cell are made: what :class:`Members` asks of the suite."""

    #: (suite, task, backbone): where the cell's artifacts live.
    cell: tuple[str, str, str]
    #: What else shapes every model of the cell (the suite's settings fingerprint).
    context: str
    #: The suite's name of the cell's backbone.
    backbone_name: str
    reuse: Reuse

    @abstractmethod
    def strategy(self, name: str) -> "Strategy":
        """Strategy ``name`` with the suite's settings and options."""

    def code(self, strategy: str) -> str:
        """The code that shapes ``strategy``'s models (part of their artifact keys); none outside a suite."""
        return ""

    @abstractmethod
    def params(self, name: str) -> dict[str, Any]:
        """The tuned configuration of ``name`` in this cell (``ConfigError`` if it has none)."""

    @abstractmethod
    def seed(self, index: int) -> int:
        """The training seed of evaluation-seed index ``index``."""

    @abstractmethod
    def task(self, backbone: str) -> Task:
        """The cell's task as ``backbone`` reads it (image files preprocessed for its weights), as
        its evaluation runs train on it."""

    def tuning_task(self, backbone: str) -> Task:
        """The cell's task as its tuning trials train on it: where the evaluation runs train on
        train + val (``split.final_fit``), the trials train on train alone; otherwise the same."""
        return self.task(backbone)

    def seeds(self) -> int:
        """How many evaluation seeds the cell has: models ``0 … seeds − 1`` of a strategy are
        those its evaluation runs train. 0: not known (no model is then trained in a block)."""
        return 0


@dataclass
class Members(ModelServer):
    """The model server of one cell (task × backbone).

    Args:
        recipes: how the cell's models are made.
        store: where their artifacts live.
        backbones: every backbone of the suite by name (students for distillation).
    """

    recipes: CellRecipes
    store: ArtifactStore
    backbones: Mapping[str, Backbone]
    fit_seconds: float = 0.0
    #: Serves the tuning trials (:meth:`for_tuning`): models fitted on the task the trials train on.
    tuning: bool = False
    _memory: dict[str, Member] = field(default_factory=dict, repr=False)
    _failed: dict[str, NonFiniteLoss] = field(default_factory=dict, repr=False)

    @property
    def backbone_name(self) -> str:  # type: ignore[override]
        return self.recipes.backbone_name

    @property
    def backbone(self) -> Backbone:
        return self.get_backbone(self.backbone_name)

    @property
    def task(self) -> Task:
        return self.task_of(self.backbone_name)

    def for_tuning(self) -> "Members":
        """This cell's server for its tuning trials: a model it serves is fitted on the trials'
        task, so that where evaluation runs train on train + val (``final_fit``) a teacher a trial
        distils from has not seen the validation split the trial is scored on, and has logits on
        the trials' train split. The models, in memory and on disk, stay shared: a model's key
        holds its task, so without ``final_fit`` both serve the very same models."""
        return dataclasses.replace(self, tuning=True)

    @property
    def reuse(self) -> Reuse:
        return self.recipes.reuse

    def best_params(self, strategy: str) -> dict[str, Any]:
        return self.recipes.params(strategy)

    def index_of(self, seed: int) -> int:
        k = seed - self.recipes.seed(0)
        return k if 0 <= k < 1 << 20 and self.recipes.seed(k) == seed else 0

    def key(self, strategy: str, seed: int, params: dict[str, Any]) -> str:
        """The artifact key of a model: everything that shapes it. ``params`` of a strategy
        that reuses others include a digest of their configurations (see
        :func:`tlbench.run.tuned.with_dependencies`), so a re-tuned teacher means a new key."""
        blob = json.dumps({"params": params, "seed": seed, "task": self.task.fingerprint,
                           "weights": self.backbone.weights_id, "context": self.recipes.context,
                           "code": self.recipes.code(strategy)},
                          sort_keys=True, default=str)
        digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
        return "/".join((*self.recipes.cell, strategy, digest))

    def get_backbone(self, name: str) -> Backbone:
        try:
            return self.backbones[name]
        except KeyError:
            raise ConfigError(f"backbone {name!r} is not available to this cell; "
                              f"defined: {', '.join(self.backbones) or 'none'}") from None

    def task_of(self, backbone: str) -> Task:
        return self.recipes.tuning_task(backbone) if self.tuning else self.recipes.task(backbone)

    def record(self, key: str, member: Member) -> None:
        """Keeps the model an evaluation run just trained (called by the evaluator)."""
        self._memory[key] = member
        self.store.save(key, member)

    def get(self, strategy: str, index: int, runtime: "Runtime") -> Member:
        params = self.recipes.params(strategy)
        seed = self.recipes.seed(index)
        key = self.key(strategy, seed, params)
        need_weights = strategy in self.reuse.keep_weights
        member = self._memory.get(key)
        if member is not None and (member.state is not None or not need_weights):
            return member
        if key in self._failed:  # diverged before: do not train it again for every trial
            raise self._failed[key]
        member = self.store.load(key, need_weights=need_weights)
        if member is None:
            block = self.block(strategy, index, runtime)
            if len(block) > 1:
                clock = OwnTime(self)  # the block's training, and any wait for another worker's, is the model's
                with self.store.building(self.key(strategy, self.recipes.seed(block[0]), params)):
                    member = self.store.load(key, need_weights=need_weights)  # its block trained meanwhile
                    if member is None:
                        made = self._fit_block(strategy, block, params, runtime, keep_weights=need_weights)
                        if index not in made:
                            raise self._failed[key]
                        member = made[index]
                self.fit_seconds = clock.nested + clock.elapsed
                self._memory[key] = member
                return member
            member = self._fit(key, strategy, index, seed, params, runtime, keep_weights=need_weights)
            self.store.save(key, member)
        self._memory[key] = member
        return member

    def block(self, strategy: str, index: int, runtime: "Runtime") -> list[int]:
        """The models trained side by side with model ``index`` of ``strategy`` when it is fitted
        here: beyond the evaluation seeds' models (an ensemble's members beyond them), fixed
        blocks of ``runtime.seeds_together`` counted from the first of them and ending at the last
        model the cell's runs ask for (``Reuse.per_seed``), so that each model's numbers are the same
        whichever run, worker or resumed process trains its block; ``[index]`` for an evaluation
        seed's model (its evaluation run trains it), a tuning trial's model, or a strategy whose
        seeds do not train side by side."""
        from tlbench.strategies.base import stacks_seeds

        seeds, together = self.recipes.seeds(), runtime.seeds_together
        models = seeds * self.reuse.per_seed.get(strategy, 1)
        if self.tuning or together < 2 or not seeds <= index < models \
                or not stacks_seeds(self.recipes.strategy(strategy)):
            return [index]
        first = seeds + (index - seeds) // together * together
        return list(range(first, min(first + together, models)))

    def _fit_block(self, strategy: str, block: list[int], params: dict[str, Any], runtime: "Runtime", *,
                   keep_weights: bool) -> dict[int, Member]:
        """Models ``block`` of ``strategy`` trained side by side (:mod:`tlbench.training.vectorised`),
        each kept in memory and, unless already there, in the store. A model whose loss diverged
        is remembered as failed; asking for it raises, as :meth:`_fit` would."""
        task, made = self.task, self.recipes.strategy(strategy)
        fits: list[tuple[int, str, int, "Predictor", float, Any]] = []
        with deferral.paused(), side_by_side() as together:  # a block of its own, even inside another's fit
            for index in block:
                seed = self.recipes.seed(index)
                start = time.perf_counter()
                with together.fit() as slot:
                    predictor = made.fit(self.backbone, task, params, seed=seed,
                                         reporter=NullReporter(per_epoch=False), runtime=runtime)
                fits.append((index, self.key(strategy, seed, params), seed, predictor,
                             time.perf_counter() - start, slot))
            together.train()
        out: dict[int, Member] = {}
        for index, key, seed, predictor, setup, slot in fits:
            job = slot.job
            if job is not None and isinstance(job.error, NonFiniteLoss):
                self._failed[key] = NonFiniteLoss(job.error.epoch, job.error.value, what=f"{strategy} model #{index}")
                continue
            if job is not None and job.error is not None:
                raise job.error
            member = self.store.load(key, need_weights=keep_weights)  # stored already: the one others read
            if member is None:
                member = member_from(predictor, key=key, strategy=strategy, index=index, seed=seed, params=params,
                                     task=task, seconds=setup + (job.seconds if job else 0.0),
                                     keep_weights=keep_weights)
                self.store.save(key, member)
            self._memory[key] = out[index] = member
        return out

    def _fit(self, key: str, strategy: str, index: int, seed: int, params: dict[str, Any], runtime: "Runtime", *,
             keep_weights: bool) -> Member:
        clock = OwnTime(self)
        task = self.task
        try:
            with deferral.paused():  # needed now, inside another run's fit (a teacher)
                predictor = self.recipes.strategy(strategy).fit(self.backbone, task, params, seed=seed,
                                                                reporter=NullReporter(per_epoch=False), runtime=runtime)
        except NonFiniteLoss as err:
            self._failed[key] = NonFiniteLoss(err.epoch, err.value, what=f"{strategy} model #{index}")
            raise self._failed[key] from None
        member = member_from(predictor, key=key, strategy=strategy, index=index, seed=seed, params=params,
                             task=task, seconds=clock.seconds, keep_weights=keep_weights)  # minus models
        self.fit_seconds = clock.nested + clock.elapsed  # it needed in turn; the caller's own time excludes all
        return member
