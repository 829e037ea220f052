"""timm models as backbones (``arch: timm:<name>``): layer groups from timm's own
``group_matcher``, features from its pre-logits, weights and preprocessing from its
pretrained config. Skipped when the optional dependency timm is not installed."""

from __future__ import annotations

import copy
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

timm = pytest.importorskip("timm")

from tlbench.core.errors import ConfigError  # noqa: E402
from tlbench.strategies.parts import FreezeSchedule, group_parameters  # noqa: E402
from tlbench.training.backbones import Classifier, TimmArgs, TimmBackbone, build_backbone  # noqa: E402

MODELS = [("resnet18", 32), ("vit_tiny_patch16_224", 224), ("convnext_atto", 32), ("efficientnet_b0", 32)]


@pytest.mark.parametrize("model,size", MODELS)
def test_groups_cover_every_parameter_once_in_timm_order(model: str, size: int) -> None:
    backbone = build_backbone("timm", {"model": model})
    in_groups = [id(p) for g in backbone.groups for p in g.parameters()]
    assert len(in_groups) == len(set(in_groups)) == len(list(backbone.parameters()))
    assert len(backbone.groups) >= 4
    # input → output: timm's group ids order the groups; the stem's parameters come first
    first = {id(p) for p in backbone.groups[0].parameters()}
    assert id(next(iter(backbone.net.parameters()))) in first
    x = torch.randn(2, 3, size, size)
    net = timm.create_model(model, pretrained=False, num_classes=0).eval()
    net.load_state_dict(backbone.net.state_dict())
    with torch.no_grad():
        assert torch.allclose(backbone.eval().forward_features(x), net(x), atol=1e-5)  # timm's own pre-logits
    assert backbone.forward_features(x).shape == (2, backbone.feature_dim)
    assert set(backbone.state_dict()) == {f"net.{k}" for k in net.state_dict()}  # groups add no keys


def test_groups_follow_copies_and_freezing_works() -> None:
    backbone = build_backbone("timm", {"model": "resnet18"})
    clone = copy.deepcopy(backbone)
    ours = {id(p) for p in clone.parameters()}
    assert {id(p) for g in clone.groups for p in g.parameters()} == ours  # not the original's
    model = Classifier(clone, clone.new_head(3))
    FreezeSchedule.only([len(clone.groups)]).on_epoch_start(0, model, None)  # head only
    params = group_parameters(model)
    assert all(not p.requires_grad for g in params[:-1] for p in g) and all(p.requires_grad for p in params[-1])
    assert not clone.net.bn1.training  # frozen groups run batch norm in eval mode


def test_shorthand_arch_in_a_suite_and_weights_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tlbench.run.plan import load_plan
    from tlbench.run.pretrain import materialize_backbone, preprocess_for

    (tmp_path / "s.yaml").write_text(textwrap.dedent("""
        name: t
        strategies: [linear_probe]
        tasks:
          digits: {dataset: digits, backbones: [vit]}
        backbones:
          vit: {arch: "timm:vit_tiny_patch16_224.augreg_in21k_ft_in1k", weights: DEFAULT}
          bad: {arch: "timm:resnet18", weights: IMAGENET1K_V1}
    """))
    from tlbench.suites.schema import parse_suite

    suite = parse_suite(tmp_path / "s.yaml")
    assert suite.backbones["vit"].arch == "timm"
    assert suite.backbones["vit"].args == {"model": "vit_tiny_patch16_224.augreg_in21k_ft_in1k"}
    with pytest.raises(ConfigError, match=r"backbones\.bad\.weights: unknown weights 'IMAGENET1K_V1'.*allowed: DEFAULT"):
        load_plan(tmp_path / "s.yaml")
    import huggingface_hub.constants as hub  # read at import: environment variables set now are ignored

    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # even with network or cached weights
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    with pytest.raises(ConfigError) as err:
        materialize_backbone("vit", suite, cache_dir=tmp_path, device=torch.device("cpu"))
    msg = str(err.value)
    assert "\n" not in msg and "backbones.vit.weights: cannot load timm weights" in msg
    assert "timm/vit_tiny_patch16_224.augreg_in21k_ft_in1k" in msg
    # preprocessing from timm's pretrained config: mean/std 0.5, bicubic, crop 224 at 0.9
    pre = preprocess_for("vit", suite)
    assert (pre.crop, pre.resize, pre.interpolation, pre.mean) == (224, 248, "bicubic", (0.5, 0.5, 0.5))
    from timm.data import create_transform, resolve_data_config

    cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k_ft_in1k").to_dict()
    reference = create_transform(**resolve_data_config(pretrained_cfg=cfg))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 260, 3), dtype=np.uint8))
    assert torch.allclose(pre.transform()(image), reference(image), atol=1e-4)


