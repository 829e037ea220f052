"""Reusable pieces strategies compose: optimizers, schedules, freezing, search spaces."""

from __future__ import annotations

import math
from typing import Any, Iterable

import optuna
import torch

OPTIMIZERS = ("sgd", "adamw")


def suggest_optimizer(trial: optuna.Trial) -> dict[str, Any]:
    """Optimizer family, learning rate (range per family), weight decay and warmup."""
    name = trial.suggest_categorical("optimizer", OPTIMIZERS)
    lr_range = (1e-3, 1e-1) if name == "sgd" else (1e-5, 1e-2)
    return {
        "optimizer": name,
        "lr": trial.suggest_float(f"lr_{name}", *lr_range, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True),
        "warmup_fraction": trial.suggest_float("warmup_fraction", 0.0, 0.3),
    }


def make_optimizer(params: Iterable[Any], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum 0.9, or AdamW, from a config made by ``suggest_optimizer``."""
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=cfg["lr"], momentum=0.9, nesterov=True,
                               weight_decay=cfg["weight_decay"])
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
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

