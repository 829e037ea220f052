"""BitFit (Ben Zaken et al. 2022): only the backbone's bias terms train, with the new head."""

from __future__ import annotations

from typing import Any

import optuna

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor, Strategy
from tlbench.strategies.full_finetune import new_classifier
from tlbench.strategies.parameter_efficient import suggest_peft_optimizer, train_only
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class BitFit(Strategy):
    """BitFit (Ben Zaken, Ravfogel & Goldberg 2022, "BitFit: Simple Parameter-efficient
    Fine-tuning for Transformer-based Masked Language-models", ACL): every bias of the backbone
    (linear, convolution and normalisation layers) trains with the new head; weights and
    batch-norm statistics stay pretrained. Inference costs the backbone's parameters (the
    biases are replaced, not added)."""

    name = "bitfit"
    description = "only the backbone's bias terms + the new head train (Ben Zaken et al. 2022)"

    def search_space(self, trial: optuna.Trial, backbone: Backbone) -> dict[str, Any]:
        return {**suggest_peft_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        biases = [p for name, p in model.backbone.named_parameters() if name.rsplit(".", 1)[-1] == "bias"]
        return train_only(model, biases, task, params, seed=seed, reporter=reporter, runtime=runtime,
                          batch_size=self.batch_size, plain=True)
