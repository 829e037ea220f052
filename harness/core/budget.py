"""The tuning budget: one type from the suite file to the stored protocol and every run record."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, model_validator

from tlbench.core.frozen import Frozen, Int


class Budget(Frozen):
    """What one cell's tuning may spend, the same for every strategy: ``trials`` finished (completed
    or pruned) trials, or ``epochs`` of training in backbone epochs — one forward and backward pass
    of the cell's backbone over the task's training split, counted in FLOPs (a pruned trial counts
    what it ran, a linear probe the feature pass and its head's epochs). An epochs budget stops
    starting trials once it is spent, and after ``max_trials`` at most.

    The suite's ``budget:`` block (or its ``trials:``) is read into it, a grid search's grid sets
    ``trials``, the tuner counts against it, and the tuning protocol and every run record store it.
    """

    trials: Int | None = Field(None, gt=0, lt=500_000)
    epochs: float | None = Field(None, gt=0)
    max_trials: Int = Field(500, gt=0, lt=500_000)

    @model_validator(mode="after")
    def _one(self) -> "Budget":
        if (self.trials is None) == (self.epochs is None):
            raise ValueError("give exactly one of trials (finished trials per strategy) or epochs "
                             "(backbone epochs of training per strategy)")
        return self

    @classmethod
    def stored(cls, data: Any, *, epochs: float | None = None) -> "Budget":
        """A budget as any release stored it: this type's mapping, or (stores written before it) the
        number of trials that count, with the epochs budget beside it when there was one."""
        if isinstance(data, dict):
            return cls.model_validate(data)
        if epochs is not None:
            return cls(epochs=epochs, max_trials=int(data))
        return cls(trials=int(data))

    @property
    def cap(self) -> int:
        """The most trials that count."""
        return self.trials if self.trials is not None else self.max_trials

    @property
    def total(self) -> int:
        """The budget in its unit: trials, or whole backbone epochs (what :meth:`spent` counts up to)."""
        return self.cap if self.epochs is None else int(math.ceil(self.epochs))

    def spent(self, finished: int, compute: float) -> int:
        """How far tuning is in this budget's unit, after ``finished`` trials that spent ``compute``
        backbone epochs."""
        return finished if self.epochs is None else int(min(compute, self.epochs))

    def describe(self) -> str:
        """``20 trials`` or ``40 backbone epochs``."""
        return f"{self.trials} trials" if self.epochs is None else f"{self.epochs:g} backbone epochs"
