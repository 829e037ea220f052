"""Visual prompt tuning (Jia et al. 2022), shallow and deep, for ViT-family backbones."""

from __future__ import annotations

import math
from typing import Any

import optuna
import torch
from pydantic import Field
from torch import nn

from tlbench.core.frozen import Frozen
from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import new_classifier
from tlbench.strategies.parameter_efficient import (
    OnInput,
    OnOutput,
    TokenModel,
    replace_module,
    require_tokens,
    seeded,
    suggest_peft_optimizer,
    train_only,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class Prompts(nn.Module):
    """``length`` learned tokens placed right after the ``prefix`` tokens (class/register tokens):
    inserted into the sequence (``replace=False``, the first layer) or replacing the previous
    layer's prompt outputs (``replace=True``, VPT-deep's later layers). Initialised uniformly in
    ±√(6 / (3·patch² + dim)), Xavier's bound for the patch projection (VPT's code)."""

    def __init__(self, length: int, dim: int, *, prefix: int, patch: int, replace: bool, dropout: float) -> None:
        super().__init__()
        bound = math.sqrt(6.0 / (3 * patch * patch + dim))
        self.tokens = nn.Parameter(torch.empty(1, length, dim).uniform_(-bound, bound))
        self.prefix, self.replace, self.dropout = prefix, replace, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p, n = self.prefix, self.tokens.shape[1]
        # functional dropout: a module called on a view of a parameter trips the FLOP counter's module tracker
        prompts = nn.functional.dropout(self.tokens.expand(x.shape[0], -1, -1), self.dropout, self.training)
        rest = x[:, p + n:] if self.replace else x[:, p:]
        return torch.cat([x[:, :p], prompts, rest], dim=1)


class DropPrompts(nn.Module):
    """Removes the prompt tokens, so pooling (class token or the patch average) sees the original
    sequence layout."""

    def __init__(self, prefix: int, length: int) -> None:
        super().__init__()
        self.prefix, self.length = prefix, length

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[:, :self.prefix], x[:, self.prefix + self.length:]], dim=1)


class VPTOptions(Frozen):
    #: deep: new prompts before every block (VPT-deep); false: before the first only (VPT-shallow).
    deep: bool = True
    lengths: tuple[int, ...] = Field((1, 5, 10, 50), min_length=1)  # prompt lengths searched
    dropout: float = Field(0.1, ge=0, lt=1)  # on the prompts, as VPT's configs


def add_prompts(backbone: Backbone, tokens: TokenModel, length: int, *, deep: bool, dropout: float) -> list[nn.Parameter]:
    """Inserts prompts into ``backbone`` (in place); returns their parameters."""
    def make(replace: bool) -> Prompts:
        return Prompts(length, tokens.dim, prefix=tokens.prefix, patch=tokens.patch, replace=replace, dropout=dropout)

    first = make(False)
    replace_module(backbone, tokens.embed, OnOutput(backbone.get_submodule(tokens.embed), first))
    added = [first.tokens]
    if deep:
        for name in tokens.blocks[1:]:
            later = make(True)
            replace_module(backbone, name, OnInput(backbone.get_submodule(name), later))
            added.append(later.tokens)
    if tokens.final is not None:
        replace_module(backbone, tokens.final,
                       OnInput(backbone.get_submodule(tokens.final), DropPrompts(tokens.prefix, length)))
    return added


class VPT(Strategy):
    """Visual prompt tuning (Jia et al. 2022, "Visual Prompt Tuning", ECCV): learned prompt tokens
    are inserted after the class token of a frozen ViT — before the first block only (shallow) or
    new ones before every block (deep, the default) — and train with the new head. The prompt
    length is searched. Backbones without a token sequence are refused in one line. Inference runs
    the prompts too (their parameters count, and the longer sequence costs compute)."""

    name = "vpt"
    description = "visual prompt tuning, deep or shallow (ViT-family backbones) + new head"
    Options = VPTOptions
    needs_tokens = True

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        require_tokens(backbone, self.name)
        return {**suggest_peft_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "prompt_length": trial.suggest_categorical("prompt_length", list(self.options.lengths))}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        tokens = require_tokens(backbone, self.name)
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        added = seeded(seed, lambda: add_prompts(model.backbone, tokens, params["prompt_length"],
                                                 deep=self.options.deep, dropout=self.options.dropout))
        model.to(runtime.device)
        predictor = train_only(model, added, task, params, seed=seed, reporter=reporter, runtime=runtime,
                               batch_size=self.batch_size, plain=False)
        return predictor.annotate(deep=self.options.deep, prompt_parameters=sum(p.numel() for p in added))
