"""The one training loop. Schedules, penalties and extra losses plug in as hooks."""

from __future__ import annotations

import math
from typing import Protocol, Sequence

import torch
from torch import nn

from harness.errors import NonFiniteLoss


class Reporter(Protocol):
    """Receives the validation metric after each epoch; may raise ``optuna.TrialPruned``."""

    def report(self, epoch: int, value: float) -> None: ...


class NullReporter:
    """A reporter that records the history and never prunes (evaluation runs)."""

    def __init__(self) -> None:
        self.history: list[float] = []

    def report(self, epoch: int, value: float) -> None:
        self.history.append(value)


class Hook:
    """Callbacks at epoch and step boundaries, all no-ops by default (Lightning-style)."""

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Called after ``model.train()`` at the start of each epoch (0-based)."""

    def loss_term(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  logits: torch.Tensor) -> torch.Tensor | None:
        """An extra term added to the cross-entropy of this batch, or None."""
        return None

    def on_step_end(self, step: int) -> None:
        """Called after each optimizer (and scheduler) step."""


@torch.inference_mode()
def predict_logits(model: nn.Module, x: torch.Tensor, *, device: torch.device,
                   batch_size: int = 512) -> torch.Tensor:
    """Logits for ``x`` in eval mode, batched, returned on the CPU."""
    was_training = model.training
    model.eval()
    outs = [model(x[i:i + batch_size].to(device, non_blocking=True)).float().cpu()
            for i in range(0, len(x), batch_size)]
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0)


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits.argmax(1) == y).float().mean()) if len(y) else float("nan")


def steps_per_epoch(n: int, batch_size: int) -> int:
    full, rest = divmod(n, batch_size)
    return full + (1 if rest > 1 or full == 0 else 0)


def fit_epochs(model: nn.Module, optimizer: torch.optim.Optimizer,
               train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor], *,
               epochs: int, batch_size: int, seed: int, device: torch.device, reporter: Reporter,
               scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
               hooks: Sequence[Hook] = (), first_epoch: int = 0) -> list[float]:
    """Trains ``model`` with cross-entropy (+ hook terms); reports val accuracy each epoch.

    Batches are drawn from a seeded generator, so a fixed seed gives a fixed run on CPU.
    A final batch of a single example is dropped (batch norm cannot train on it).

    Returns:
        The validation accuracy after each epoch.

    Raises:
        NonFiniteLoss: when an epoch's summed loss is NaN or infinite.
    """
    x, y = train[0].to(device), train[1].to(device)
    n = len(y)
    gen = torch.Generator().manual_seed(seed)
    n_steps = steps_per_epoch(n, batch_size)
    loss_fn = nn.CrossEntropyLoss()
    history: list[float] = []
    step = 0
    for epoch in range(first_epoch, first_epoch + epochs):
        model.train()
        for hook in hooks:
            hook.on_epoch_start(epoch, model, optimizer)
        order = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), device=device)
        for b in range(n_steps):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            logits = model(xb)
            loss = loss_fn(logits, yb)
            for hook in hooks:
                term = hook.loss_term(model, xb, yb, logits)
                if term is not None:
                    loss = loss + term
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            step += 1
            for hook in hooks:
                hook.on_step_end(step)
            total += loss.detach()
        value = float(total)
        if not math.isfinite(value):
            raise NonFiniteLoss(epoch, value)
        acc = accuracy(predict_logits(model, val[0], device=device), val[1])
        history.append(acc)
        reporter.report(epoch, acc)
    return history
