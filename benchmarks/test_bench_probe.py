"""Linear probe on cached features vs the same probe recomputing features every epoch.

Target: ≥ 20× faster at equal accuracy (± 0.5 point), 50 epochs, quick digits task.
"""

from __future__ import annotations

import pytest
import torch
from _setup import quick_digits
from _sides import median, ratio, time_side
from torch import nn

from tlbench.strategies import STRATEGIES
from tlbench.strategies.parts import make_optimizer
from tlbench.training.backbones import Classifier
from tlbench.training.context import Runtime
from tlbench.training.features import FeatureCache
from tlbench.training.loop import NullReporter, accuracy, fit_epochs, predict_logits

PARAMS = {"lr": 0.01, "weight_decay": 1e-4, "epochs": 50}
CPU = torch.device("cpu")


def probe_cached(runtime: Runtime) -> float:
    _, task, backbone = quick_digits()
    probe = STRATEGIES.get("linear_probe")(batch_size=32)
    predictor = probe.fit(backbone, task, PARAMS, seed=0, reporter=NullReporter(), runtime=runtime)
    return accuracy(predictor.logits(task.test), task.test.y)


class FrozenFeatures(nn.Module):
    """The backbone run on every batch (eval mode, no gradient) — no cache."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        with torch.no_grad():
            return self.backbone.forward_features(x)


def probe_recomputing() -> float:
    _, task, backbone = quick_digits()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        head = backbone.new_head(task.num_classes)
    model = Classifier(FrozenFeatures(backbone), head)
    opt = make_optimizer(head.parameters(), {"optimizer": "adamw", **PARAMS})  # no decay on the bias, as the probe
    fit_epochs(model, opt, (task.train.x, task.train.y), (task.val.x, task.val.y),
               epochs=PARAMS["epochs"], batch_size=32, seed=0, device=CPU, reporter=NullReporter())
    return accuracy(predict_logits(model, task.test.x, device=CPU), task.test.y)


_WARM: dict[str, Runtime] = {}


def _warm() -> Runtime:
    """A runtime whose feature cache holds the task's features: the state of every trial after the first."""
    if not _WARM:
        _WARM["runtime"] = Runtime(CPU, FeatureCache())
        probe_cached(_WARM["runtime"])
    return _WARM["runtime"]


SIDES = {"recompute": probe_recomputing, "cached-warm": lambda: probe_cached(_warm()),
         "cached-cold": lambda: probe_cached(Runtime(CPU, FeatureCache()))}


@pytest.mark.parametrize("side", list(SIDES))
def test_probe(benchmark, side) -> None:
    quick_digits()  # pretrain (or load) outside the timings
    _warm()
    time_side(benchmark, "probe-50-epochs", side, SIDES[side], rounds=10 if side == "cached-warm" else 5)


def test_probe_cache_speedup() -> None:
    ratio_warm = ratio("probe-50-epochs", "recompute", "cached-warm")
    ratio_cold = ratio("probe-50-epochs", "recompute", "cached-cold")
    acc_cached, acc_recomputed = probe_cached(_warm()), probe_recomputing()
    print(f"\nlinear probe, 50 epochs, digits-2shot: recompute {median('probe-50-epochs', 'recompute') * 1e3:.1f} ms, "
          f"cached (warm) {median('probe-50-epochs', 'cached-warm') * 1e3:.1f} ms -> {ratio_warm:.1f}x, "
          f"cached (cold, features computed in the fit) {median('probe-50-epochs', 'cached-cold') * 1e3:.1f} ms "
          f"-> {ratio_cold:.1f}x; test accuracy {acc_cached:.4f} vs {acc_recomputed:.4f}")
    assert abs(acc_cached - acc_recomputed) <= 0.005
    assert ratio_warm >= 20
