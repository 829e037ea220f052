from __future__ import annotations

import optuna
import torch

from harness.features import FeatureCache
from harness.runtime import Runtime
from harness.train import NullReporter
from strategies import STRATEGIES


def test_probe_trials_never_rerun_the_backbone(tiny_backbone, tiny_task, tmp_path) -> None:
    runtime = Runtime(torch.device("cpu"), FeatureCache(tmp_path))
    probe = STRATEGIES.get("linear_probe")(epochs=(2, 6), batch_size=8)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        params = probe.search_space(study.ask())
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
