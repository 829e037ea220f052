"""Search spaces as the suite sets them: a strategy's declared space, the suite's overrides
of it, and the grid a grid search walks.

A strategy declares its space in code, with Optuna's suggest API (``search_space``). The
suite's ``search_space:`` block overrides any of its hyperparameters by name:

* a value fixes it (``optimizer: sgd``): it is no longer searched;
* ``{low, high, log, step}`` gives a float or integer another range (omitted keys keep the
  declared ones);
* a list, or ``{choices: [...]}``, keeps some of a categorical's choices.

The declared space is found by running ``search_space`` on a recording trial once per
branch of its categorical choices (a learning rate drawn per optimizer is two
hyperparameters, each in its own branch), so conditional spaces are checked too.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from tlbench.core.errors import ConfigError
from tlbench.core.frozen import got, short_repr
from tlbench.store.space import Param, SearchSpace
from tlbench.strategies.base import Strategy
from tlbench.training.backbones import Backbone

MAX_BRANCHES = 512


@dataclass(frozen=True)
class Fixed:
    value: Any


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    log: bool
    step: float | None = None


@dataclass(frozen=True)
class Choices:
    values: tuple[Any, ...]


Override = Fixed | Range | Choices


class SpaceTrial:
    """An Optuna trial with the suite's overrides applied to every suggestion; anything
    else is the wrapped trial's."""

    def __init__(self, trial: Any, overrides: dict[str, Override]) -> None:
        self._trial = trial
        self._overrides = overrides
        self.asked: set[str] = set()  # every hyperparameter the space suggested, fixed ones included

    def __getattr__(self, name: str) -> Any:
        return getattr(self._trial, name)

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        self.asked.add(name)
        o = self._overrides.get(name)
        if isinstance(o, Fixed):
            return float(o.value)
        if isinstance(o, Range):
            return self._trial.suggest_float(name, o.low, o.high, step=o.step, log=o.log)
        return self._trial.suggest_float(name, low, high, step=step, log=log)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        self.asked.add(name)
        o = self._overrides.get(name)
        if isinstance(o, Fixed):
            return int(o.value)
        if isinstance(o, Range):
            return self._trial.suggest_int(name, int(o.low), int(o.high), step=int(o.step or 1), log=o.log)
        return self._trial.suggest_int(name, low, high, step=step, log=log)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.asked.add(name)
        o = self._overrides.get(name)
        if isinstance(o, Fixed):
            return o.value
        if isinstance(o, Choices):
            return self._trial.suggest_categorical(name, list(o.values))
        return self._trial.suggest_categorical(name, choices)


class _Recorder:
    """A trial that records every suggestion's distribution: categoricals take the choice
    the branch prescribes (the first beyond it), numbers their low end."""

    def __init__(self, branch: Sequence[int]) -> None:
        self.branch = list(branch)
        self.seen: dict[str, BaseDistribution] = {}
        self.categoricals: list[int] = []  # the number of choices of each categorical met
        self.params: dict[str, Any] = {}
        self.number = 0
        self.user_attrs: dict[str, Any] = {}

    def _record(self, name: str, dist: BaseDistribution, value: Any) -> Any:
        self.seen.setdefault(name, dist)
        self.params[name] = value
        return value

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._record(name, FloatDistribution(low, high, step=step, log=log), low)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return self._record(name, IntDistribution(low, high, step=step, log=log), low)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        i = len(self.categoricals)
        self.categoricals.append(len(choices))
        pick = self.branch[i] if i < len(self.branch) else 0
        return self._record(name, CategoricalDistribution(list(choices)), list(choices)[pick])

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


@dataclass(frozen=True)
class Leaf:
    """One branch of a space: each hyperparameter it suggests and its distribution (after
    overrides), the categorical choices that lead to it, and the fixed values."""

    dists: dict[str, BaseDistribution]
    picked: dict[str, Any]  # categorical name -> the choice taken in this branch
    fixed: dict[str, Any]
    used: frozenset[str] = frozenset()  # every hyperparameter the branch suggests, fixed ones included


def explore(space: Callable[[Any], Any], overrides: dict[str, Override] | None = None) -> list[Leaf]:
    """Every branch of ``space`` (a function of a trial), with ``overrides`` applied."""
    overrides = overrides or {}
    leaves: list[Leaf] = []
    pending: list[tuple[int, ...]] = [()]
    while pending:
        prefix = pending.pop()
        rec = _Recorder(prefix)
        trial = SpaceTrial(rec, overrides)
        space(trial)
        full = list(prefix) + [0] * (len(rec.categoricals) - len(prefix))
        for j in range(len(rec.categoricals) - 1, len(prefix) - 1, -1):
            for alt in range(rec.categoricals[j] - 1, 0, -1):
                pending.append((*full[:j], alt))
        picked = {n: rec.params[n] for n, d in rec.seen.items() if isinstance(d, CategoricalDistribution)}
        fixed = {n: o.value for n, o in overrides.items() if isinstance(o, Fixed)}
        leaves.append(Leaf(dict(rec.seen), picked, fixed, frozenset(trial.asked)))
        if len(leaves) > MAX_BRANCHES:
            raise ConfigError(f"the search space has more than {MAX_BRANCHES} branches of categorical choices")
    return leaves


