"""SSF (Lian et al. 2022): scale and shift the features after every linear, convolution and
normalisation layer of the frozen backbone; merged into the weights after training."""

from __future__ import annotations

from typing import Any

import optuna
import torch
from torch import nn

from tlbench.core.frozen import Frozen
from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import new_classifier
from tlbench.strategies.parameter_efficient import (
    count,
    replace_module,
    seeded,
    suggest_peft_optimizer,
    train_only,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter

#: Layers SSF follows; their output's channel dimension is the last one for linear and layer-norm
#: layers (token sequences), the second for convolutions and batch norms (feature maps).
LAST_DIM = (nn.Linear, nn.LayerNorm)
CHANNEL_DIM = (nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm)


class ScaleShift(nn.Module):
    """``inner(x) · γ + β`` per output channel; γ ~ N(1, 0.02²) and β ~ N(0, 0.02²) as in SSF's code."""

    def __init__(self, inner: nn.Module, channels: int) -> None:
        super().__init__()
        self.inner = inner
        self.scale = nn.Parameter(torch.empty(channels).normal_(1.0, 0.02))
        self.shift = nn.Parameter(torch.empty(channels).normal_(0.0, 0.02))
        self.channel_dim = -1 if isinstance(inner, LAST_DIM) else 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x)
        shape = [1] * y.dim()
        shape[self.channel_dim] = -1
        return y * self.scale.view(shape) + self.shift.view(shape)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """``inner`` with γ and β folded into its weight and bias (a layer without a bias gains one;
        a batch norm's affine parameters absorb them): the same function, no extra module."""
        inner, g, b = self.inner, self.scale, self.shift
        weight = inner.weight
        if weight is None:  # an affine-free norm: give it affine parameters γ and β
            inner.weight = nn.Parameter(g.clone())
            inner.bias = nn.Parameter(b.clone())
            return inner
        weight.mul_(g.view(-1, *[1] * (weight.dim() - 1)))
        if inner.bias is None:
            inner.bias = nn.Parameter(b.clone())
        else:
            inner.bias.mul_(g).add_(b)
        return inner


def channels(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):
        return module.out_features
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return module.out_channels
    if isinstance(module, nn.LayerNorm):
        return module.normalized_shape[-1] if len(module.normalized_shape) == 1 else None
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return None


def add_ssf(backbone: Backbone) -> list[ScaleShift]:
    """Wraps every linear, convolution, layer-norm and batch-norm layer of ``backbone`` (in place)."""
    targets = [(n, m) for n, m in backbone.named_modules() if n and channels(m) is not None
               and not isinstance(m, nn.modules.linear.NonDynamicallyQuantizableLinear)]
    wrapped = []
    for name, module in targets:
        ssf = ScaleShift(module, channels(module))
        replace_module(backbone, name, ssf)
        wrapped.append(ssf)
    return wrapped


def merge_ssf(backbone: Backbone) -> bool:
    """Folds every :class:`ScaleShift` of ``backbone`` into the layer it follows (in place); True
    when no layer had to gain a parameter (the state dict's keys are the backbone's own again)."""
    before = count(backbone.parameters())
    wrappers = [n for n, m in backbone.named_modules() if isinstance(m, ScaleShift)]
    added = sum(2 * backbone.get_submodule(n).scale.numel() for n in wrappers)
    for name in wrappers:
        replace_module(backbone, name, backbone.get_submodule(name).merged())
    return count(backbone.parameters()) == before - added


class SSFOptions(Frozen):
    #: Fold the scales and shifts into the layers after training (Lian et al. §3.3): inference then runs
    #: the backbone's own architecture (bias-free layers gain a bias). False keeps them as modules.
    merge: bool = True


class SSF(Strategy):
    """SSF (Lian et al. 2022, "Scaling & Shifting Your Features: A New Baseline for Efficient Model
    Tuning", NeurIPS): after every linear, convolution and normalisation layer of the frozen
    backbone, a trained per-channel scale γ and shift β (the paper's SSF-ADA placement), with the
    new head. Being affine, they fold into the preceding layer after training (``merge``), so
    inference costs the backbone's architecture (plus a bias for each bias-free layer, e.g. a
    convolution before a batch norm). Layers whose weights a module uses directly instead of
    calling them (the projections inside torchvision's ``nn.MultiheadAttention``) get none."""

    name = "ssf"
    description = "per-channel scale and shift after every layer of the frozen backbone, merged after training"
    Options = SSFOptions

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_peft_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        wrapped = seeded(seed, lambda: add_ssf(model.backbone))
        model.to(runtime.device)
        added = [p for w in wrapped for p in (w.scale, w.shift)]
        predictor = train_only(model, added, task, params, seed=seed, reporter=reporter, runtime=runtime,
                               batch_size=self.batch_size, plain=False)
        if self.options.merge:
            predictor.plain = merge_ssf(model.backbone)
        return predictor.annotate(merged=self.options.merge, ssf_layers=len(wrapped), ssf_parameters=count(added))