def test_scratch_redraws_every_parameter_and_models_without_drop_path_build() -> None:
    pretrained = build_backbone("timm", {"model": "vit_tiny_patch16_224"}, seed=0)
    with torch.no_grad():
        pretrained.net.pos_embed.fill_(0.5)  # stands in for pretrained values
        pretrained.net.cls_token.fill_(0.5)
    fresh = pretrained.reinitialized(3)
    assert not torch.equal(fresh.net.pos_embed, pretrained.net.pos_embed)  # no reset_parameters re-draws it
    assert not torch.equal(fresh.net.cls_token, pretrained.net.cls_token)
    again = pretrained.reinitialized(3)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), again.state_dict().values()))
    assert fresh.weights_id.startswith("random:3:") and fresh.init_args == pretrained.init_args
    assert build_backbone("timm", {"model": "vgg11"}).feature_dim > 0  # takes no drop_path_rate
    with pytest.raises(ConfigError, match="timm model 'vgg11' cannot be built with"):
        build_backbone("timm", {"model": "vgg11", "drop_path_rate": 0.1})


def test_frozen_groups_stop_stochastic_depth() -> None:
    backbone = build_backbone("timm", {"model": "vit_tiny_patch16_224", "drop_path_rate": 0.3})
    model = Classifier(backbone, backbone.new_head(3)).train()
    FreezeSchedule.only([len(backbone.groups)]).on_epoch_start(0, model, None)  # head only
    x = torch.randn(2, 3, 224, 224)
    assert torch.equal(backbone(x), backbone(x))  # frozen: no dropped paths


def test_unknown_model_and_missing_pretrained_config() -> None:
    with pytest.raises(ConfigError, match="unknown timm model 'resnet7'"):
        build_backbone("timm", {"model": "resnet7"})
    with pytest.raises(ConfigError, match="allowed: DEFAULT"):
        TimmBackbone.check_weights(TimmArgs(model="resnet18"), "IMAGENET1K_V2")


def test_strategies_train_a_timm_backbone(runtime) -> None:
    """Discriminative rates, gradual unfreezing and the probe act on timm's groups like on
    any backbone."""
    from helpers import sample_params

    from tlbench.strategies import STRATEGIES
    from tlbench.suites.schema import SplitSpec, TaskSpec
    from tlbench.suites.splitting import build_task
    from tlbench.training.loop import NullReporter

    task = build_task("t", TaskSpec(dataset="digits", split=SplitSpec(shots=5, val_per_class=3, max_test=50)),
                      where="t")
    backbone = build_backbone("timm", {"model": "resnet18", "in_chans": 1})
    for name in ("discriminative_lr", "gradual_unfreeze", "linear_probe"):
        strategy = STRATEGIES.get(name)(epochs=(2, 2), batch_size=16)
        params = sample_params(strategy, backbone)
        predictor = strategy.fit(backbone, task, params, seed=0, reporter=NullReporter(), runtime=runtime)
        assert predictor.logits(task.test).shape == (50, 10)


def hf_cache_with(model: str, net: torch.nn.Module, cache: Path) -> None:
    """Writes ``net``'s weights where the Hugging Face hub cache keeps ``model``'s pretrained
    file (``models--<org>--<name>/snapshots/<commit>/model.safetensors``, ``refs/main``)."""
    from safetensors.torch import save_file

    org, name = timm.models.get_pretrained_cfg(model).hf_hub_id.split("/")
    repo = cache / f"models--{org}--{name}"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()},
              str(repo / "snapshots" / commit / "model.safetensors"))


