from __future__ import annotations

import pytest
import torch

from tlbench.core.errors import ConfigError
from tlbench.training.backbones import (
    Classifier,
    EfficientNet,
    ResNetArgs,
    TorchvisionResNet,
    VariantArgs,
    build_backbone,
    load_checkpoint,
    state_fingerprint,
)

CASES = [
    ("cnn2d", {"width": 4}, (2, 1, 8, 8)),
    ("cnn1d", {"width": 4}, (2, 1, 40)),
    ("resnet", {"variant": "resnet18", "in_channels": 1, "small_input": True}, (2, 1, 16, 16)),
    ("resnet", {"variant": "resnet18"}, (2, 3, 32, 32)),
    ("vit", {"variant": "vit_b_32"}, (2, 3, 224, 224)),
    ("convnext", {"variant": "convnext_tiny"}, (2, 3, 64, 64)),
    ("efficientnet", {"variant": "efficientnet_b0"}, (2, 3, 64, 64)),
    ("mobilenet_v3", {"variant": "mobilenet_v3_large"}, (2, 3, 64, 64)),
]

# torchvision's own network with its last linear layer removed: what the adapter's features must be
PENULTIMATE = {
    "vit": lambda net: setattr(net, "heads", torch.nn.Identity()),
    "convnext": lambda net: net.classifier.__setitem__(2, torch.nn.Identity()),
    "efficientnet": lambda net: setattr(net, "classifier", torch.nn.Identity()),
    "mobilenet_v3": lambda net: net.classifier.__setitem__(3, torch.nn.Identity()),
    "resnet": lambda net: setattr(net, "fc", torch.nn.Identity()),
}


@pytest.mark.parametrize("arch,args,shape", [c for c in CASES if c[0] in PENULTIMATE and "small_input" not in c[1]])
def test_torchvision_adapters_compute_the_networks_own_features(arch, args, shape) -> None:
    import torchvision

    from tlbench.training.backbones import BACKBONES

    net = torchvision.models.get_model(args["variant"], weights=None).eval()
    backbone = BACKBONES.get(arch)(**args, net=net).eval()  # shares the modules, wraps them as groups
    x = torch.randn(shape)
    with torch.no_grad():
        ours = backbone.forward_features(x)
        PENULTIMATE[arch](net)
        theirs = net(x)
    assert ours.shape == theirs.shape == (2, backbone.feature_dim)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert len(backbone.groups) >= 5  # stem/embedding, stages or blocks, head-side group


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
    feats = backbone.forward_features(x)
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


def test_a_checkpoint_with_a_head_keeps_it_as_the_source_head(tmp_path) -> None:
    """``{"backbone", "head", "source_accuracy"}`` (the pretraining cache's own format): the head
    gives the source-class probabilities LEEP and NCE read; a plain state dict gives none."""
    src = build_backbone("cnn1d", {"width": 4}, seed=2)
    weight, bias = torch.randn(7, src.feature_dim), torch.randn(7)
    torch.save({"backbone": src.state_dict(), "head": {"weight": weight, "bias": bias}, "source_accuracy": 0.81},
               tmp_path / "with_head.pt")
    loaded = load_checkpoint(build_backbone("cnn1d", {"width": 4}, seed=5), tmp_path / "with_head.pt")
    head = loaded.source_head
    assert head is not None and head.accuracy == 0.81 and torch.equal(head.weight, weight)
    x = torch.randn(5, 1, 16)
    expected = torch.softmax((src.forward_features(x) @ weight.T + bias).double(), 1)
    assert torch.allclose(head.probabilities(loaded.forward_features(x)), expected, atol=1e-6)
    torch.save(src.state_dict(), tmp_path / "plain.pt")
    assert load_checkpoint(loaded, tmp_path / "plain.pt").source_head is None  # the head is the file's, not kept
    for bad, needle in [({"weight": torch.randn(7, src.feature_dim + 1), "bias": bias}, "head must be"),
                        ({"weight": weight}, "head must be"), ("fc", "head must be")]:
        torch.save({"backbone": src.state_dict(), "head": bad}, tmp_path / "bad.pt")
        with pytest.raises(ConfigError, match=needle):
            load_checkpoint(src, tmp_path / "bad.pt")
    torch.save({"backbone": src.state_dict(), "head": {"weight": weight, "bias": bias}, "source_accuracy": 81},
               tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"source_accuracy 81 must be a number in \[0, 1\]"):
        load_checkpoint(src, tmp_path / "bad.pt")


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
    with pytest.raises(ConfigError, match="known: cnn1d, cnn2d, convnext, efficientnet, mobilenet_v3, resnet, timm, vit"):
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
    loaded = TorchvisionResNet.with_weights(ResNetArgs(variant="resnet18"), "IMAGENET1K_V1")
    assert torch.equal(loaded.groups[0][0].weight, reference.conv1.weight)
    assert loaded.weights_id.startswith("torchvision:resnet18:IMAGENET1K_V1:TorchvisionResNet:")
    # another family, from the same prepared cache
    member = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1
    effnet = torchvision.models.efficientnet_b0(weights=None)
    torch.save(effnet.state_dict(), ckpt_dir / member.url.rsplit("/", 1)[1])
    loaded = EfficientNet.with_weights(VariantArgs(variant="efficientnet_b0"), "IMAGENET1K_V1")
    assert torch.equal(loaded.groups[0][0].weight, effnet.features[0][0].weight)
    assert loaded.weights_id.startswith("torchvision:efficientnet_b0:IMAGENET1K_V1:EfficientNet:")


def test_torchvision_weights_errors(tmp_path, monkeypatch) -> None:
    import torchvision.models._api as api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(api, "load_state_dict_from_url", offline)
    args = ResNetArgs(variant="resnet18")
    with pytest.raises(ConfigError, match=r"resnet18-f37072fd\.pth"):
        TorchvisionResNet.with_weights(args, "IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="allowed: DEFAULT, IMAGENET1K_V1"):
        TorchvisionResNet.with_weights(args, "IMAGENET9K")
    with pytest.raises(ConfigError, match=r"unknown efficientnet variant 'efficientnet_b9'"):
        EfficientNet.with_weights(VariantArgs(variant="efficientnet_b9"), "DEFAULT")


def test_scratch_redraws_parameters_no_layer_resets() -> None:
    """ViT's position embedding and class token belong to no layer with reset_parameters:
    a torchvision backbone is rebuilt from its arguments, so they are re-drawn too."""
    vit = build_backbone("vit", {"variant": "vit_b_32"})
    embedding = vit.groups[0]
    with torch.no_grad():
        for p in embedding.parameters():
            p.fill_(0.5)  # stands in for pretrained values
    fresh = vit.reinitialized(seed=2)
    assert all(not torch.equal(a, b) for a, b in zip(fresh.groups[0].parameters(), embedding.parameters()))
    assert state_fingerprint(fresh) == state_fingerprint(vit.reinitialized(seed=2))
