"""What a strategy needs from the harness besides its inputs: device and caches."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tlbench.data import ImageStore, Loading
from tlbench.errors import ConfigError
from tlbench.features import FeatureCache
from tlbench.train import Execution

if TYPE_CHECKING:
    from tlbench.reuse import ModelServer


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
    (benchmarks/test_bench_loading.py), while issue 5 quotes ~4,300 img/s for ResNet-50 in bf16
    on an H200 (not measured here) — and none on CPU, where decoding would take the cores training needs; tensor tasks
    never use workers."""
    if workers == "auto":
        n = min(16, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
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
                 compile: bool = False, workers: str = "auto", images: ImageStore | None = None) -> Runtime:
    """A runtime; ``images`` is the image cache image-file splits are read from (None: their files)."""
    resolved = resolve_device(device)
    return Runtime(resolved, FeatureCache(cache_dir / "features" if cache_dir else None),
                   execution=resolve_execution(resolved, precision=precision, channels_last=channels_last,
                                               compile=compile, workers=workers, images=images))
