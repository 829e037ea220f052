"""Training from random initialisation with full fine-tuning's recipe: the baseline that says
what pretraining is worth.
"""

from __future__ import annotations

from typing import Any

from tlbench.data.splits import Task
from tlbench.strategies.base import Predictor
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.training.backbones import Backbone
from tlbench.training.context import Runtime
from tlbench.training.loop import Reporter


class Scratch(FullFinetune):
    """The same architecture and recipe from random initialisation: did transfer pay off?"""

    name = "scratch"
    description = "same architecture from random init, full-fine-tune recipe (baseline)"
    vectorises = True  # fit calls the training loop once and returns what it trains

    def fit(self, backbone: Backbone, task: Task, params: dict[str, Any], *, seed: int,
            reporter: Reporter, runtime: Runtime) -> Predictor:
        return super().fit(backbone.reinitialized(seed), task, params, seed=seed, reporter=reporter,
                           runtime=runtime)
