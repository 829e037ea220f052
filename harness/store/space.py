"""The search space a strategy was tuned over, after the suite's overrides: one type from the plan
to the tuning study, where it is stored in a structured, versioned form, to the report, which reads
it back as objects.

Each hyperparameter is a :class:`Param` — a float or int range (linear or log, with a step), a
set of choices, or a fixed value — built from the distribution the strategy suggested
(:meth:`Param.of`). Stores written before this type stored one description per hyperparameter
(``[0.001, 0.1] (log)``, ``{sgd, adamw}``, ``fixed: sgd``); :meth:`SearchSpace.from_stored` reads
those too.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from tlbench.core.frozen import Frozen

Scale = Literal["linear", "log", "categorical"]


class Param(Frozen):
    """One hyperparameter's searched range."""

    kind: Literal["float", "int", "categorical", "fixed"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None
    value: Any = None

    @classmethod
    def of(cls, distribution: BaseDistribution) -> "Param":
        """The range an Optuna distribution describes."""
        d = distribution
        if isinstance(d, CategoricalDistribution):
            return cls(kind="categorical", choices=list(d.choices))
        if isinstance(d, IntDistribution):
            return cls(kind="int", low=d.low, high=d.high, log=d.log, step=None if d.step == 1 else d.step)
        if isinstance(d, FloatDistribution):
            return cls(kind="float", low=d.low, high=d.high, log=d.log, step=d.step)
        raise TypeError(f"not a distribution tlbench searches: {d!r}")

    @classmethod
    def fixed(cls, value: Any) -> "Param":
        return cls(kind="fixed", value=value)

    def describe(self) -> str:
        """``[0.001, 0.1] (log)``, ``[1, 8] step 2``, ``{sgd, adamw}`` or ``fixed: sgd``."""
        if self.kind == "fixed":
            return f"fixed: {self.value}"
        if self.kind == "categorical":
            return "{" + ", ".join(map(str, self.choices or [])) + "}"
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"[{self.low:g}, {self.high:g}]" + (" (log)" if self.log else "") + step

    @property
    def scale(self) -> Scale:
        """The axis a plot of this hyperparameter takes."""
        if self.kind in ("categorical", "fixed"):
            return "categorical"
        return "log" if self.log else "linear"

    @classmethod
    def parse(cls, text: str) -> "Param":
        """A description as stores written before this type held it (see :meth:`describe`)."""
        text = text.strip()
        if text.startswith("fixed:"):
            return cls.fixed(text.removeprefix("fixed:").strip())
        if text.startswith("{") and text.endswith("}"):
            return cls(kind="categorical", choices=[c.strip() for c in text[1:-1].split(",") if c.strip()])
        found = _RANGE.fullmatch(text)
        if found is None:
            return cls.fixed(text)  # not a description this release wrote: shown as it is
        low, high, log, step = found.group("low"), found.group("high"), bool(found.group("log")), found.group("step")
        kind = "int" if all(re.fullmatch(r"-?\d+", v) for v in (low, high)) and not log else "float"
        return cls(kind=kind, low=float(low), high=float(high), log=log, step=float(step) if step else None)


_RANGE = re.compile(r"\[(?P<low>[^,\]]+), (?P<high>[^\]]+)\](?P<log> \(log\))?(?: step (?P<step>\S+))?")


class SearchSpace(Frozen):
    """The searched space of one strategy (on one backbone): hyperparameter → :class:`Param`."""

    VERSION: ClassVar[int] = 1
    params: dict[str, Param] = {}

    def stored(self) -> dict[str, Any]:
        """The form a tuning study stores (``search_space`` attribute), with its version."""
        return {"version": self.VERSION, "params": {name: p.model_dump() for name, p in sorted(self.params.items())}}

    @classmethod
    def from_stored(cls, data: Any) -> "SearchSpace":
        """A stored space: this type's versioned form, or the descriptions older stores kept."""
        if isinstance(data, dict) and "version" in data and isinstance(data.get("params"), dict):
            return cls(params={name: Param.model_validate(p) for name, p in data["params"].items()})
        if isinstance(data, dict):
            return cls(params={str(name): Param.parse(str(text)) for name, text in data.items()})
        raise ValueError(f"not a stored search space: {data!r}")

    def describe(self) -> dict[str, str]:
        """One description per hyperparameter, in name order."""
        return {name: p.describe() for name, p in sorted(self.params.items())}

    def scales(self) -> dict[str, Scale]:
        return {name: p.scale for name, p in sorted(self.params.items())}

    def __or__(self, other: "SearchSpace") -> "SearchSpace":
        """This space with the hyperparameters of ``other`` it lacks."""
        return SearchSpace(params={**other.params, **self.params})