def declared(strategy: Strategy, backbone: Backbone) -> dict[str, BaseDistribution]:
    """Every hyperparameter ``strategy`` can suggest for ``backbone`` (first declaration kept)."""
    out: dict[str, BaseDistribution] = {}
    for leaf in explore(lambda t: strategy.search_space(t, backbone)):
        for name, dist in leaf.dists.items():
            out.setdefault(name, dist)
    return out


def describe_dist(d: BaseDistribution) -> str:
    return Param.of(d).describe()


def effective(strategy: Strategy, backbone: Backbone, overrides: dict[str, Override]) -> SearchSpace:
    """The searched space after the suite's overrides (what the tuning study stores and the report
    shows): every hyperparameter some branch suggests, with the range it is drawn from, or its fixed
    value."""
    params: dict[str, Param] = {}
    used: set[str] = set()
    for leaf in explore(lambda t: strategy.search_space(t, backbone), overrides):
        used |= leaf.used
        for name, dist in leaf.dists.items():
            params.setdefault(name, Param.of(dist))
    for name, o in overrides.items():
        if isinstance(o, Fixed) and name in used:
            params[name] = Param.fixed(o.value)
    return SearchSpace(params=params)


def unused(strategy: Strategy, backbone: Backbone, overrides: dict[str, Override]) -> dict[str, str]:
    """The hyperparameters that no branch of the space suggests once ``overrides`` apply (a fixed
    choice cuts off the branches that use them), each with the override that cuts it off."""
    def used(with_overrides: dict[str, Override]) -> set[str]:
        return set().union(*(leaf.used for leaf in explore(lambda t: strategy.search_space(t, backbone),
                                                            with_overrides)))

    reachable = used(overrides)
    declared_names = used({})
    out: dict[str, str] = {}
    for name in sorted(declared_names - reachable):
        for other, o in overrides.items():
            if isinstance(o, (Fixed, Choices)) and name in used({k: v for k, v in overrides.items() if k != other}):
                shown = f"fixed to {o.value}" if isinstance(o, Fixed) else f"limited to {list(o.values)}"
                out[name] = f"{other} is {shown}"
                break
        else:
            out[name] = "the overrides leave no branch that suggests it"
    return out


# ------------------------------------------------------------------ reading the suite's block

def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def parse_overrides(strategy: Strategy, backbone: Backbone, raw: dict[str, Any], *, where: str) -> dict[str, Override]:
    """The suite's ``search_space.<strategy>`` block, checked against what the strategy
    declares for ``backbone``; one-line :class:`ConfigError` naming the field otherwise."""
    if not strategy.tunable:
        raise ConfigError(f"{where}: {strategy.name} has nothing to search (it chooses inside fit), so its "
                          f"search space cannot be set")
    space = declared(strategy, backbone)
    out: dict[str, Override] = {}
    for name, spec in raw.items():
        at = f"{where}.{name}"
        if name not in space:
            raise ConfigError(f"{at}: unknown hyperparameter; {strategy.name} searches: {', '.join(sorted(space))}")
        out[name] = _override(space[name], spec, at)
    dead = unused(strategy, backbone, out)
    for name in out:
        if name in dead:
            raise ConfigError(f"{where}.{name}: {strategy.name} never suggests {name} here: {dead[name]} in this "
                              f"block, so the override would be ignored; remove it, or allow a choice that uses it")
    return out


