"""Deferred training runs: what :func:`tlbench.training.loop.fit_epochs` registers, instead of
training, while :func:`tlbench.training.vectorised.side_by_side` collects several seeds' runs (kept
apart from that module so the loop does not import the code that trains the runs together)."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

#: the collector of the current ``side_by_side`` block (None: the loop trains at once)
_ACTIVE: contextvars.ContextVar[Any] = contextvars.ContextVar("tlbench_side_by_side", default=None)


@dataclass
class Job:
    """One deferred ``fit_epochs`` call: its arguments, and the random state it was called in."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    train: tuple[Any, torch.Tensor]
    val: tuple[Any, torch.Tensor]
    epochs: int
    batch_size: int
    seed: int
    device: torch.device
    reporter: Any
    scheduler: Any
    hooks: Sequence[Any]
    criterion: Callable[..., torch.Tensor]
    execution: Any
    rng: torch.Tensor = field(default_factory=torch.get_rng_state)
    cuda_rng: list[torch.Tensor] | None = field(default_factory=lambda: _cuda_state())  # dropout on a GPU draws here
    #: after training: the validation history, or the exception the run stopped with
    history: list[float] = field(default_factory=list)
    error: BaseException | None = None
    seconds: float = 0.0  # its share of the training time (the group's, in proportion to its batches, when stacked)
    stacked: int = 1  # how many runs it trained with as one model (1: alone)


def _cuda_state() -> list[torch.Tensor] | None:
    return torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def active() -> Any:
    return _ACTIVE.get()


@contextlib.contextmanager
def paused() -> Iterator[None]:
    """Trains for real within the block (a model another strategy's ``fit`` needs now, a teacher)."""
    token = _ACTIVE.set(None)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


