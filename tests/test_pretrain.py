from __future__ import annotations

import pytest
import torch

from tlbench.run.pretrain import materialize_backbone, pretrain_key
from tlbench.suites.schema import parse_suite
from tlbench.training.backbones import state_fingerprint


@pytest.fixture
def suite(smoke_suite):
    return parse_suite(smoke_suite)


def test_pretrain_cached_reused_and_corruption_rebuilt(suite, tmp_path) -> None:
    logs: list[str] = []
    kwargs = dict(cache_dir=tmp_path, device=torch.device("cpu"), log=logs.append)
    first = materialize_backbone("signal-cnn", suite, **kwargs)
    assert "pretrained backbone signal-cnn" in logs[-1]
    second = materialize_backbone("signal-cnn", suite, **kwargs)
    assert logs[-1].startswith("reusing cached pretrained backbone signal-cnn")
    assert state_fingerprint(first) == state_fingerprint(second)
    assert first.weights_id == second.weights_id and first.weights_id.startswith("pretrained:")

    key = pretrain_key("signal-cnn", suite.backbones["signal-cnn"], suite)
    ckpt = tmp_path / "backbones" / f"{key}.pt"
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF
    ckpt.write_bytes(bytes(data))
    third = materialize_backbone("signal-cnn", suite, **kwargs)
    assert any("corrupt" in line for line in logs)
    assert "pretrained backbone signal-cnn" in logs[-1]
    # Pretraining is deterministic, so the rebuilt checkpoint equals the first one.
    assert state_fingerprint(third) == state_fingerprint(first)


def test_key_covers_spec_source_and_settings(suite) -> None:
    spec = suite.backbones["signal-cnn"]
    base = pretrain_key("signal-cnn", spec, suite)
    longer = spec.model_copy(update={"pretrain": spec.pretrain.model_copy(update={"epochs": 9})})
    assert pretrain_key("signal-cnn", longer, suite) != base
    wider = spec.model_copy(update={"args": {"width": 16}})
    assert pretrain_key("signal-cnn", wider, suite) != base
    source = suite.source_tasks["mnist1d-source"]
    changed = suite.model_copy(update={"source_tasks": {
        **suite.source_tasks, "mnist1d-source": source.model_copy(update={"args": {"num_samples": 999}})}})
    assert pretrain_key("signal-cnn", spec, changed) != base


def test_pretraining_learns_the_source_task(suite, tmp_path) -> None:
    spec = suite.backbones["signal-cnn"]
    longer = spec.model_copy(update={"pretrain": spec.pretrain.model_copy(update={"epochs": 12})})
    suite = suite.model_copy(update={"backbones": {**suite.backbones, "signal-cnn": longer}})
    logs: list[str] = []
    materialize_backbone("signal-cnn", suite, cache_dir=tmp_path, device=torch.device("cpu"),
                         log=logs.append)
    acc = float(logs[-1].split("source val accuracy ")[1].split(")")[0])
    assert acc > 0.4  # 10 classes: chance is 0.1


def test_pretraining_logs_progress_lines_for_batch_logs(suite, tmp_path) -> None:
    spec = suite.backbones["signal-cnn"]
    longer = spec.model_copy(update={"pretrain": spec.pretrain.model_copy(update={"epochs": 4})})
    suite = suite.model_copy(update={"backbones": {**suite.backbones, "signal-cnn": longer}})
    logs: list[str] = []
    materialize_backbone("signal-cnn", suite, cache_dir=tmp_path, device=torch.device("cpu"), log=logs.append,
                         progress_every=0.0)
    progress = [line for line in logs if line.startswith("pretraining signal-cnn: epoch")]
    assert [line.split(",")[0] for line in progress] == [f"pretraining signal-cnn: epoch {e}/4" for e in (1, 2, 3)]
    assert all("source val accuracy 0." in line and line.endswith(" images/s") for line in progress), progress
    logs.clear()
    materialize_backbone("signal-cnn", suite, cache_dir=tmp_path / "again", device=torch.device("cpu"),
                         log=logs.append, progress_every=3600.0)
    assert len([line for line in logs if ": epoch " in line]) == 1  # the first epoch, then at most hourly
