"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; residual adapters for CNNs,
Rebuffi et al. 2017)."""

from __future__ import annotations

from typing import Any, Literal

import optuna
import torch
from pydantic import Field
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen
from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import new_classifier
from tlbench.strategies.parameter_efficient import (
    OnOutput,
    count,
    first_input,
    output_shapes,
    replace_module,
    seeded,
    suggest_peft_optimizer,
    token_model,
    train_only,
)
from tlbench.training.backbones import Backbone, TimmBackbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class Bottleneck(nn.Module):
    """``h + up(GELU(down(h)))`` over the channel dimension (the last one for token sequences, the
    second for feature maps, as 1×1 convolutions); ``up`` starts at zero, so the adapter starts as
    the identity and training starts from the pretrained function."""

    def __init__(self, channels: int, bottleneck: int, *, spatial_dims: int = 0) -> None:
        super().__init__()
        if spatial_dims == 0:
            self.down, self.up = nn.Linear(channels, bottleneck), nn.Linear(bottleneck, channels)
        else:
            conv = {1: nn.Conv1d, 2: nn.Conv2d}[spatial_dims]
            self.down, self.up = conv(channels, bottleneck, 1), conv(bottleneck, channels, 1)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(nn.functional.gelu(self.down(h)))


class AdapterOptions(Frozen):
    #: houlsby: an adapter after the attention and after the MLP of every block (Houlsby et al.);
    #: pfeiffer: after the MLP only (Pfeiffer et al. 2021). Convolutional backbones get one residual
    #: adapter after each layer group whatever the placement.
    placement: Literal["houlsby", "pfeiffer"] = "houlsby"
    bottlenecks: tuple[int, ...] = Field((8, 16, 32), min_length=1)  # searched; capped at the width


class Adapter(Strategy):
    """Bottleneck adapters: small residual MLPs inserted into the frozen backbone, trained with the
    new head. ViT-family backbones get them after each block's attention and MLP (Houlsby et al.
    2019, "Parameter-Efficient Transfer Learning for NLP", ICML) or after the MLP only (Pfeiffer
    et al. 2021, "AdapterFusion", EACL: ``placement: pfeiffer``); a convolutional backbone whose
    layer groups run in sequence gets a 1×1-convolution residual adapter after each group
    (Rebuffi et al. 2017, "Learning multiple visual domains with residual adapters", NeurIPS). The
    bottleneck width is searched. Inference runs the adapters too: their parameters count."""

    name = "adapter"
    description = "bottleneck adapters in the frozen backbone (Houlsby/Pfeiffer; residual for CNNs) + new head"
    Options = AdapterOptions

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_peft_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "bottleneck": trial.suggest_categorical("bottleneck", list(self.options.bottlenecks))}

    def sites(self, backbone: Backbone, example: torch.Tensor) -> dict[str, tuple[int, int]]:
        """Each adapted submodule's dotted name → (channels, spatial dims) of its output."""
        tokens = token_model(backbone)
        if tokens is not None:
            names = tokens.mlp if self.options.placement == "pfeiffer" else \
                [n for pair in zip(tokens.attention, tokens.mlp) for n in pair]
            return {n: (tokens.dim, 0) for n in names}
        if isinstance(backbone, TimmBackbone):  # its groups are containers, not stages run in sequence
            raise ConfigError(f"strategy 'adapter' supports ViT-family timm models and the built-in sequential "
                              f"backbones; timm model {type(backbone.net).__name__} is neither")
        names = [f"groups.{i}" for i in range(len(backbone.groups))]
        shapes = output_shapes(backbone, names, example)
        return {n: (s[1], len(s) - 2) for n, s in shapes.items()}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        example = first_input(task, runtime.device)
        added: list[nn.Parameter] = []

        def insert() -> None:
            for name, (channels, dims) in self.sites(model.backbone, example).items():
                adapter = Bottleneck(channels, min(params["bottleneck"], channels), spatial_dims=dims)
                replace_module(model.backbone, name, OnOutput(model.backbone.get_submodule(name), adapter))
                added.extend(adapter.parameters())

        seeded(seed, insert)
        model.to(runtime.device)
        predictor = train_only(model, added, task, params, seed=seed, reporter=reporter, runtime=runtime,
                               batch_size=self.batch_size, plain=False)
        return predictor.annotate(adapters=len(added) // 4, adapter_parameters=count(added))
