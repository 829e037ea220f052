"""The strategy contract, one property per check (``tlbench check``, the conformance test, a plugin
author's pytest suite through :func:`tlbench.testing.parametrize_with_checks`). Each property runs on
a tiny task (3 digit classes, 4 shots) and a tiny backbone, in seconds on a CPU:

- it has a registrable ``name`` and a one-line ``description``;
- its search space works with ``optuna.trial.FixedTrial`` (the same raw values give the same params,
  JSON-serialisable; a tunable strategy searches something);
- it honours the suite's search-space overrides (a fixed value reaches its params);
- it fits on a tiny task and predicts finite logits of the right shape, on the CPU;
- it fits on a task of image files too (read lazily, as real-data suites are);
- it reports validation accuracy (in [0, 1]) every epoch;
- it is deterministic for a seed, and different seeds give different models;
- pruning propagates (a reporter that prunes stops ``fit``);
- the shared pretrained backbone is left untouched (weights, ``requires_grad``, mode);
- its predictor's counts are consistent (positive integers; reused costs non-negative), its facts
  are JSON-serialisable, and its ``state()``, if any, loads into a classifier that predicts the same.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna
import torch

from tlbench.data.splits import Task
from tlbench.run.model_server import Reuse
from tlbench.run.spaces import Fixed, SpaceTrial, declared
from tlbench.store.progress import evaluation_seed
from tlbench.strategies import STRATEGIES, Predictor, Strategy
from tlbench.testing.fixtures import model_server, tiny_backbone, tiny_image_task, tiny_task, tiny_vit
from tlbench.testing.report import (
    CheckFailed,
    CheckReport,
    CheckResult,
    Unchecked,
    check_name_and_description,
    one_line,
    properties,
    run_properties,
)
from tlbench.training.backbones import Backbone, Classifier, state_fingerprint
from tlbench.training.context import Runtime
from tlbench.training.loop import NullReporter


class _Pruning:
    """A reporter that prunes at the first report; it implements the whole Reporter protocol (a
    strategy's wrapper may forward ``spend`` to it)."""

    def report(self, epoch: int, value: float) -> None:
        raise optuna.TrialPruned("tlbench check: pruned at the first report")

    def spend(self, flops: float) -> None:
        pass


@dataclass
class StrategyContext:
    """What the checks of one strategy share: the instance, the tiny task, backbone and server, and
    the configuration drawn from its search space (by the FixedTrial property, or on first need)."""

    strategy: Strategy
    make: Callable[[str], Strategy]
    task: Task = field(default_factory=tiny_task)
    backbone: Backbone = field(default_factory=tiny_backbone)
    raw: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    runtime: Runtime = field(init=False)

    def __post_init__(self) -> None:
        if self.strategy.needs_tokens and self.backbone.weights_id == "tiny-test-backbone":
            self.backbone = tiny_vit()
        self.runtime = self.runtime_for(self.task, self.backbone)

    def image_backbone(self) -> Backbone:
        """The tiny backbone for RGB images."""
        return tiny_vit(in_channels=3) if self.strategy.needs_tokens else tiny_backbone(in_channels=3)

    def runtime_for(self, task: Task, backbone: Backbone) -> Runtime:
        reuse = Reuse.of([self.strategy])
        return Runtime(torch.device("cpu"), members=model_server(task, backbone, make=self.make, reuse=reuse))

    def require_params(self) -> dict[str, Any]:
        if self.params is None:
            try:
                _fixed_trial(self)
            except Exception as err:  # noqa: BLE001 - said as why this property could not be checked
                raise Unchecked(f"not checked: it needs a working search space ({one_line(err)})") from None
        assert self.params is not None
        return self.params

    def fit(self, *, seed: int = 0, reporter: Any = None, task: Task | None = None,
            backbone: Backbone | None = None, runtime: Runtime | None = None) -> Predictor:
        return self.strategy.fit(backbone or self.backbone, task or self.task, self.require_params(), seed=seed,
                                 reporter=reporter if reporter is not None else NullReporter(),
                                 runtime=runtime or self.runtime)


def _name_and_description(c: StrategyContext) -> None:
    check_name_and_description(type(c.strategy), named_by="the name suites use", listed_by="tlbench list strategies")


def _fixed_trial(c: StrategyContext) -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    c.strategy.search_space(trial, c.backbone)
    raw = dict(trial.params)
    params = c.strategy.search_space(optuna.trial.FixedTrial(raw), c.backbone)
    again = c.strategy.search_space(optuna.trial.FixedTrial(raw), c.backbone)
    if not isinstance(params, dict) or not params:
        raise CheckFailed(f"search_space must return a non-empty dict of params, got {params!r}")
    if params != again:
        raise CheckFailed("the same FixedTrial values gave different params (the space must be deterministic)")
    if bool(raw) != c.strategy.tunable:
        raise CheckFailed("a tunable strategy must suggest something; one with nothing to search sets "
                          "tunable = False" if c.strategy.tunable else "tunable = False, but it suggests "
                          f"{sorted(raw)}")
    try:
        json.dumps(params)
    except TypeError as err:
        raise CheckFailed(f"params must be JSON-serialisable (they are stored with every record): {err}") from None
    c.raw, c.params = raw, params


def _another_value(dist: Any, current: Any) -> Any:
    """A value of ``dist`` (a float or int range) other than ``current``."""
    if isinstance(dist, optuna.distributions.IntDistribution):
        return dist.low if current != dist.low else dist.high
    low, high = dist.low, dist.high
    value = math.exp(math.log(low) + 0.37 * (math.log(high) - math.log(low))) if dist.log else low + 0.37 * (high - low)
    if dist.step:
        value = low + round((value - low) / dist.step) * dist.step
    return value if value != current else high


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    if isinstance(value, (list, tuple)):
        return [leaf for v in value for leaf in _leaves(v)]
    return [value]


def _overrides(c: StrategyContext) -> None:
    c.require_params()
    assert c.raw is not None
    space = declared(c.strategy, c.backbone)
    numbers = [name for name, value in c.raw.items() if name in space and isinstance(value, (int, float))
               and not isinstance(value, bool) and not isinstance(space[name],
                                                                 optuna.distributions.CategoricalDistribution)]
    if not numbers:
        return  # nothing numeric to fix: the categorical choices are checked by the FixedTrial property
    name = numbers[0]
    value = _another_value(space[name], c.raw[name])
    params = c.strategy.search_space(SpaceTrial(optuna.trial.FixedTrial(c.raw), {name: Fixed(value)}), c.backbone)
    if not any(isinstance(v, (int, float)) and math.isclose(v, value, rel_tol=1e-9) for v in _leaves(params)):
        raise CheckFailed(f"search_space ignores the suite's override of {name} (fixed to {value:g}, its params "
                          f"do not hold it): draw every hyperparameter through the trial and use what it returns")


def _logits_ok(predictor: Any, task: Task, where: str) -> None:
    if not isinstance(predictor, Predictor):
        raise CheckFailed(f"fit must return a tlbench.Predictor, got {type(predictor).__name__}")
    logits = predictor.logits(task.test)
    expected = (len(task.test), task.num_classes)
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != expected:
        raise CheckFailed(f"logits(test) {where} must have shape {expected}, got {getattr(logits, 'shape', logits)}")
    if logits.device.type != "cpu":
        raise CheckFailed(f"logits(test) {where} must come back on the CPU, got {logits.device}")
    if not torch.isfinite(logits).all():
        raise CheckFailed(f"logits(test) {where} contain NaN or infinite values")


def _fits(c: StrategyContext) -> None:
    _logits_ok(c.fit(), c.task, "on the tiny task")


def _fits_images(c: StrategyContext) -> None:
    task = tiny_image_task()
    backbone = c.image_backbone()
    runtime = c.runtime_for(task, backbone)
    _logits_ok(c.fit(task=task, backbone=backbone, runtime=runtime), task, "on a task of image files")


def _reports(c: StrategyContext) -> None:
    reporter = NullReporter()
    c.fit(reporter=reporter)
    history = reporter.history
    params = c.require_params()
    if not history:
        raise CheckFailed("fit reported no validation accuracy (call reporter.report(epoch, value) every epoch)")
    if "epochs" in params and len(history) != params["epochs"]:
        raise CheckFailed(f"{len(history)} reports for {params['epochs']} epochs (one per epoch)")
    bad = [v for v in history if not isinstance(v, float) or math.isnan(v) or not 0.0 <= v <= 1.0]
    if bad:
        raise CheckFailed(f"reported values must be accuracies in [0, 1], got {bad[:3]}")


def _deterministic(c: StrategyContext) -> None:
    first, second = (c.fit(seed=5).logits(c.task.test) for _ in range(2))
    if not torch.equal(first, second):
        diff = (first - second).abs().max().item()
        raise CheckFailed(f"two fits with seed 5 predict differently (max |difference| {diff:.3g}); seed every "
                          f"random draw from the seed fit gets")


def _seeds_differ(c: StrategyContext) -> None:
    one, two = (c.fit(seed=evaluation_seed(0, k)).logits(c.task.test) for k in (0, 1))
    if torch.equal(one, two):
        raise CheckFailed("fits with two evaluation seeds predict exactly alike: draw initialisation, data order "
                          "and augmentation from the seed fit gets, or the seeds measure nothing")


def _pruning(c: StrategyContext) -> None:
    try:
        c.fit(reporter=_Pruning())
    except optuna.TrialPruned:
        return
    raise CheckFailed("fit finished although its reporter pruned: let optuna.TrialPruned propagate")


def _backbone_untouched(c: StrategyContext) -> None:
    c.require_params()
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


def _counts(c: StrategyContext) -> None:
    predictor = c.fit()
    for what in ("trainable_parameters", "inference_parameters"):
        value = getattr(predictor, what)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise CheckFailed(f"predictor.{what} must be a positive int, got {value!r}")
    negative = {k: v for k, v in predictor.reused.items() if not v >= 0}
    if negative:
        raise CheckFailed(f"predictor.reused holds negative or missing seconds: {negative}")


def _facts(c: StrategyContext) -> None:
    info = c.fit().info()
    try:
        json.dumps(info)
    except (TypeError, ValueError) as err:
        raise CheckFailed(f"predictor.info() must be JSON-serialisable (it is stored with every record): "
                          f"{err}") from None


def _state(c: StrategyContext) -> None:
    predictor = c.fit()
    state = predictor.state()
    if state is None:
        return  # not one network: nothing to average
    classifier = Classifier(copy.deepcopy(c.backbone), c.backbone.new_head(c.task.num_classes))
    try:
        classifier.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckFailed(f"state() does not load into Classifier(backbone, head): {first}") from None
    classifier.eval()
    with torch.no_grad():
        mine = classifier(c.task.test.x.to(torch.float32))
    theirs = predictor.logits(c.task.test)
    if not torch.allclose(mine, theirs, atol=1e-4, rtol=1e-4):
        raise CheckFailed(f"state() loaded into Classifier(backbone, head) predicts otherwise (max |difference| "
                          f"{(mine - theirs).abs().max().item():.3g}): return the weights of the network that "
                          f"predicts, or None")


#: property → its check, in the order they run
PROPERTIES: dict[str, Callable[[StrategyContext], None]] = properties({
    "has a name and a one-line description": _name_and_description,
    "search space works with optuna.trial.FixedTrial": _fixed_trial,
    "honours the suite's search-space overrides": _overrides,
    "fits on a tiny task": _fits,
    "fits on a task of image files": _fits_images,
    "reports validation accuracy every epoch": _reports,
    "is deterministic for a seed": _deterministic,
    "different seeds give different models": _seeds_differ,
    "pruning propagates": _pruning,
    "leaves the shared pretrained backbone untouched": _backbone_untouched,
    "predictor counts are consistent": _counts,
    "strategy facts are JSON-serialisable": _facts,
    "state() loads back into the classifier": _state,
})


def strategy_context(strategy: type[Strategy] | Strategy, *, options: dict[str, Any] | None = None,
                     epochs: tuple[int, int] = (2, 3), batch_size: int = 8) -> StrategyContext:
    """The context the checks of ``strategy`` share (raises whatever constructing it raises). Strategies
    that reuse other strategies' models get a model server with the built-in strategies (and
    ``strategy`` itself)."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    instance = strategy if isinstance(strategy, Strategy) else cls(epochs=epochs, batch_size=batch_size,
                                                                   options=options)

    def make(name: str) -> Strategy:
        if name == getattr(cls, "name", None):
            return instance
        return STRATEGIES.get(name)(epochs=epochs, batch_size=batch_size)

    return StrategyContext(instance, make)


def check_strategy(strategy: type[Strategy] | Strategy, *, options: dict[str, Any] | None = None,
                   epochs: tuple[int, int] = (2, 3), batch_size: int = 8) -> CheckReport:
    """Checks every property of the strategy contract (module docstring) and reports each: pass, or
    a one-line reason."""
    cls = strategy if isinstance(strategy, type) else type(strategy)
    report = CheckReport(str(getattr(cls, "name", None) or cls.__name__), kind="strategy")
    try:
        context = strategy_context(strategy, options=options, epochs=epochs, batch_size=batch_size)
    except Exception as err:  # noqa: BLE001 - the first property a user needs to hear about
        report.results.append(CheckResult("constructs with the suite's settings", False, one_line(err)))
        return report
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no line per in-memory study
    try:
        run_properties(report, PROPERTIES, context)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return report
