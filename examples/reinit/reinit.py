"""Re-initialising the top layers (Zhang et al. 2021, "Revisiting Few-sample BERT Fine-tuning",
ICLR): the backbone's last layer groups are drawn afresh before fine-tuning, because the
pretraining task's most specific layers can hurt a small target task more than they help — a
strategy written outside tlbench, against its public API only.

Run it beside built-in strategies with ``tlbench run examples/reinit/suite.yaml`` (the suite
lists this file under ``plugins:``), and check it with
``tlbench check examples/reinit/reinit.py:ReInit``.
"""

from __future__ import annotations

import torch

from tlbench import Strategy, finetune, new_classifier, suggest_optimizer


class ReInit(Strategy):
    name = "reinit"
    description = "the top layer groups are re-initialised, then everything is fine-tuned (Zhang et al. 2021)"

    def search_space(self, trial, backbone):
        # the shared optimizer space (SGD or AdamW, learning rate, weight decay, warm-up) and epochs,
        # plus how many of the backbone's layer groups (from the top) start from scratch
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial),
                "reinit_groups": trial.suggest_int("reinit_groups", 0, max(0, len(backbone.groups) - 1))}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)  # a copy: the shared
        groups = model.backbone.groups                                                  # backbone stays as is
        with torch.random.fork_rng(devices=[]):  # the redrawn layers depend on the seed, nothing else
            torch.manual_seed(seed)
            for group in list(groups)[len(groups) - params["reinit_groups"]:]:
                for module in group.modules():
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size)
