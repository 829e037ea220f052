"""A feature cache: backbone features computed once per (weights, split), in memory and on disk."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import torch

from tlbench.atomic import load_or_none, save_atomic
from tlbench.backbones import Backbone
from tlbench.codeversion import code_version
from tlbench.train import Execution, predict_logits


class FeatureCache:
    """Caches ``backbone.features(split.x)`` by weights id and split fingerprint.

    Args:
        directory: where to persist features across processes (None: memory only).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, torch.Tensor] = {}
        self.computed = 0  # how many times a backbone actually ran (for tests/benchmarks)

    @staticmethod
    def key(backbone: Backbone, fingerprint: str, execution: Execution = Execution()) -> str:
        """Weights identity + split content + the code that computes features (+ precision
        when it is not float32)."""
        precision = "" if execution.tag == "fp32" else f"|{execution.tag}"
        blob = f"{backbone.weights_id}|{fingerprint}|{code_version()}{precision}"
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, backbone: Backbone, x: torch.Tensor, fingerprint: str, *,
            device: torch.device, execution: Execution = Execution()) -> torch.Tensor:
        """Features of ``x`` (identified by ``fingerprint``) under ``backbone``'s weights."""
        key = self.key(backbone, fingerprint, execution)
        if key in self._memory:
            return self._memory[key]
        feats = self._load(key)
        if feats is None:
            feats = compute_features(backbone, x, device=device, execution=execution)
            self.computed += 1
            self._save(key, feats)
        self._memory[key] = feats
        return feats

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory else None

    def _load(self, key: str) -> torch.Tensor | None:
        feats = load_or_none(self._path(key))  # a corrupt entry is recomputed, never trusted
        return feats if isinstance(feats, torch.Tensor) else None

    def _save(self, key: str, feats: torch.Tensor) -> None:
        path = self._path(key)
        if path is not None:
            save_atomic(feats, path)


def compute_features(backbone: Backbone, x: torch.Tensor, *, device: torch.device,
                     execution: Execution = Execution()) -> torch.Tensor:
    """Runs the frozen backbone once in eval mode (no autograd) over ``x``; the shared
    backbone itself is never moved (a copy goes to an accelerator)."""
    if next(backbone.parameters()).device != device:
        backbone = copy.deepcopy(backbone).to(device)
    # A clone outside inference mode: strategies may build autograd graphs on features.
    return predict_logits(backbone, x, device=device, execution=execution).clone()
