"""LoRA (Hu et al. 2022) through the ``peft`` library, on any backbone's linear and convolution layers."""

from __future__ import annotations

import re
from typing import Any

import optuna
from pydantic import Field
from torch import nn

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import Frozen
from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import new_classifier
from tlbench.strategies.parameter_efficient import (
    count,
    seeded,
    suggest_peft_optimizer,
    token_model,
    train_only,
)
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter

#: Names of attention input projections LoRA adapts by default in ViT-family backbones (Hu et al.
#: adapt W_q and W_v; timm fuses them into ``qkv``, torchvision into the attention module itself).
ATTENTION_PROJECTIONS = re.compile(r"(qkv|q|k|v|q_proj|k_proj|v_proj|query|key|value)")


class LoRAOptions(Frozen):
    #: Module names to adapt, as ``peft`` takes them: a list of names (a module matches when its dotted
    #: name equals one or ends with ``.`` + one) or one regular expression matched against whole names.
    #: None: per backbone family — the attention's input projections of a ViT-family backbone, every
    #: convolution and linear layer otherwise.
    target_modules: list[str] | str | None = None
    ranks: tuple[int, ...] = Field((4, 8, 16), min_length=1)  # searched as a categorical
    #: Merge the trained low-rank updates into the weights after training: inference then runs the
    #: backbone's own parameters, no more (Hu et al. §4.1). False keeps them as separate modules.
    merge: bool = True


def default_targets(backbone: Backbone) -> list[str]:
    """The dotted names LoRA adapts in ``backbone`` unless the suite says otherwise."""
    tokens = token_model(backbone)
    if tokens is not None:
        found = []
        for attn in tokens.attention:
            module = backbone.get_submodule(attn)
            if isinstance(module, nn.MultiheadAttention):
                found.append(attn)
                continue
            found += [f"{attn}.{n}" for n, m in module.named_modules()
                      if isinstance(m, nn.Linear) and ATTENTION_PROJECTIONS.fullmatch(n.rsplit(".", 1)[-1])]
        if found:
            return found
    return [n for n, m in backbone.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def import_peft() -> Any:
    try:
        import peft
    except ImportError:
        raise ConfigError("strategy lora needs the optional dependency peft: pip install 'tlbench[peft]'") from None
    return peft


class LoRA(Strategy):
    """LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR): each
    adapted layer's weight W gets a trained update (α/r)·B·A of rank r (A random, B zero at the
    start, so training starts from the pretrained function); W stays frozen. Built on ``peft``'s
    LoRA layers (linear, 1-D/2-D convolution, multi-head attention), so any torch backbone works.
    Rank (from ``ranks``), α and the dropout on the low-rank path are searched with the optimizer.
    After training the update is merged into W (``merge``), so inference costs nothing extra."""

    name = "lora"
    description = "low-rank updates of attention projections (ViT) or convolutions (CNN) + new head; via peft"
    Options = LoRAOptions

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_peft_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "rank": trial.suggest_categorical("lora_rank", list(self.options.ranks)),
                "alpha": trial.suggest_float("lora_alpha", 1.0, 64.0, log=True),
                "dropout": trial.suggest_float("lora_dropout", 0.0, 0.3)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        peft = import_peft()
        from peft.tuners.lora import LoraModel

        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        targets = self.options.target_modules
        targets = default_targets(model.backbone) if targets is None else targets
        config = peft.LoraConfig(r=params["rank"], lora_alpha=params["alpha"], lora_dropout=params["dropout"],
                                 target_modules=targets)
        try:
            lora = seeded(seed, lambda: LoraModel(model.backbone, config, "default"))
        except ValueError as err:  # peft: no module matched the targets
            raise ConfigError(f"strategy_options.lora.target_modules: {targets!r} adapts no layer of "
                              f"{type(backbone).name!r}: {str(err).splitlines()[0][:160]}") from None
        model.to(runtime.device)
        added = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
        adapted = sum(1 for n, _ in model.backbone.named_modules() if n.endswith(".lora_A"))
        predictor = train_only(model, added, task, params, seed=seed, reporter=reporter, runtime=runtime,
                               batch_size=self.batch_size, plain=self.options.merge)
        if self.options.merge:
            lora.merge_and_unload()  # in place: the backbone's layers are plain again, W ← W + (α/r)·B·A
        return predictor.annotate(merged=self.options.merge, adapted_layers=adapted, lora_parameters=count(added))
