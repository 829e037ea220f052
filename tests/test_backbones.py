from __future__ import annotations

import pytest
import torch

from harness.backbones import (Classifier, ResNetArgs, build_backbone, load_checkpoint,
                               load_torchvision_weights, state_fingerprint)
from harness.errors import ConfigError

CASES = [
    ("cnn2d", {"width": 4}, (2, 1, 8, 8)),
    ("cnn1d", {"width": 4}, (2, 1, 40)),
    ("resnet", {"variant": "resnet18", "in_channels": 1, "small_input": True}, (2, 1, 16, 16)),
    ("resnet", {"variant": "resnet18"}, (2, 3, 32, 32)),
]


@pytest.mark.parametrize("arch,args,shape", CASES)
def test_groups_cover_every_parameter_once_in_order(arch, args, shape) -> None:
    backbone = build_backbone(arch, args)
    in_groups = [id(p) for g in backbone.groups for p in g.parameters()]
    assert len(in_groups) == len(set(in_groups))
    assert set(in_groups) == {id(p) for p in backbone.parameters()}
    x = torch.randn(shape)
    backbone.eval()
    manual = x
    for group in backbone.groups:  # input → output: each group consumes the previous output
        manual = group(manual)
    feats = backbone.features(x)
    assert torch.allclose(backbone.pool(manual), feats)
    assert feats.shape == (2, backbone.feature_dim)
    assert Classifier(backbone, backbone.new_head(7))(x).shape == (2, 7)


def test_build_is_deterministic_and_reinit_differs() -> None:
    a, b = build_backbone("cnn2d", {"width": 4}, seed=1), build_backbone("cnn2d", {"width": 4}, seed=1)
    assert state_fingerprint(a) == state_fingerprint(b)
    fresh = a.reinitialized(seed=9)
    assert state_fingerprint(fresh) != state_fingerprint(a)
    assert state_fingerprint(a.reinitialized(seed=9)) == state_fingerprint(fresh)
    assert state_fingerprint(a) == state_fingerprint(b)  # the original is untouched


def test_checkpoint_roundtrip(tmp_path) -> None:
    src = build_backbone("cnn1d", {"width": 4}, seed=2)
    path = tmp_path / "ckpt.pt"
    torch.save({"backbone": src.state_dict()}, path)
    loaded = load_checkpoint(build_backbone("cnn1d", {"width": 4}, seed=5), path)
    assert state_fingerprint(loaded) == state_fingerprint(src)
    assert loaded.weights_id.startswith("file:")


def test_checkpoint_errors(tmp_path) -> None:
    target = build_backbone("cnn1d", {"width": 4})
    with pytest.raises(ConfigError, match="does not exist"):
        load_checkpoint(target, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot be read"):
        load_checkpoint(target, tmp_path / "junk.pt")
    torch.save(build_backbone("cnn1d", {"width": 8}).state_dict(), tmp_path / "other.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        load_checkpoint(target, tmp_path / "other.pt")


def test_unknown_arch_and_args() -> None:
    with pytest.raises(ConfigError, match="known: cnn1d, cnn2d, resnet"):
        build_backbone("vgg", {})
    with pytest.raises(ConfigError, match="widht"):
        build_backbone("cnn2d", {"widht": 3}, where="b")
    with pytest.raises(ConfigError, match="resnet18"):
        build_backbone("resnet", {"variant": "resnet7"})


def test_torchvision_weights_from_hub_cache(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    member = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    ckpt_dir = tmp_path / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), ckpt_dir / member.url.rsplit("/", 1)[1])
    args = ResNetArgs(variant="resnet18")
    loaded = load_torchvision_weights(build_backbone("resnet", {}), "resnet18", "IMAGENET1K_V1", args)
    assert torch.equal(loaded.groups[0][0].weight, reference.conv1.weight)
    assert loaded.weights_id.startswith("torchvision:resnet18:IMAGENET1K_V1:TorchvisionResNet:")


def test_torchvision_weights_errors(tmp_path, monkeypatch) -> None:
    import torchvision.models._api as api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    args = ResNetArgs(variant="resnet18")
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth"):
        load_torchvision_weights(build_backbone("resnet", {}), "resnet18", "IMAGENET1K_V1", args)
    with pytest.raises(ConfigError, match="allowed: DEFAULT, IMAGENET1K_V1"):
        load_torchvision_weights(build_backbone("resnet", {}), "resnet18", "IMAGENET9K", args)
