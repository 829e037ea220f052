"""The scorer contract, one check per property.

A transferability scorer (:class:`tlbench.Scorer`) declares its name, the inputs it needs,
whether higher is better and a one-line definition; built with no arguments, it turns one
backbone's :class:`~tlbench.ScoreInputs` into one finite number, the same for the same seed and
for the same examples in another order, reading only the inputs it declares (a backbone without
one is skipped, not a crash), and it ranks features that separate the classes above
features that do not (static baselines are given inputs where the better backbone is also the
bigger one with the better source accuracy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from tlbench.selection.inputs import ScoreInputs, make_inputs
from tlbench.selection.scorers import Scorer, check_scorer_class, run_scorer
from tlbench.testing.report import CheckFailed, CheckReport, Unchecked, properties, run_properties


@dataclass
class ScorerContext:
    cls: type[Scorer]
    _scorer: Scorer | None = None
    _inputs: dict[str, ScoreInputs] = field(default_factory=dict)

    def scorer(self) -> Scorer:
        problems = check_scorer_class(self.cls)
        if problems:
            raise Unchecked(f"not checked: the declaration is wrong ({problems[0]})")
        if self._scorer is None:
            try:
                self._scorer = self.cls()
            except Exception as err:  # noqa: BLE001
                raise Unchecked(f"not checked: {self.cls.__name__}() failed ({type(err).__name__})") from None
        return self._scorer

    def inputs(self, which: str = "good") -> ScoreInputs:
        if which not in self._inputs:
            self._inputs[which] = example_inputs(which)
        return self._inputs[which]


def example_inputs(which: str = "good", *, n: int = 90, d: int = 6, classes: int = 3, seed: int = 0) -> ScoreInputs:
    """Every input a scorer may need, on three Gaussian classes: ``good`` features separate them,
    ``noise`` features do not; ``shuffled`` is ``good`` with its examples in another order."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, d)) * 3.0
    y = np.arange(n) % classes
    vy = np.arange(n // 2) % classes
    if which == "noise":
        x, vx = rng.normal(size=(n, d)), rng.normal(size=(n // 2, d))
    else:
        x = centres[y] + rng.normal(size=(n, d))
        vx = centres[vy] + rng.normal(size=(n // 2, d))
    logits = x[:, :4] * 2.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    if which == "shuffled":
        order = np.random.default_rng(seed + 1).permutation(n)
        x, y, probs = x[order], y[order], probs[order]
    good = which != "noise"
    return make_inputs(x, y, num_classes=classes, source_probs=probs, val_features=vx, val_labels=vy,
                       parameters=50_000 if good else 10_000, source_accuracy=0.9 if good else 0.5)


def _declaration(c: ScorerContext) -> None:
    problems = check_scorer_class(c.cls)
    if not isinstance(getattr(c.cls, "name", None), str) or not c.cls.name:
        problems.insert(0, "has no `name`")
    if problems:
        raise CheckFailed("; ".join(problems))


def _builds(c: ScorerContext) -> None:
    try:
        c.cls()
    except Exception as err:  # noqa: BLE001
        raise CheckFailed(f"{c.cls.__name__}() raised {type(err).__name__}: {err}; a scorer is built with no "
                          f"arguments") from None


def _value(c: ScorerContext, which: str = "good", seed: int = 0) -> float:
    score = run_scorer(c.scorer(), c.inputs(which), seed=seed)
    if score.value is None:
        raise CheckFailed(f"skipped with every input available ({score.skipped})")
    return score.value


def _finite(c: ScorerContext) -> None:
    _value(c)  # run_scorer raises a ScorerError (its message is the reason) for anything but one finite number


def _deterministic(c: ScorerContext) -> None:
    a, b = _value(c, seed=3), _value(c, seed=3)
    if a != b:
        raise CheckFailed(f"the same inputs and seed gave {a!r} and then {b!r}")


def _order_free(c: ScorerContext) -> None:
    if c.cls.randomized:
        return  # a randomised scorer's draws may follow the examples' order; its seeds are repeated instead
    a, b = _value(c), _value(c, "shuffled")
    if not math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9):
        raise CheckFailed(f"the same examples in another order gave {b!r} instead of {a!r}")


def _declared_inputs_only(c: ScorerContext) -> None:
    scorer = c.scorer()  # "not checked" when the declaration is wrong
    full = c.inputs()
    needs = set(c.cls.needs)
    bare = ScoreInputs(full.features, full.labels, full.num_classes,
                       source_probs=full.source_probs if "source_probs" in needs else None,
                       val_features=full.val_features if "validation" in needs else None,
                       val_labels=full.val_labels if "validation" in needs else None,
                       parameters=full.parameters if "parameters" in needs else None,
                       source_accuracy=full.source_accuracy if "source_accuracy" in needs else None)
    try:
        run_scorer(scorer, bare, seed=0)
    except Exception as err:  # noqa: BLE001
        raise CheckFailed(f"with only the inputs it declares ({', '.join(sorted(needs | {'features'}))}) it fails "
                          f"({str(err)[:160]}): list every input it reads in `needs`, so that backbones without "
                          f"one are skipped instead of stopping the run") from None


def _ranks(c: ScorerContext) -> None:
    good, noise = _value(c), _value(c, "noise")
    better = good > noise if c.cls.higher_is_better else good < noise
    if not better:
        raise CheckFailed(f"features that separate the classes scored {good:.4g} and noise {noise:.4g}, but "
                          f"higher_is_better is {c.cls.higher_is_better}")


SCORER_PROPERTIES: dict[str, Callable[[ScorerContext], None]] = properties({
    "declares a name, known inputs, an orientation and a definition": _declaration,
    "is built with no arguments": _builds,
    "returns one finite number": _finite,
    "is deterministic for a seed": _deterministic,
    "does not depend on the examples' order": _order_free,
    "reads only the inputs it declares": _declared_inputs_only,
    "ranks separable features above noise": _ranks,
})


def scorer_context(cls: type[Scorer], **_: Any) -> ScorerContext:
    return ScorerContext(cls)


def check_scorer(cls: type[Scorer]) -> CheckReport:
    """Checks every property of the scorer contract (module docstring) for ``cls``."""
    report = CheckReport(str(getattr(cls, "name", None) or cls.__name__), kind="scorer")
    run_properties(report, SCORER_PROPERTIES, scorer_context(cls))
    return report
