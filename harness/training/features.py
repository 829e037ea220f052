"""A feature cache: backbone features computed once per (weights, split), in memory and on disk.

The cache also remembers how long each entry's backbone pass took, so a run can be charged the
feature pass it relies on whether or not it found the features cached (:meth:`FeatureCache.charge`).
"""

from __future__ import annotations

import copy
import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch

from tlbench.core.atomic import load_or_none, save_atomic
from tlbench.core.codeversion import features_version
from tlbench.training.backbones import Backbone
from tlbench.training.loop import Execution, predict_logits


@dataclass
class FeatureCharge:
    """The feature passes a stretch of work relied on (see :meth:`FeatureCache.charge`).

    ``pass_seconds`` is what those passes cost when they were computed — the same for every
    run that reads them, cached or not — and ``computed_seconds`` is the part of the stretch's
    wall time actually spent computing them (zero when everything was cached)."""

    keys: set[str] = field(default_factory=set)
    computed_seconds: float = 0.0
    pass_seconds: float | None = None  # set when the stretch ends; None when it read no features


class FeatureCache:
    """Caches ``backbone.forward_features(split.x)`` by weights id and split fingerprint.

    Args:
        directory: where to persist features across processes (None: memory only).
    """

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory
        self._memory: dict[str, torch.Tensor] = {}
        self._seconds: dict[str, float | None] = {}  # how long each entry's backbone pass took
        self._charges: list[FeatureCharge] = []
        self.computed = 0  # how many times a backbone actually ran (for tests/benchmarks)

    @staticmethod
    def key(backbone: Backbone, fingerprint: str, execution: Execution = Execution()) -> str:
        """Weights identity + split content + the code that computes features (+ precision
        when it is not float32)."""
        precision = "" if execution.tag == "fp32" else f"|{execution.tag}"
        blob = f"{backbone.weights_id}|{fingerprint}|{features_version()}{precision}"
        return hashlib.sha256(blob.encode()).hexdigest()[:24]

    def get(self, backbone: Backbone, x: torch.Tensor, fingerprint: str, *,
            device: torch.device, execution: Execution = Execution()) -> torch.Tensor:
        """Features of ``x`` (identified by ``fingerprint``) under ``backbone``'s weights."""
        key = self.key(backbone, fingerprint, execution)
        for charge in self._charges:
            charge.keys.add(key)
        if key in self._memory:
            return self._memory[key]
        feats, seconds = self._load(key)
        if feats is None:
            start = time.perf_counter()
            feats = compute_features(backbone, x, device=device, execution=execution)
            seconds = time.perf_counter() - start
            self.computed += 1
            for charge in self._charges:
                charge.computed_seconds += seconds
            self._save(key, feats, seconds)
        self._memory[key] = feats
        self._seconds[key] = seconds
        return feats

    @contextmanager
    def charge(self) -> Iterator[FeatureCharge]:
        """Records the features read inside the block: a run's fit is charged the feature
        passes it used at the cost they had when computed, so two runs of a cell report the
        same feature cost whether the first computed the features or both found them cached
        (a linear probe's train time otherwise swung 1.23 s vs 0.16 s with the cache state)."""
        charge = FeatureCharge()
        self._charges.append(charge)
        try:
            yield charge
        finally:
            self._charges.remove(charge)
            known = [s for s in (self._seconds.get(k) for k in charge.keys) if s is not None]
            charge.pass_seconds = sum(known) if known else None

    def _path(self, key: str) -> Path | None:
        return self.directory / f"{key}.pt" if self.directory else None

    def _load(self, key: str) -> tuple[torch.Tensor | None, float | None]:
        stored = load_or_none(self._path(key))  # a corrupt entry is recomputed, never trusted
        if isinstance(stored, torch.Tensor):  # an entry written before pass times were kept
            return stored, None
        if isinstance(stored, dict) and isinstance(stored.get("features"), torch.Tensor):
            seconds = stored.get("seconds")
            return stored["features"], float(seconds) if isinstance(seconds, (int, float)) else None
        return None, None

    def _save(self, key: str, feats: torch.Tensor, seconds: float) -> None:
        path = self._path(key)
        if path is not None:
            save_atomic({"features": feats, "seconds": seconds}, path)


def compute_features(backbone: Backbone, x: torch.Tensor, *, device: torch.device,
                     execution: Execution = Execution()) -> torch.Tensor:
    """Runs the frozen backbone once in eval mode (no autograd) over ``x``; the shared
    backbone itself is never moved (a copy goes to an accelerator)."""
    if next(backbone.parameters()).device != device:
        backbone = copy.deepcopy(backbone).to(device)
    # A clone outside inference mode: strategies may build autograd graphs on features.
    return predict_logits(backbone, x, device=device, execution=execution).clone()
