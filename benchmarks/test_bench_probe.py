"""Linear probe on cached features vs the same probe recomputing features every epoch.

Target: ≥ 20× faster at equal accuracy (± 0.5 point), 50 epochs, quick digits task.
"""

from __future__ import annotations

import torch
from _setup import best_of, quick_digits
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


def test_probe_cache_speedup(benchmark) -> None:
    quick_digits()  # pretrain (or load) outside the timings
    warm = Runtime(CPU, FeatureCache())
    acc_cached = probe_cached(warm)  # fills the cache: the state of every trial after the first
    acc_recomputed = probe_recomputing()
    t_recompute = best_of(probe_recomputing, 5)
    t_cold = best_of(lambda: probe_cached(Runtime(CPU, FeatureCache())), 5)
    t_warm = benchmark.pedantic(probe_cached, args=(warm,), rounds=10, iterations=1)
    t_warm = benchmark.stats.stats.min
    ratio_warm, ratio_cold = t_recompute / t_warm, t_recompute / t_cold
    print(f"\nlinear probe, 50 epochs, digits-2shot: recompute {t_recompute * 1e3:.1f} ms, "
          f"cached (warm) {t_warm * 1e3:.1f} ms -> {ratio_warm:.1f}x, "
          f"cached (cold, features computed in the fit) {t_cold * 1e3:.1f} ms -> {ratio_cold:.1f}x; "
          f"test accuracy {acc_cached:.4f} vs {acc_recomputed:.4f}")
    benchmark.extra_info.update(ratio_warm=ratio_warm, ratio_cold=ratio_cold)
    assert abs(acc_cached - acc_recomputed) <= 0.005
    assert ratio_warm >= 20
