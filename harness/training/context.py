"""What a strategy is handed besides its inputs: the :class:`Runtime` (device, execution
settings, feature cache, the suite's weight-decay convention) and, through ``runtime.members``,
the models other strategies trained in its cell.

A strategy that reuses other strategies' models (a teacher for distillation, members for an
ensemble) asks the cell's :class:`ModelServer` for "model *k* of strategy S" and gets a
:class:`Member`: its logits on every split, its cost and, when asked for, its weights. How models
are found, stored or trained again is the run layer's business (:mod:`tlbench.run.model_server`).
The server and the runtime each need the other, so they are defined together.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tlbench.core.errors import ConfigError
from tlbench.core.processes import core_count
from tlbench.data.reader import ImageStore, Loading
from tlbench.data.splits import Split, Task
from tlbench.training.backbones import Backbone
from tlbench.training.features import FeatureCache
from tlbench.training.loop import Execution


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


@dataclass
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    features: FeatureCache = field(default_factory=FeatureCache)
    members: "ModelServer | None" = None  # set per cell: other strategies' trained models
    execution: Execution = field(default_factory=Execution)
    #: The suite's weight-decay convention (``training.decay_norm_and_bias``): by default, as in
    #: timm and most fine-tuning recipes, biases and normalisation parameters (every parameter
    #: with fewer than two dimensions) get no weight decay; True decays every parameter.
    decay_norm_and_bias: bool = False
    #: Evaluation seeds of one cell trained side by side as one vectorised model, at most this
    #: many together (strategies that declare ``vectorises``; 1: one at a time). Seeds are grouped
    #: in the order of the cell's seed list, so a group is the same whoever runs it.
    seeds_together: int = 1
    #: Tuning trials of one cell trained side by side, at most this many together (strategies that
    #: declare ``vectorises``; 1: one at a time): the slots whose proposal depends on no other trial
    #: (random, QMC and grid search, a model-based sampler's start-up trials), in fixed groups of slots.
    trials_together: int = 1


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA device is available; allowed here: auto, cpu")
        return torch.device("cuda")
    raise ConfigError(f"--device {name!r}: allowed: auto, cpu, cuda")


def resolve_loading(device: torch.device, workers: str = "auto", images: ImageStore | None = None) -> Loading:
    """DataLoader workers for image-file tasks: ``auto`` is min(16, CPU cores) with a GPU to
    feed (and pinned memory) — one core decodes and crops ~420–500 JPEGs/s
    (benchmarks/test_bench_loading.py), while a GPU trains a ResNet-50 in bf16 at thousands of
    images per second — and none on CPU, where decoding would take the cores training needs;
    tensor tasks never use workers."""
    if workers == "auto":
        n = min(16, core_count())
        n = n if device.type == "cuda" else 0
    elif workers.isdigit():
        n = int(workers)
    else:
        raise ConfigError(f"--workers {workers!r}: allowed: auto or a whole number (0: load in the main process)")
    return Loading(workers=n, pin_memory=device.type == "cuda", images=images)


def resolve_execution(device: torch.device, *, precision: str = "auto", channels_last: str = "auto",
                      compile: bool = False, workers: str = "auto", images: ImageStore | None = None) -> Execution:
    """``auto``: bf16 autocast and channels_last on CUDA (bf16 where the GPU supports it),
    float32 and the default layout on CPU, so CPU runs are unchanged."""
    allowed = {"precision": ("auto", "bf16", "fp32"), "channels-last": ("auto", "on", "off")}
    for flag, value in (("precision", precision), ("channels-last", channels_last)):
        if value not in allowed[flag]:
            raise ConfigError(f"--{flag} {value!r}: allowed: {', '.join(allowed[flag])}")
    cuda = device.type == "cuda"
    bf16 = precision == "bf16" or (precision == "auto" and cuda and torch.cuda.is_bf16_supported())
    layout = channels_last == "on" or (channels_last == "auto" and cuda)
    return Execution(bf16=bf16, channels_last=layout, compile=compile,
                     loading=resolve_loading(device, workers, images))


def make_runtime(device: str, cache_dir: Path | None, *, precision: str = "auto", channels_last: str = "auto",
                 compile: bool = False, workers: str = "auto", images: ImageStore | None = None,
                 seeds_together: int = 1, trials_together: int = 1) -> Runtime:
    """A runtime; ``images`` is the image cache image-file splits are read from (None: their files)."""
    resolved = resolve_device(device)
    return Runtime(resolved, FeatureCache(cache_dir / "features" if cache_dir else None),
                   execution=resolve_execution(resolved, precision=precision, channels_last=channels_last,
                                               compile=compile, workers=workers, images=images),
                   seeds_together=seeds_together, trials_together=trials_together)
