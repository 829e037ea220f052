"""The strategy contract as an executable check: ``check_strategy(MyStrategy)``.

One implementation serves three callers: ``tlbench check my_method.py:MyStrategy``, a
plugin author's own pytest suite (``check_strategy(MyStrategy).assert_ok()``), and
tlbench's conformance test over every built-in strategy. Each property is checked on a
tiny task (3 digit classes, 4 shots) and a tiny backbone, in seconds on a CPU:

- it has a registrable ``name`` and a one-line ``description``;
- its search space works with ``optuna.trial.FixedTrial`` (the same raw values give the
  same params, JSON-serialisable; a tunable strategy searches something);
- it fits on a tiny task and predicts finite logits of the right shape;
- it reports validation accuracy (in [0, 1]) every epoch;
- it is deterministic for a seed;
- pruning propagates (a reporter that prunes stops ``fit``);
- the shared pretrained backbone is left untouched (weights, ``requires_grad``, mode);
- its predictor's counts are consistent (positive integers; reused costs non-negative).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import torch

from tlbench.data.splits import Task
from tlbench.run.model_server import ArtifactStore, CellRecipes, Members, Reuse
from tlbench.run.tuning import evaluation_seed
from tlbench.strategies import STRATEGIES, Predictor, Strategy
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import Backbone, build_backbone, state_fingerprint
from tlbench.training.context import Runtime
from tlbench.training.loop import NullReporter


def tiny_task() -> Task:
    """Digits, 3 classes, 4 shots per class, with a noisy shifted test split."""
    spec = TaskSpec(dataset="digits", classes=[0, 1, 7],
                    split=SplitSpec(seed=1, shots=4, val_per_class=4, test_fraction=0.3),
                    shift={"kind": "noise", "severity": 0.2})
    return build_task("tiny", spec, where="tlbench.testing")


def tiny_backbone() -> Backbone:
    """A 3-group CNN of width 4 (random weights, fixed seed)."""
    backbone = build_backbone("cnn2d", {"width": 4, "depth": 3}, seed=3)
    backbone.weights_id = "tiny-test-backbone"
    return backbone


def sample_params(strategy: Strategy, backbone: Backbone, seed: int = 0) -> dict[str, Any]:
    """One configuration drawn at random (seeded) from a strategy's search space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return strategy.search_space(study.ask(), backbone)


class TinyCell(CellRecipes):
    """The recipes of a cell outside a suite: strategies by name with the given settings,
    configurations from ``params`` or drawn at random, evaluation seeds as a suite's."""

    def __init__(self, task: Task, backbone: Backbone, *, make: Callable[[str], Strategy],
                 params: dict[str, dict[str, Any]] | None = None, reuse: Reuse = Reuse(),
                 task_for: Callable[[str], Task] | None = None) -> None:
        self.cell, self.context, self.backbone_name = ("test", "tiny", "tiny-backbone"), "test", "tiny-backbone"
        self.reuse = reuse
        self._task, self._backbone, self._make, self._params = task, backbone, make, params or {}
        self._task_for = task_for

    def strategy(self, name: str) -> Strategy:
        return self._make(name)

    def params(self, name: str) -> dict[str, Any]:
        return self._params.get(name) or sample_params(self.strategy(name), self._backbone)

    def seed(self, index: int) -> int:
        return evaluation_seed(0, index)

    def task(self, backbone: str) -> Task:
        if self._task_for is None or backbone == self.backbone_name:
            return self._task
        return self._task_for(backbone)


def model_server(task: Task, backbone: Backbone, *, make: Callable[[str], Strategy] | None = None,
                 params: dict[str, dict[str, Any]] | None = None, reuse: Reuse = Reuse(),
                 backbones: dict[str, Backbone] | None = None, task_for: Callable[[str], Task] | None = None,
                 root: Any = None) -> Members:
    """A cell's model server outside a suite, for strategies that reuse others' models."""
    make = make or (lambda name: STRATEGIES.get(name)(epochs=(2, 3), batch_size=8))
    recipes = TinyCell(task, backbone, make=make, params=params, reuse=reuse, task_for=task_for)
    return Members(recipes, ArtifactStore(root), backbones or {"tiny-backbone": backbone})