@pytest.mark.parametrize("model", ["test_vit.r160_in1k", "test_resnet.r160_in1k", "test_efficientnet.r160_in1k"])
def test_pretrained_weights_keep_their_imagenet_head_as_the_source_head(
        model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """timm weights loaded from the hub cache (offline, random weights in timm's real file
    format) keep their 1000-class classifier as the source head: its probabilities are timm's
    own softmax of the full model's logits, while the backbone's features and state dict are
    exactly those of ``num_classes=0`` (no head in the fine-tuned model)."""
    import huggingface_hub.constants as hub

    torch.manual_seed(0)
    reference = timm.create_model(model, pretrained=False).eval()  # the full model: the weights' own head
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))  # not an initialisation: no head bias is zero
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hf_cache_with(model, reference, tmp_path / "hf")

    backbone = TimmBackbone.with_weights(TimmArgs(model=model), "DEFAULT").eval()
    head = backbone.source_head
    assert head is not None and head.weight.shape == (1000, backbone.feature_dim) and head.accuracy is None
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits = reference(x)
        features = backbone.forward_features(x)
    assert torch.allclose(head.probabilities(features), torch.softmax(logits.double(), 1), atol=1e-5)
    headless = timm.create_model(model, pretrained=False, num_classes=0)
    assert backbone.net.state_dict().keys() == headless.state_dict().keys()
    assert backbone.weights_id.startswith(f"timm:{model}:DEFAULT")
    assert backbone.reinitialized(1).source_head is None  # re-drawn weights lose it
    assert build_backbone("timm", {"model": model}).source_head is None  # no pretrained weights: no head


def test_pretrained_weights_without_a_classifier_have_no_source_head(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights published without a classifier (a self-supervised checkpoint: the pretrained
    config says 0 classes) give no source head: the scorers that need one are skipped."""
    import huggingface_hub.constants as hub

    model = "vit_small_patch14_dinov2.lvd142m"
    assert timm.models.get_pretrained_cfg(model).num_classes == 0
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    hf_cache_with(model, timm.create_model(model, pretrained=False, num_classes=0), tmp_path / "hf")
    backbone = TimmBackbone.with_weights(TimmArgs(model=model), "DEFAULT")
    assert backbone.source_head is None and backbone.feature_dim == 384


def test_the_papers_vit_names_build_offline_with_their_layer_groups_and_every_strategy_trains_a_small_vit(
        runtime) -> None:
    """ViT-B/16 (ImageNet-21k) by the name a PEFT suite uses has its layer groups — patch embedding, each
    block (the last with the final norm) — so discriminative rates, unfreezing and LoRA's targets are defined; a small ViT
    with random weights (``model_args``) trains with each of them offline."""
    from helpers import sample_params

    from tlbench.strategies import STRATEGIES
    from tlbench.strategies.lora import default_targets
    from tlbench.suites.schema import SplitSpec, TaskSpec
    from tlbench.suites.splitting import build_task
    from tlbench.training.loop import NullReporter

    base = build_backbone("timm", {"model": "vit_base_patch16_224.augreg_in21k"})
    assert len(base.groups) == 13 and base.feature_dim == 768  # patch embedding (+ tokens), 12 blocks (+ the norm)
    assert [p.shape for p in base.groups[0].extra] == [(1, 1, 768), (1, 197, 768)]  # class token, positions
    assert default_targets(base) == [f"net.blocks.{i}.attn.qkv" for i in range(12)]
    small = build_backbone("timm", {"model": "vit_base_patch16_224.augreg_in21k", "in_chans": 1,
                                    "model_args": {"img_size": 8, "patch_size": 4, "embed_dim": 24, "depth": 2,
                                                   "num_heads": 2}})
    task = build_task("t", TaskSpec(dataset="digits", split=SplitSpec(shots=3, val_per_class=2, max_test=40)),
                      where="t")
    for name in ("discriminative_lr", "gradual_unfreeze", "surgical", "lora", "adapter", "vpt", "ssf", "bitfit"):
        strategy = STRATEGIES.get(name)(epochs=(2, 2), batch_size=16)
        params = sample_params(strategy, small)
        predictor = strategy.fit(small, task, params, seed=0, reporter=NullReporter(), runtime=runtime)
        assert predictor.logits(task.test).shape == (40, 10), name
