"""The parameter-efficient strategies' mechanisms: what trains and what stays frozen, parameter counts
against hand counts, merged and unmerged forms computing the same function, one-line refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.strategies import STRATEGIES
from tlbench.strategies.parameter_efficient import token_model
from tlbench.strategies.ssf import add_ssf, merge_ssf
from tlbench.testing.fixtures import tiny_vit
from tlbench.training.backbones import build_backbone
from tlbench.training.loop import NullReporter

ADAMW = {"optimizer": "adamw", "lr": 1e-2, "weight_decay": 1e-4, "warmup_fraction": 0.0, "epochs": 2}


def make(name: str, **options):
    return STRATEGIES.get(name)(epochs=(2, 3), batch_size=8, options=options or None)


def fit(name: str, backbone, task, runtime, params=None, seed: int = 0, **options):
    return make(name, **options).fit(backbone, task, {**ADAMW, **(params or {})}, seed=seed,
                                     reporter=NullReporter(), runtime=runtime)


def head_size(backbone, task) -> int:
    return backbone.feature_dim * task.num_classes + task.num_classes


@pytest.fixture
def vit():
    return tiny_vit()


def test_the_catalogue_lists_the_peft_strategies() -> None:
    assert {"bitfit", "lora", "adapter", "vpt", "ssf"} <= set(STRATEGIES.names())


# --- BitFit ------------------------------------------------------------------------------------

def test_bitfit_trains_only_biases_and_keeps_weights_and_statistics(tiny_backbone, tiny_task, runtime) -> None:
    predictor = fit("bitfit", tiny_backbone, tiny_task, runtime)
    after = predictor.model.backbone.state_dict()
    for key, value in tiny_backbone.state_dict().items():
        same = torch.equal(value, after[key])
        assert same != key.endswith(".bias"), key  # biases moved, everything else (running stats too) did not
    biases = sum(p.numel() for n, p in tiny_backbone.named_parameters() if n.endswith(".bias"))
    assert predictor.trainable_parameters == biases + head_size(tiny_backbone, tiny_task)
    assert predictor.inference_parameters == sum(p.numel() for p in tiny_backbone.parameters()) + \
        head_size(tiny_backbone, tiny_task)


# --- LoRA --------------------------------------------------------------------------------------

def test_lora_on_a_cnn_adapts_every_convolution_with_a_hand_counted_rank_r_update(tiny_backbone, tiny_task,
                                                                               runtime) -> None:
    r = 4
    predictor = fit("lora", tiny_backbone, tiny_task, runtime, {"rank": r, "alpha": 8.0, "dropout": 0.0}, merge=False)
    convs = [m for m in tiny_backbone.modules() if isinstance(m, nn.Conv2d)]
    # A: a conv from in_channels to r with the layer's kernel; B: a 1x1 conv from r to out_channels
    hand = sum(r * c.in_channels * c.kernel_size[0] * c.kernel_size[1] + r * c.out_channels for c in convs)
    assert predictor.trainable_parameters == hand + head_size(tiny_backbone, tiny_task)
    assert predictor.info()["adapted_layers"] == len(convs) and predictor.info()["lora_parameters"] == hand
    # the pretrained weights under the low-rank update stayed frozen
    trained = {k.replace(".base_layer", ""): v for k, v in predictor.model.backbone.state_dict().items()
               if "lora_" not in k}
    assert trained.keys() == tiny_backbone.state_dict().keys()
    assert all(torch.equal(v, trained[k]) for k, v in tiny_backbone.state_dict().items())
    assert predictor.state() is None  # unmerged: not the backbone's architecture


def test_lora_on_a_vit_adapts_the_attention_projections_and_merging_keeps_the_function(vit, tiny_task,
                                                                                       runtime) -> None:
    r, dim = 2, vit.feature_dim
    params = {"rank": r, "alpha": 4.0, "dropout": 0.1}
    unmerged = fit("lora", vit, tiny_task, runtime, params, merge=False)
    merged = fit("lora", vit, tiny_task, runtime, params, merge=True)
    blocks = len(vit.net.blocks)
    hand = blocks * (r * dim + 3 * dim * r)  # qkv: A is (r, D), B is (3D, r)
    assert unmerged.trainable_parameters == merged.trainable_parameters == hand + head_size(vit, tiny_task)
    assert merged.info()["merged"] is True and unmerged.info()["merged"] is False
    # merged: the backbone's own architecture and parameter count, and the same logits as unmerged
    assert merged.inference_parameters == sum(p.numel() for p in vit.parameters()) + head_size(vit, tiny_task)
    assert unmerged.inference_parameters == merged.inference_parameters + hand
    torch.testing.assert_close(merged.logits(tiny_task.test), unmerged.logits(tiny_task.test), atol=1e-5, rtol=1e-5)
    assert set(merged.state()) == {f"backbone.{k}" for k in vit.state_dict()} | {"head.weight", "head.bias"}


def test_lora_target_modules_are_overridable_and_a_miss_is_one_line(vit, tiny_task, runtime) -> None:
    params = {"rank": 2, "alpha": 2.0, "dropout": 0.0}
    predictor = fit("lora", vit, tiny_task, runtime, params, target_modules=["fc1", "fc2"], merge=False)
    assert predictor.info()["adapted_layers"] == 2 * len(vit.net.blocks)
    with pytest.raises(ConfigError) as err:
        fit("lora", vit, tiny_task, runtime, params, target_modules=["no_such_layer"])
    assert "\n" not in str(err.value) and str(err.value).startswith("strategy_options.lora.target_modules: ")


# --- adapters ----------------------------------------------------------------------------------

@pytest.mark.parametrize("placement, per_block", [("houlsby", 2), ("pfeiffer", 1)])
def test_adapters_on_a_vit_follow_the_placement_and_start_as_the_identity(vit, tiny_task, runtime, placement,
                                                                          per_block) -> None:
    b, dim = 4, vit.feature_dim
    params = {"bottleneck": b, "epochs": 1, "lr": 0.0}  # lr 0: the adapters keep their initial value
    predictor = fit("adapter", vit, tiny_task, runtime, params, placement=placement)
    hand = per_block * len(vit.net.blocks) * (dim * b + b + b * dim + dim)
    assert predictor.trainable_parameters == hand + head_size(vit, tiny_task)
    assert predictor.inference_parameters == sum(p.numel() for p in vit.parameters()) + head_size(vit, tiny_task) + hand
    x = tiny_task.test.x[:5]
    with torch.no_grad():  # the up-projection starts at zero: the adapted backbone computes the pretrained features
        torch.testing.assert_close(predictor.model.eval().backbone(x), vit.eval()(x))
    trained = fit("adapter", vit, tiny_task, runtime, {"bottleneck": b})
    assert trained.state() is None


def test_adapters_on_a_cnn_follow_each_layer_group_and_other_timm_models_are_refused(tiny_backbone, tiny_task,
                                                                                    runtime) -> None:
    b = 4
    predictor = fit("adapter", tiny_backbone, tiny_task, runtime, {"bottleneck": b})
    widths = [g[0].out_channels for g in tiny_backbone.groups]
    hand = sum(c * min(b, c) + min(b, c) + min(b, c) * c + c for c in widths)
    assert predictor.trainable_parameters == hand + head_size(tiny_backbone, tiny_task)
    cnn = build_backbone("timm", {"model": "resnet10t", "in_chans": 1})
    with pytest.raises(ConfigError, match="^strategy 'adapter' supports ViT-family timm models"):
        fit("adapter", cnn, tiny_task, runtime, {"bottleneck": b})


# --- VPT ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("deep", [True, False])
def test_vpt_adds_prompt_tokens_before_the_blocks_and_trains_nothing_else(vit, tiny_task, runtime, deep) -> None:
    length, dim, blocks = 3, vit.feature_dim, len(vit.net.blocks)
    predictor = fit("vpt", vit, tiny_task, runtime, {"prompt_length": length}, deep=deep)
    prompts = (blocks if deep else 1) * length * dim
    assert predictor.trainable_parameters == prompts + head_size(vit, tiny_task)
    assert predictor.info()["prompt_parameters"] == prompts
    assert predictor.inference_parameters == sum(p.numel() for p in vit.parameters()) + head_size(vit, tiny_task) \
        + prompts
    model = predictor.model.eval()
    seen = []
    hooks = [model.backbone.get_submodule(name).register_forward_hook(lambda m, a, out: seen.append(out.shape[1]))
             for name in token_model(vit).blocks]
    x = tiny_task.test.x[:2]
    with torch.no_grad():
        features = model.backbone(x)
    for h in hooks:
        h.remove()
    patches = (8 // 4) ** 2  # 8 x 8 digits on 4-pixel patches
    assert seen == [1 + length + patches] * blocks  # class token, prompts, patches: in every block
    assert features.shape == (2, dim)
    # the frozen transformer is bit-identical to the pretrained one
    frozen = {k.replace(".inner", ""): v for k, v in model.backbone.state_dict().items() if "tokens" not in k}
    assert all(torch.equal(v, frozen[k]) for k, v in vit.state_dict().items())


def test_vpt_refuses_a_backbone_without_tokens_in_one_line(tiny_backbone, tiny_task, runtime) -> None:
    with pytest.raises(ConfigError) as err:
        fit("vpt", tiny_backbone, tiny_task, runtime, {"prompt_length": 1})
    assert str(err.value) == ("strategy 'vpt' needs a ViT-family backbone (a token sequence: timm's "
                              "VisionTransformer and relatives, arch vit); got 'cnn2d' (SmallCNN2d)")


def test_vpt_and_lora_find_the_torchvision_vit_structure(tiny_task) -> None:
    vit = build_backbone("vit", {"variant": "vit_b_32"})
    tokens = token_model(vit)
    assert tokens.prefix == 1 and tokens.dim == 768 and tokens.patch == 32 and len(tokens.blocks) == 12
    from tlbench.strategies.lora import default_targets
    from tlbench.strategies.vpt import add_prompts

    assert default_targets(vit) == tokens.attention  # torchvision fuses q, k, v into nn.MultiheadAttention
    prompted = copy.deepcopy(vit).eval()
    add_prompts(prompted, tokens, 2, deep=True, dropout=0.0)
    with torch.no_grad():
        assert prompted(torch.zeros(1, 3, 224, 224)).shape == (1, 768)


# --- SSF ---------------------------------------------------------------------------------------

def test_ssf_scales_and_shifts_every_layer_and_merges_into_the_same_function(vit, tiny_backbone, tiny_task,
                                                                           runtime) -> None:
    for backbone, plain in ((vit, True), (tiny_backbone, False)):
        layers = [m for m in backbone.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm, nn.BatchNorm2d))]
        hand = 2 * sum(getattr(m, "out_features", None) or getattr(m, "out_channels", None)
                       or getattr(m, "num_features", None) or m.normalized_shape[-1] for m in layers)
        unmerged = fit("ssf", backbone, tiny_task, runtime, merge=False)
        merged = fit("ssf", backbone, tiny_task, runtime, merge=True)
        assert unmerged.trainable_parameters == merged.trainable_parameters == hand + head_size(backbone, tiny_task)
        torch.testing.assert_close(merged.logits(tiny_task.test), unmerged.logits(tiny_task.test),
                                   atol=1e-4, rtol=1e-4)
        base = sum(p.numel() for p in backbone.parameters()) + head_size(backbone, tiny_task)
        # the ViT's layers all have biases: merged, it is exactly the backbone; the CNN's convolutions gain one
        assert (merged.inference_parameters == base) == plain and (merged.state() is not None) == plain
        assert unmerged.inference_parameters == base + hand


def test_ssf_merging_covers_layers_without_bias_or_affine_parameters() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv1d(2, 3, 3, bias=False), nn.BatchNorm1d(3, affine=False), nn.Flatten(),
                        nn.Linear(6, 4, bias=False), nn.LayerNorm(4, elementwise_affine=False)).eval()
    net[1].running_mean.uniform_(-1, 1)
    wrapped = copy.deepcopy(net)
    add_ssf(wrapped)
    x = torch.randn(5, 2, 4)
    with torch.no_grad():
        before = wrapped(x)
        assert not torch.allclose(before, net(x))  # N(1, 0.02) scales and N(0, 0.02) shifts: not the identity
        assert merge_ssf(wrapped) is False  # each layer gained a bias or affine parameters
        torch.testing.assert_close(wrapped(x), before)


# --- the offline demonstration suite, end to end ------------------------------------------------

@pytest.mark.slow
def test_the_peft_suite_runs_every_strategy_end_to_end_and_reports_their_costs(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    suite = Path(__file__).resolve().parents[1] / "suites" / "peft.yaml"
    small = ["--set", "trials=2", "--set", "seeds=1", "--set", "training.epochs=[1, 2]",
             "--set", "source_tasks.glyphs-alnum.args.n=1000", "--set", "backbones.glyph-vit.pretrain.epochs=1",
             "--tasks", "digits-5shot", "--report", "tables"]
    got = subprocess.run([sys.executable, "-m", "tlbench.cli", "run", str(suite), "--out", str(tmp_path), *small],
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    runs = pd.read_parquet(tmp_path / "runs.parquet").set_index("strategy")
    assert set(runs.index) == {"linear_probe", "full_finetune", "bitfit", "lora", "adapter", "vpt", "ssf"}
    full = runs.loc["full_finetune"]
    for name in ("bitfit", "lora", "adapter", "vpt", "ssf"):
        assert runs.loc[name, "trainable_parameters"] < full["trainable_parameters"] / 10, name
    # merged LoRA and SSF, and BitFit, predict through the backbone's own parameters; adapters and prompts add theirs
    for name in ("bitfit", "lora", "ssf"):
        assert runs.loc[name, "inference_parameters"] == full["inference_parameters"], name
    for name in ("adapter", "vpt"):
        assert runs.loc[name, "inference_parameters"] > full["inference_parameters"], name
    assert "| lora |" in (tmp_path / "table.md").read_text()


def test_a_suite_pairing_vpt_with_a_cnn_is_refused_before_anything_trains(tmp_path, capsys) -> None:
    from pathlib import Path

    from tlbench.cli import main

    smoke = Path(__file__).resolve().parents[1] / "suites" / "smoke.yaml"
    assert main(["run", str(smoke), "--strategies", "vpt", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "strategies: 'vpt' needs a ViT-family backbone (a token sequence), and " \
        "backbone 'glyph-cnn' (cnn2d) has none" in err
    assert not (tmp_path / "out" / "store.journal").exists()
