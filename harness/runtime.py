"""What a strategy needs from the harness besides its inputs: device and caches."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from harness.errors import ConfigError
from harness.features import FeatureCache

if TYPE_CHECKING:
    from harness.members import Members


@dataclass
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    features: FeatureCache = field(default_factory=FeatureCache)
    members: "Members | None" = None  # set per cell: other strategies' trained models


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


def make_runtime(device: str, cache_dir: Path | None) -> Runtime:
    return Runtime(resolve_device(device), FeatureCache(cache_dir / "features" if cache_dir else None))