class CheckFailed(Exception):
    """A property does not hold; the message says why, in one line."""


@dataclass
class CheckResult:
    prop: str
    ok: bool
    reason: str = ""

    def __str__(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'}  {self.prop}" + (f": {self.reason}" if self.reason else "")


@dataclass
class CheckReport:
    """Per property, pass or a one-line reason."""

    strategy: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def __str__(self) -> str:
        return "\n".join([f"tlbench check {self.strategy}:", *(f"  {r}" for r in self.results)])

    def assert_ok(self) -> None:
        """Raises AssertionError listing the failed properties (for a pytest suite)."""
        if not self.ok:
            raise AssertionError(str(self))


class _Pruning:
    def report(self, epoch: int, value: float) -> None:
        raise optuna.TrialPruned("tlbench check: pruned at the first report")


@dataclass
class _Context:
    """What the checks share: one strategy instance, the tiny task, backbone and server."""

    strategy: Strategy
    task: Task
    backbone: Backbone
    runtime: Runtime
    raw: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def fit(self, *, seed: int = 0, reporter: Any = None) -> Predictor:
        return self.strategy.fit(self.backbone, self.task, self.params, seed=seed,
                                 reporter=reporter if reporter is not None else NullReporter(),
                                 runtime=self.runtime)


def _name_and_description(c: _Context) -> None:
    cls = type(c.strategy)
    if not isinstance(getattr(cls, "name", None), str) or not cls.name:
        raise CheckFailed("set a `name` class attribute (the name suites use)")
    description = getattr(cls, "description", "")
    if not isinstance(description, str) or not description.strip() or "\n" in description:
        raise CheckFailed("set a one-line `description` class attribute (tlbench list strategies shows it)")


def _fixed_trial(c: _Context) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    c.strategy.search_space(trial, c.backbone)
    c.raw = dict(trial.params)
    params = c.strategy.search_space(optuna.trial.FixedTrial(c.raw), c.backbone)
    again = c.strategy.search_space(optuna.trial.FixedTrial(c.raw), c.backbone)
    if not isinstance(params, dict) or not params:
        raise CheckFailed(f"search_space must return a non-empty dict of params, got {params!r}")
    if params != again:
        raise CheckFailed("the same FixedTrial values gave different params (the space must be deterministic)")
    if bool(c.raw) != c.strategy.tunable:
        raise CheckFailed("a tunable strategy must suggest something; one with nothing to search sets "
                          "tunable = False" if c.strategy.tunable else "tunable = False, but it suggests "
                          f"{sorted(c.raw)}")
    try:
        json.dumps(params)
    except TypeError as err:
        raise CheckFailed(f"params must be JSON-serialisable (they are stored with every record): {err}") from None
    c.params = params


def _fits(c: _Context) -> None:
    predictor = c.fit()
    if not isinstance(predictor, Predictor):
        raise CheckFailed(f"fit must return a tlbench.Predictor, got {type(predictor).__name__}")
    logits = predictor.logits(c.task.test)
    expected = (len(c.task.test), c.task.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        raise CheckFailed(f"logits(test) must have shape {expected}, got {getattr(logits, 'shape', logits)}")
    if not torch.isfinite(logits).all():
        raise CheckFailed("logits(test) contain NaN or infinite values")


def _reports(c: _Context) -> None:
    reporter = NullReporter()
    c.fit(reporter=reporter)
    history = reporter.history
    if not history:
        raise CheckFailed("fit reported no validation accuracy (call reporter.report(epoch, value) every epoch)")
    if "epochs" in c.params and len(history) != c.params["epochs"]:
        raise CheckFailed(f"{len(history)} reports for {c.params['epochs']} epochs (one per epoch)")
    bad = [v for v in history if not isinstance(v, float) or math.isnan(v) or not 0.0 <= v <= 1.0]
    if bad:
        raise CheckFailed(f"reported values must be accuracies in [0, 1], got {bad[:3]}")


def _deterministic(c: _Context) -> None:
    first, second = (c.fit(seed=5).logits(c.task.test) for _ in range(2))
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        raise CheckFailed(f"two fits with seed 5 predict differently (max |difference| {diff:.3g}); seed every "
                          f"random draw from the seed fit gets")


def _pruning(c: _Context) -> None:
    try:
        c.fit(reporter=_Pruning())
    except optuna.TrialPruned:
        return
    raise CheckFailed("fit finished although its reporter pruned: let optuna.TrialPruned propagate")


def _backbone_untouched(c: _Context) -> None:
    before = state_fingerprint(c.backbone)
    grads = [p.requires_grad for p in c.backbone.parameters()]
    mode = c.backbone.training
    c.fit()
    if state_fingerprint(c.backbone) != before:
        raise CheckFailed("fit changed the shared backbone's weights or buffers: train a copy "
                          "(tlbench.new_classifier deep-copies it)")
    if [p.requires_grad for p in c.backbone.parameters()] != grads:
        raise CheckFailed("fit changed requires_grad on the shared backbone's parameters")
    if c.backbone.training != mode:
        raise CheckFailed("fit left the shared backbone in another train/eval mode")


def _counts(c: _Context) -> None:
    predictor = c.fit()
    for what in ("trainable_parameters", "inference_parameters"):
        value = getattr(predictor, what)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckFailed(f"predictor.{what} must be a positive int, got {value!r}")
    negative = {k: v for k, v in predictor.reused.items() if not v >= 0}
    if negative:
        raise CheckFailed(f"predictor.reused holds negative or missing seconds: {negative}")


#: property → its check, in the order they run (later ones need the params drawn earlier)
PROPERTIES: dict[str, Callable[[_Context], None]] = {
    "has a name and a one-line description": _name_and_description,
    "search space works with optuna.trial.FixedTrial": _fixed_trial,
    "fits on a tiny task": _fits,
    "reports validation accuracy every epoch": _reports,
    "is deterministic for a seed": _deterministic,
    "pruning propagates": _pruning,
    "leaves the shared pretrained backbone untouched": _backbone_untouched,
    "predictor counts are consistent": _counts,
}


def check_strategy(strategy: type[Strategy] | Strategy, *, options: dict[str, Any] | None = None,
                   epochs: tuple[int, int] = (2, 3), batch_size: int = 8) -> CheckReport:
    """Checks every property of the strategy contract (module docstring) and reports each:
    pass, or a one-line reason. Strategies that reuse other strategies' models get a
    model server with the built-in strategies (and ``strategy`` itself)."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    label = getattr(cls, "name", None) or cls.__name__
    report = CheckReport(str(label))
    try:
        instance = strategy if isinstance(strategy, Strategy) else cls(epochs=epochs, batch_size=batch_size,
                                                                       options=options)
    except Exception as err:  # noqa: BLE001 - the first property a user needs to hear about
        report.results.append(CheckResult("constructs with the suite's settings", False,
                                          f"{type(err).__name__}: {err}"))
        return report
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    try:
        _check_all(report, instance, cls, epochs=epochs, batch_size=batch_size)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return report


def _check_all(report: CheckReport, instance: Strategy, cls: type[Strategy], *, epochs: tuple[int, int],
               batch_size: int) -> None:
    task, backbone = tiny_task(), tiny_backbone()

    def make(name: str) -> Strategy:
        if name == getattr(cls, "name", None):
            return instance
        return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size)

    reuse = Reuse(frozenset(instance.requires()), frozenset(instance.requires_weights()))
    server = model_server(task, backbone, make=make, reuse=reuse)
    context = _Context(instance, task, backbone, Runtime(torch.device("cpu"), members=server))
    for prop, check in PROPERTIES.items():
        if check not in (_name_and_description, _fixed_trial) and not context.params:
            report.results.append(CheckResult(prop, False, "not checked: it needs a working search space"))
            continue
        try:
            check(context)
        except CheckFailed as err:
            report.results.append(CheckResult(prop, False, str(err)))
        except Exception as err:  # noqa: BLE001 - a crash is a failed property, said in one line
            message = str(err).splitlines()[0] if str(err) else ""
            report.results.append(CheckResult(prop, False, f"raised {type(err).__name__}: {message}"))
        else:
            report.results.append(CheckResult(prop, True))
