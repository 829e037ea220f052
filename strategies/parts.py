"""Reusable pieces strategies are composed of.

* search-space fragments: :func:`suggest_optimizer`, :func:`suggest_schedule`;
* optimizers and learning-rate schedules: :func:`make_optimizer`, :func:`warmup_cosine`,
  :func:`slanted_triangular`;
* parameter grouping: :func:`model_groups`, :func:`layerwise_lr_groups` (discriminative
  learning rates);
* hooks on the one training loop: :class:`FreezeSchedule` (gradual unfreezing, surgical
  fine-tuning), :class:`L2SP` (a penalty towards the starting weights);
* a criterion: :class:`Distillation` (Hinton et al.'s soft-target loss on cached logits).

A strategy picks some of these and hands them to :func:`strategies.full_finetune.finetune`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import optuna
import torch
from torch import nn

from tlbench.training.backbones import Backbone, Classifier
from tlbench.training.loop import Batch, Hook

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "stlr")


def suggest_optimizer(trial: optuna.Trial, *, weight_decay: bool = True, warmup: bool = True) -> dict[str, Any]:
    """Optimizer family, learning rate (range per family), weight decay and warmup.

    ``weight_decay=False`` fixes it at 0 (for strategies whose penalty replaces it);
    ``warmup=False`` leaves warmup out (for schedules that have their own ramp)."""
    name = trial.suggest_categorical("optimizer", OPTIMIZERS)
    lr_range = (1e-3, 1e-1) if name == "sgd" else (1e-5, 1e-2)
    out = {
        "optimizer": name,
        "lr": trial.suggest_float(f"lr_{name}", *lr_range, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True) if weight_decay else 0.0,
    }
    if warmup:
        out["warmup_fraction"] = trial.suggest_float("warmup_fraction", 0.0, 0.3)
    return out


def suggest_schedule_and_optimizer(trial: optuna.Trial) -> dict[str, Any]:
    """Warmup + cosine or ULMFiT's slanted triangular schedule, then the optimizer; warmup is
    searched only for the cosine schedule (the triangular one ramps up by itself)."""
    schedule = trial.suggest_categorical("schedule", SCHEDULES)
    return {"schedule": schedule, **suggest_optimizer(trial, warmup=schedule == "cosine")}


def make_optimizer(params: Iterable[Any], cfg: dict[str, Any], *,
                   decay_norm_and_bias: bool = False) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9, or AdamW, from a config made by ``suggest_optimizer``.

    ``params`` may be parameter groups; a group's ``lr_scale`` multiplies ``cfg["lr"]``. As in
    timm and most fine-tuning recipes, parameters with fewer than two dimensions (biases,
    normalisation scales and shifts) get no weight decay unless ``decay_norm_and_bias``."""
    groups = list(params)
    if not groups or not isinstance(groups[0], dict):
        groups = [{"params": groups}]
    split = []
    for g in groups:
        base = {**{k: v for k, v in g.items() if k not in ("lr_scale", "params")},
                "lr": cfg["lr"] * g.get("lr_scale", 1.0)}
        members = list(g["params"])
        if decay_norm_and_bias:
            split.append({**base, "params": members})
            continue
        matrices = [p for p in members if p.ndim >= 2]
        vectors = [p for p in members if p.ndim < 2]
        split += [{**base, "params": matrices}] if matrices else []
        split += [{**base, "params": vectors, "weight_decay": 0.0}] if vectors else []
    groups = split
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, nesterov=True,
                               weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    raise ValueError(f"unknown optimizer {cfg['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_fraction: float) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warmup over ``warmup_fraction`` of the steps, then cosine decay to zero."""
    warmup = int(round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def slanted_triangular(optimizer: torch.optim.Optimizer, total_steps: int, *, cut_frac: float = 0.1,
                       ratio: float = 32.0) -> torch.optim.lr_scheduler.LambdaLR:
    """ULMFiT's slanted triangular learning rate (Howard & Ruder 2018, eq. 3): a short linear
    increase over ``cut_frac`` of the steps from lr/ratio to lr, then a long linear decay
    back to lr/ratio. Each group keeps its own peak, so discriminative rates are preserved."""
    cut = max(1, math.floor(total_steps * cut_frac))
    last = total_steps - 1  # the final step reaches lr/ratio whatever the rounding of cut

    def factor(step: int) -> float:
        if step < cut:
            p = step / cut
        else:
            p = max(0.0, 1 - (step - cut) / max(1, last - cut))
        return (1 + p * (ratio - 1)) / ratio

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_schedule(optimizer: torch.optim.Optimizer, total_steps: int,
                  params: dict[str, Any]) -> torch.optim.lr_scheduler.LambdaLR:
    """The schedule named by ``params["schedule"]`` (default: warmup + cosine)."""
    kind = params.get("schedule", "cosine")
    if kind == "cosine":
        return warmup_cosine(optimizer, total_steps, params.get("warmup_fraction", 0.0))
    if kind == "stlr":
        return slanted_triangular(optimizer, total_steps)
    raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")


def model_groups(model: Classifier) -> list[nn.Module]:
    """The layer groups of a classifier, input → output: the backbone's groups, then the head."""
    return [*model.backbone.groups, model.head]


def group_parameters(model: Classifier) -> list[list[nn.Parameter]]:
    """Each layer group's parameters; backbone parameters outside every group (an adapter's
    extras) join the first group, so every parameter is in exactly one list."""
    groups = [list(g.parameters()) for g in model_groups(model)]
    seen = {id(p) for g in groups for p in g}
    groups[0] = [p for p in model.backbone.parameters() if id(p) not in seen] + groups[0]
    return groups


def layerwise_lr_groups(model: Classifier, decay: float) -> list[dict[str, Any]]:
    """Discriminative learning rates (Howard & Ruder 2018; layer-wise decay as in BEiT and
    timm's ``param_groups_layer_decay``): backbone group ``i`` of ``n`` (0 = input side)
    gets ``lr * decay ** (n - i)``, the head gets ``lr``."""
    params = group_parameters(model)
    n = len(params) - 1  # backbone groups; the head is index n
    return [{"params": p, "lr_scale": decay ** (n - i)}
            for i, p in enumerate(params) if p]


class FreezeSchedule(Hook):
    """Which layer groups train in which epoch; the others are frozen.

    ``stages`` is a list of ``(first_epoch, trainable group indices)`` sorted by epoch
    (indices into :func:`model_groups`, the head being the last). A frozen group has
    ``requires_grad`` off (so the optimizer skips it: no update, no weight decay, no
    momentum) and runs in eval mode (batch-norm statistics stay those it started with),
    so it stays bit-identical.
    """

    stackable = True

    def __init__(self, stages: Sequence[tuple[int, Iterable[int]]]) -> None:
        self.stages = [(int(start), frozenset(groups)) for start, groups in stages]
        if not self.stages or self.stages[0][0] != 0:
            raise ValueError("the first stage must start at epoch 0")

    def trainable_at(self, epoch: int) -> frozenset[int]:
        return [g for start, g in self.stages if start <= epoch][-1]

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        trainable = self.trainable_at(epoch)
        for i, (module, params) in enumerate(zip(model_groups(model), group_parameters(model))):
            for p in params:
                p.requires_grad_(i in trainable)
            if i not in trainable:
                module.eval()

    def stack_key(self) -> tuple[tuple[int, tuple[int, ...]], ...]:
        return tuple((start, tuple(sorted(groups))) for start, groups in self.stages)

    @classmethod
    def gradual(cls, n_groups: int, epochs_per_stage: int) -> "FreezeSchedule":
        """ULMFiT's gradual unfreezing: the head alone for ``epochs_per_stage`` epochs, then
        one more group from the top every ``epochs_per_stage`` epochs, until all train."""
        head = n_groups - 1
        return cls([(k * epochs_per_stage, range(head - k, head + 1)) for k in range(n_groups)])

    @classmethod
    def only(cls, groups: Iterable[int]) -> "FreezeSchedule":
        """The same groups trainable throughout (surgical fine-tuning)."""
        return cls([(0, groups)])


class L2SP(Hook):
    """The L2-SP penalty (Li et al. 2018): ``α/2·‖w − w₀‖²`` over the backbone's parameters
    (``w₀`` = the starting, pretrained values) plus ``β/2·‖w_head‖²`` over the new head's
    weight matrix. Stackable: on a stacked model the squares sum over the runs too."""

    stackable = True

    def __init__(self, model: Classifier, alpha: float, beta: float) -> None:
        self.alpha, self.beta = alpha, beta
        self.start = [p.detach().clone() for p in model.backbone.parameters()]

    def stack_key(self) -> tuple[()]:
        # α and β may differ between stacked runs (:meth:`stacked_loss_term` applies each run's);
        # the starting values are the cell's pretrained backbone, the same for every run of a cell
        return ()

    def loss_term(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return self.penalty(model)

    @classmethod
    def stacked_loss_term(cls, hooks: Sequence[Hook], model: nn.Module, batch: Batch) -> torch.Tensor:
        """Each run's penalty with its own α and β, summed over the runs (the stacked parameters
        carry the runs on their first dimension)."""
        first = hooks[0]
        assert isinstance(first, L2SP)
        alpha = torch.tensor([h.alpha for h in hooks], device=model.head.weight.device)  # type: ignore[attr-defined]
        beta = torch.tensor([h.beta for h in hooks], device=alpha.device)  # type: ignore[attr-defined]
        k = len(hooks)
        sp = sum(((p - p0) ** 2).reshape(k, -1).sum(1) for p, p0 in zip(model.backbone.parameters(), first.start))
        head = (model.head.weight ** 2).reshape(k, -1).sum(1)
        return (alpha / 2 * sp + beta / 2 * head).sum()

    def penalty(self, model: Classifier) -> torch.Tensor:
        sp = sum(((p - p0) ** 2).sum() for p, p0 in zip(model.backbone.parameters(), self.start))
        return self.alpha / 2 * sp + self.beta / 2 * (model.head.weight ** 2).sum()


class Distillation:
    """Hinton et al. (2015): ``(1 − α)·CE(y, z_s) + α·T²·KL(softmax(z_t/T) ‖ softmax(z_s/T))``.

    ``teacher_logits`` are the teacher's logits on the whole train split, computed once;
    batches pick theirs by index, so the teacher never runs during training."""

    def __init__(self, teacher_logits: torch.Tensor, *, temperature: float, alpha: float) -> None:
        self.teacher_logits = teacher_logits
        self.temperature, self.alpha = temperature, alpha

    def __call__(self, batch: Batch) -> torch.Tensor:
        return distillation_loss(batch.logits, self.teacher_logits[batch.index], batch.y,
                                 temperature=self.temperature, alpha=self.alpha)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, *,
                      temperature: float, alpha: float) -> torch.Tensor:
    t = temperature
    ce = nn.functional.cross_entropy(student, y)
    kl = nn.functional.kl_div(torch.log_softmax(student / t, 1), torch.log_softmax(teacher / t, 1),
                              reduction="batchmean", log_target=True)
    return (1 - alpha) * ce + alpha * t * t * kl


def suggest_stage_length(trial: optuna.Trial, backbone: Backbone, min_epochs: int) -> int:
    """Epochs per unfreezing stage, at most what lets every group unfreeze within the
    shortest searched run (ULMFiT used one epoch per stage). When even one epoch per stage
    is too long for the shortest runs, their lowest groups stay frozen."""
    stages = len(backbone.groups)  # stages after the head-only one
    return trial.suggest_int("epochs_per_stage", 1, max(1, (min_epochs - 1) // stages))


def suggest_decay(trial: optuna.Trial) -> float:
    """Layer-wise decay; ULMFiT's 1/2.6 ≈ 0.38 and BEiT's 0.65–0.9 are inside the range."""
    return trial.suggest_float("lr_decay", 0.3, 1.0)
