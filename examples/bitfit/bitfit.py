"""BitFit (Ben Zaken et al. 2022): fine-tune only the bias terms of the pretrained network,
plus the new head — a strategy written outside tlbench, against its public API only.

Run it beside built-in strategies with ``tlbench run examples/bitfit/suite.yaml`` (the suite
lists this file under ``plugins:``), and check it with
``tlbench check examples/bitfit/bitfit.py:BitFit``.
"""

from __future__ import annotations

from tlbench import Strategy, finetune, new_classifier, suggest_optimizer


class BitFit(Strategy):
    name = "bitfit"
    description = "only the bias terms of the backbone and the new head train (Ben Zaken et al. 2022)"

    def search_space(self, trial, backbone):
        # the shared optimizer space (SGD or AdamW, learning rate, weight decay, warm-up) and epochs;
        # weight decay reaches only the head's weight matrix here: biases never decay unless the
        # suite sets training.decay_norm_and_bias
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)  # a copy: the shared
        for name, parameter in model.backbone.named_parameters():                       # backbone stays as is
            parameter.requires_grad = name.endswith("bias")
        trainable = [p for p in model.parameters() if p.requires_grad]
        return finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                        batch_size=self.batch_size, groups=[{"params": trainable}])
