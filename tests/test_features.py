from __future__ import annotations

import optuna
import torch

from tlbench.features import FeatureCache
from tlbench.runtime import Runtime
from tlbench.strategies import STRATEGIES
from tlbench.train import NullReporter


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
    assert torch.allclose(feats, tiny_backbone.eval().features(tiny_task.train.x), atol=1e-6)


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
    from tlbench.backbones import build_backbone

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
