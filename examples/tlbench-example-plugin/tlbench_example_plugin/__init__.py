"""Tuning only the normalisation layers' affine parameters and the new head (Frankle et al.
2021, "Training BatchNorm and only BatchNorm"), as a tlbench plugin package: the entry point
in pyproject.toml registers ``NormTune`` as the strategy ``norm_tune``."""

from __future__ import annotations

from torch import nn

from tlbench import Strategy, finetune, new_classifier, suggest_optimizer

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


class NormTune(Strategy):
    name = "norm_tune"
    description = "only normalisation layers' scales and shifts and the new head train (Frankle et al. 2021)"

    def search_space(self, trial, backbone):
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        model.backbone.requires_grad_(False)
        for module in model.backbone.modules():
            if isinstance(module, NORMS):
                module.requires_grad_(True)
        trainable = [p for p in model.parameters() if p.requires_grad]
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, groups=[{"params": trainable}])
