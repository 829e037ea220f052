"""What the parameter-efficient strategies (BitFit, LoRA, adapters, VPT, SSF) share.

They all train a small set of parameters — some of the backbone's own (BitFit) or modules
added to a copy of it (the others) — plus the new head, with everything else frozen:

* :func:`train_only` trains exactly the given parameters with the shared loop and counts them;
  the backbone's batch-norm statistics stay the pretrained ones (:class:`FrozenStatistics`),
  so what a task changes is exactly the trained parameters — what a PEFT method stores per task;
* :func:`suggest_peft_optimizer` is the shared optimizer space with the higher learning rates
  such small parameter sets take (the PEFT papers search 1e-3 … 1e-1 with AdamW, up to 10s with
  SGD for prompts);
* :func:`token_model` finds the token-sequence structure of a ViT-family backbone (timm's
  ``VisionTransformer`` and its relatives, torchvision's ViT), which VPT and the transformer
  placement of adapters need;
* :func:`replace_module` swaps a submodule by its dotted name (how added modules wrap layers,
  so copies, state dicts and devices need nothing special).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import optuna
import torch
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.data.reader import read_all
from tlbench.data.splits import Task
from tlbench.strategies.base import ModelPredictor
from tlbench.strategies.full_finetune import finetune
from tlbench.strategies.parts import OPTIMIZERS
from tlbench.training.backbones import Backbone, Classifier, TimmBackbone, VisionTransformer
from tlbench.training.context import Runtime
from tlbench.training.loop import Hook, Reporter

#: Learning-rate ranges per optimizer for parameter-efficient strategies (wider and higher than
#: full fine-tuning's: few parameters, most of them starting at zero or identity).
PEFT_LR_RANGES = {"sgd": (1e-3, 1.0), "adamw": (1e-4, 3e-2)}


def suggest_peft_optimizer(trial: optuna.Trial) -> dict[str, Any]:
    """Optimizer family, learning rate (``PEFT_LR_RANGES``), weight decay and warmup."""
    name = trial.suggest_categorical("optimizer", OPTIMIZERS)
    return {
        "optimizer": name,
        "lr": trial.suggest_float(f"lr_{name}", *PEFT_LR_RANGES[name], log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.3),
    }


class FrozenStatistics(Hook):
    """Keeps the backbone's batch-norm layers in eval mode every epoch: their running statistics
    are the pretrained ones, not re-estimated on the task (the loop puts the model in train mode
    at each epoch's start; hooks run after)."""

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for module in model.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def train_only(model: Classifier, trainable: Iterable[nn.Parameter], task: Task, params: dict[str, Any], *,
               seed: int, reporter: Reporter, runtime: Runtime, batch_size: int, plain: bool) -> ModelPredictor:
    """Trains exactly ``trainable`` (with the head's parameters, always) for ``params["epochs"]``
    epochs; every other parameter is frozen and the backbone's batch-norm statistics stay fixed.
    The predictor's trainable count is the number of parameters trained; ``plain`` says whether the
    trained network has the backbone's architecture (false with added modules still in it)."""
    chosen = {id(p): p for p in [*trainable, *model.head.parameters()]}
    for p in model.parameters():
        p.requires_grad_(id(p) in chosen)
    predictor = finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                         batch_size=batch_size, groups=[{"params": list(chosen.values())}], hooks=[FrozenStatistics()])
    predictor.plain = plain
    return predictor


