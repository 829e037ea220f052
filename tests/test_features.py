from __future__ import annotations

import optuna
import pytest
import torch

from tlbench.strategies import STRATEGIES
from tlbench.training.context import Runtime
from tlbench.training.features import FeatureCache
from tlbench.training.loop import NullReporter


def test_probe_trials_never_rerun_the_backbone(tiny_backbone, tiny_task, tmp_path) -> None:
    runtime = Runtime(torch.device("cpu"), FeatureCache(tmp_path))
    probe = STRATEGIES.get("linear_probe")(epochs=(2, 6), batch_size=8)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = probe.search_space(study.ask(), tiny_backbone)
        probe.fit(tiny_backbone, tiny_task, params, seed=0, reporter=NullReporter(), runtime=runtime)
    assert runtime.features.computed == 2  # train and val, once each
    predictor = probe.fit(tiny_backbone, tiny_task, params, seed=1, reporter=NullReporter(),
                          runtime=runtime)
    predictor.logits(tiny_task.test)
    predictor.logits(tiny_task.test)
    assert runtime.features.computed == 3

    # A new process (new cache object) reuses the features stored on disk.
    again = FeatureCache(tmp_path)
    feats = again.get(tiny_backbone, tiny_task.train.x, tiny_task.train.fingerprint,
                      device=torch.device("cpu"))
    assert again.computed == 0
    assert torch.allclose(feats, tiny_backbone.eval().forward_features(tiny_task.train.x), atol=1e-6)


def test_cache_key_depends_on_weights(tiny_backbone, tiny_task, tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    other = tiny_backbone.reinitialized(1)
    a = cache.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=torch.device("cpu"))
    b = cache.get(other, tiny_task.val.x, tiny_task.val.fingerprint, device=torch.device("cpu"))
    assert cache.computed == 2 and not torch.equal(a, b)


def test_corrupt_feature_file_is_recomputed(tiny_backbone, tiny_task, tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    cache.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=torch.device("cpu"))
    for f in tmp_path.glob("*.pt"):
        f.write_bytes(b"garbage")
    fresh = FeatureCache(tmp_path)
    fresh.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=torch.device("cpu"))
    assert fresh.computed == 1


def test_different_random_backbones_never_share_features(tiny_task, tmp_path) -> None:
    from tlbench.training.backbones import build_backbone

    # Same seed, same feature size (64), different networks.
    a = build_backbone("cnn2d", {"width": 16, "depth": 3}, seed=0)
    b = build_backbone("cnn2d", {"width": 32, "depth": 2}, seed=0)
    assert a.feature_dim == b.feature_dim
    assert FeatureCache.key(a, "split") != FeatureCache.key(b, "split")
    assert FeatureCache.key(a, "split") == FeatureCache.key(
        build_backbone("cnn2d", {"width": 16, "depth": 3}, seed=0), "split")


def test_features_support_autograd(tiny_backbone, tiny_task) -> None:
    feats = FeatureCache().get(tiny_backbone, tiny_task.train.x, tiny_task.train.fingerprint,
                               device=torch.device("cpu"))
    head = torch.nn.Linear(feats.shape[1], 2)
    head(feats).sum().backward()  # an inference-mode tensor would refuse this
    assert head.weight.grad is not None


def test_a_charge_reports_the_pass_as_computed_whether_or_not_it_was_cached(tiny_backbone, tiny_task,
                                                                            tmp_path) -> None:
    cache = FeatureCache(tmp_path)
    cpu = torch.device("cpu")
    with cache.charge() as first:
        cache.get(tiny_backbone, tiny_task.train.x, tiny_task.train.fingerprint, device=cpu)
        cache.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=cpu)
    with cache.charge() as second:  # the same features, from memory
        cache.get(tiny_backbone, tiny_task.train.x, tiny_task.train.fingerprint, device=cpu)
        cache.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=cpu)
    with FeatureCache(tmp_path).charge() as nothing:
        pass
    assert first.computed_seconds > 0 and second.computed_seconds == 0
    assert first.pass_seconds == second.pass_seconds == pytest.approx(first.computed_seconds)
    assert nothing.pass_seconds is None
    disk = FeatureCache(tmp_path)  # another process: the pass time was stored with the features
    with disk.charge() as third:
        disk.get(tiny_backbone, tiny_task.train.x, tiny_task.train.fingerprint, device=cpu)
        disk.get(tiny_backbone, tiny_task.val.x, tiny_task.val.fingerprint, device=cpu)
    assert disk.computed == 0 and third.pass_seconds == first.pass_seconds


def test_probe_runs_are_charged_the_feature_pass_alike_and_train_without_it(tiny_backbone, tiny_task, runtime,
                                                                           monkeypatch) -> None:
    import time

    from helpers import run_context

    import tlbench.training.features
    from tlbench.run.evaluation import evaluate

    slow = tlbench.training.features.compute_features

    def slow_features(*args, **kwargs):  # a backbone pass that costs something measurable
        time.sleep(0.3)
        return slow(*args, **kwargs)

    monkeypatch.setattr(tlbench.training.features, "compute_features", slow_features)
    probe = STRATEGIES.get("linear_probe")(epochs=(2, 2), batch_size=8)
    study = optuna.create_study(direction="maximize")
    first, second = evaluate(study, probe, tiny_backbone, tiny_task, {"lr": 0.01, "weight_decay": 1e-4, "epochs": 2},
                             seeds=[1, 2], context=run_context(), runtime=runtime)
    # The first run computed train and val features (0.6 s), the second found them cached.
    assert first.costs.feature_seconds == second.costs.feature_seconds >= 0.6
    assert first.costs.own_train_seconds < 0.3 and second.costs.own_train_seconds < 0.3
    assert first.costs.train_seconds == first.costs.own_train_seconds