def _override(dist: BaseDistribution, spec: Any, at: str) -> Override:
    if isinstance(dist, CategoricalDistribution):
        choices = list(dist.choices)
        if isinstance(spec, dict):
            if set(spec) != {"choices"}:
                raise ConfigError(f"{at}: a categorical takes a value, a list of choices or {{choices: [...]}} "
                                  f"(got keys {', '.join(map(str, spec))}); declared choices: {choices}")
            spec = spec["choices"]
        if isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{at}: empty list of choices; declared choices: {choices}")
            bad = [v for v in spec if v not in choices]
            if bad:
                raise ConfigError(f"{at}: {short_repr(bad)} not among the declared choices {choices}")
            if len(set(map(repr, spec))) != len(spec):
                raise ConfigError(f"{at}: {short_repr(spec)} lists a choice twice")
            return Fixed(spec[0]) if len(spec) == 1 else Choices(tuple(spec))
        if spec not in choices:
            raise ConfigError(f"{at}: {short_repr(spec)} is not one of the declared choices {choices}")
        return Fixed(spec)
    integer = isinstance(dist, IntDistribution)
    kind = "an integer" if integer else "a number"
    if not isinstance(spec, dict):
        if not _number(spec) or (integer and not isinstance(spec, int)):
            raise ConfigError(f"{at}: wrong type: {kind} or {{low, high, log}} is expected "
                              f"(declared {describe_dist(dist)}), {got(spec)}")
        return Fixed(spec)
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown:
        raise ConfigError(f"{at}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; a range takes low, high, "
                          f"log, step")
    low, high = spec.get("low", dist.low), spec.get("high", dist.high)
    log, step = spec.get("log", dist.log), spec.get("step", dist.step if not integer or dist.step != 1 else None)
    for key, value in (("low", low), ("high", high)):
        if not _number(value) or (integer and not isinstance(value, int)):
            raise ConfigError(f"{at}.{key}: wrong type: {kind} is expected, {got(value)}")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log: true or false, got {short_repr(log)}")
    if step is not None and (not _number(step) or step <= 0):
        raise ConfigError(f"{at}.step: a positive number, got {short_repr(step)}")
    if not low < high:
        raise ConfigError(f"{at}: empty range [{low}, {high}]: low must be below high (to fix a value, write "
                          f"the value)")
    if log and low <= 0:
        raise ConfigError(f"{at}: a log-scale range must be positive, got low {low}")
    if log and step is not None:
        raise ConfigError(f"{at}: a range cannot have both log: true and a step")
    return Range(low, high, log, step)


# ------------------------------------------------------------------ grids

def axis(dist: BaseDistribution, points: int) -> list[Any]:
    """The values a grid takes for one hyperparameter: every choice of a categorical; every
    integer of a range of at most ``points`` of them; else ``points`` values spread evenly
    (geometrically on a log scale) from low to high, ends included."""
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    if isinstance(dist, IntDistribution):
        values = list(range(dist.low, dist.high + 1, dist.step))
        if len(values) <= points:
            return values
        spread = _spread(dist.low, dist.high, points, dist.log)
        return sorted({min(values, key=lambda v: abs(v - x)) for x in spread})
    assert isinstance(dist, FloatDistribution)
    if dist.step:
        values = [dist.low + i * dist.step for i in range(int(round((dist.high - dist.low) / dist.step)) + 1)]
        if len(values) <= points:
            return values
    return [float(f"{v:.6g}") for v in _spread(dist.low, dist.high, points, dist.log)]


def _spread(low: float, high: float, n: int, log: bool) -> list[float]:
    if log:
        a, b = math.log(low), math.log(high)
        return [math.exp(a + (b - a) * i / (n - 1)) for i in range(n)]
    return [low + (high - low) * i / (n - 1) for i in range(n)]


def grid(strategy: Strategy, backbone: Backbone, overrides: dict[str, Override], points: int) -> list[dict[str, Any]]:
    """Every configuration of the (overridden) space, each once: per branch of the
    categorical choices, the product of its numbers' axes. A fixed order, so slot ``i`` of a
    grid search always trains configuration ``i``."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for leaf in explore(lambda t: strategy.search_space(t, backbone), overrides):
        numeric = {n: axis(d, points) for n, d in leaf.dists.items() if not isinstance(d, CategoricalDistribution)}
        names = sorted(numeric)
        for values in itertools.product(*(numeric[n] for n in names)):
            point = {**leaf.picked, **dict(zip(names, values))}
            key = repr(sorted(point.items()))
            if key not in seen:
                seen.add(key)
                out.append(point)
    return out


def check_value(dist: BaseDistribution, value: Any, at: str) -> None:
    """A value a sensitivity study sets: of the hyperparameter's type, inside its range."""
    if isinstance(dist, CategoricalDistribution):
        if value not in dist.choices:
            raise ConfigError(f"{at}: {short_repr(value)} is not one of the declared choices {list(dist.choices)}")
        return
    integer = isinstance(dist, IntDistribution)
    if not _number(value) or (integer and not isinstance(value, int)):
        raise ConfigError(f"{at}: wrong type: {'an integer' if integer else 'a number'} is expected, "
                          f"{got(value)}")
    if not dist.low <= value <= dist.high:
        raise ConfigError(f"{at}: {value} is outside the declared range {describe_dist(dist)}")


__all__ = ["Choices", "Fixed", "Leaf", "Override", "Range", "SpaceTrial", "axis", "check_value", "declared",
           "describe_dist", "effective", "explore", "grid", "parse_overrides", "unused"]