def replace_module(root: nn.Module, name: str, new: nn.Module) -> None:
    """Sets the submodule at dotted ``name`` of ``root`` to ``new``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and attr.isdigit():
        parent[int(attr)] = new
    else:
        setattr(parent, attr, new)


@dataclass
class TokenModel:
    """Where a ViT-family backbone's token sequence can be reached.

    Attributes:
        blocks: dotted names (in ``Backbone``) of the transformer blocks, input → output; each takes
            and returns (N, T, D) tokens.
        embed: dotted name of the module whose output is the first block's input (prompts are
            inserted after it).
        final: dotted name of the module after the last block that still sees all tokens (prompts
            are dropped before it), or None when the pooling only reads the class token.
        prefix: tokens before the patches (class and register tokens); prompts go after them.
        dim: the token width.
        patch: the patch side in pixels (VPT's prompt initialisation uses it).
        attention, mlp: for each block, the dotted names of its attention and MLP sub-blocks.
    """

    blocks: list[str]
    embed: str
    final: str | None
    prefix: int
    dim: int
    patch: int
    attention: list[str]
    mlp: list[str]


def token_model(backbone: Backbone) -> TokenModel | None:
    """The token structure of a ViT-family backbone; None for backbones without a token sequence
    (convolutional networks, and timm models that are not ``VisionTransformer``-like)."""
    if isinstance(backbone, VisionTransformer):
        names = {id(m): n for n, m in backbone.named_modules()}
        blocks = [names[id(g)] for g in backbone.groups[1:-1]] + [f"{names[id(backbone.groups[-1])]}.0"]
        patch = backbone.groups[0].patch_size
        return TokenModel(blocks=blocks, embed=names[id(backbone.groups[0])], final=None, prefix=1,
                          dim=backbone.feature_dim, patch=patch, attention=[f"{b}.self_attention" for b in blocks],
                          mlp=[f"{b}.mlp" for b in blocks])
    if isinstance(backbone, TimmBackbone):
        net = backbone.net
        needed = ("patch_embed", "blocks", "num_prefix_tokens", "norm_pre", "norm")
        if not all(hasattr(net, a) for a in needed) or not isinstance(net.blocks, nn.Sequential):
            return None
        if not all(hasattr(b, "attn") and hasattr(b, "mlp") for b in net.blocks):
            return None
        patch = getattr(net.patch_embed, "patch_size", (16,))
        blocks = [f"net.blocks.{i}" for i in range(len(net.blocks))]
        return TokenModel(blocks=blocks, embed="net.norm_pre", final="net.norm", prefix=int(net.num_prefix_tokens),
                          dim=int(net.embed_dim), patch=int(patch[0] if isinstance(patch, tuple) else patch),
                          attention=[f"{b}.attn" for b in blocks], mlp=[f"{b}.mlp" for b in blocks])
    return None


def require_tokens(backbone: Backbone, strategy: str) -> TokenModel:
    """The backbone's token structure, or a one-line refusal naming the backbone."""
    found = token_model(backbone)
    if found is None:
        kind = type(backbone.net if isinstance(backbone, TimmBackbone) else backbone).__name__
        raise ConfigError(f"strategy {strategy!r} needs a ViT-family backbone (a token sequence: timm's "
                          f"VisionTransformer and relatives, arch vit); got {type(backbone).name!r} ({kind})")
    return found


class OnOutput(nn.Module):
    """Runs ``inner`` and then ``after`` on its output (on the first element when ``inner``
    returns a tuple, as ``nn.MultiheadAttention`` does)."""

    def __init__(self, inner: nn.Module, after: nn.Module) -> None:
        super().__init__()
        self.inner, self.after = inner, after

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        if isinstance(out, tuple):
            return (self.after(out[0]), *out[1:])
        return self.after(out)


class OnInput(nn.Module):
    """Runs ``before`` on the input, then ``inner``."""

    def __init__(self, inner: nn.Module, before: nn.Module) -> None:
        super().__init__()
        self.inner, self.before = inner, before

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(self.before(x))


def output_shapes(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Size]:
    """The output shape of each named submodule on input ``x`` (one eval-mode forward pass)."""
    shapes: dict[str, torch.Size] = {}
    handles = []
    for name in names:
        def record(module: nn.Module, args: Any, out: Any, name: str = name) -> None:
            shapes[name] = (out[0] if isinstance(out, tuple) else out).shape
        handles.append(model.get_submodule(name).register_forward_hook(record))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return shapes


def first_input(task: Task, device: torch.device) -> torch.Tensor:
    """The task's first training input as a batch of one, preprocessed as training reads it."""
    return next(read_all(task.train.x[torch.arange(1)], device=device)).float()


def count(parameters: Iterable[nn.Parameter]) -> int:
    return sum(p.numel() for p in parameters)


def seeded(seed: int, build: Callable[[], Any]) -> Any:
    """``build()`` with torch's CPU generator seeded (added modules' initialisation per seed)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()
