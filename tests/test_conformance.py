"""The shared conformance test: every registered strategy must pass it."""

from __future__ import annotations

import json
import math

import optuna
import pytest
import torch

from tlbench.backbones import state_fingerprint
from tlbench.strategies import STRATEGIES, Predictor, Strategy
from tlbench.train import NullReporter


def make(name: str) -> Strategy:
    return STRATEGIES.get(name)(epochs=(2, 3), batch_size=8)


def sample_params(strategy: Strategy, backbone) -> dict:
    """The raw values a random trial suggests (what a FixedTrial replays)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    trial = study.ask()
    strategy.search_space(trial, backbone)
    return trial.params


def params_for(strategy: Strategy, backbone) -> dict:
    return strategy.search_space(optuna.trial.FixedTrial(sample_params(strategy, backbone)), backbone)


class RaisingReporter:
    def report(self, epoch: int, value: float) -> None:
        raise optuna.TrialPruned("test")


@pytest.mark.parametrize("name", STRATEGIES.names())
class TestStrategyConformance:
    def test_search_space_works_with_fixed_trial(self, name: str, tiny_backbone) -> None:
        strategy = make(name)
        raw = sample_params(strategy, tiny_backbone)
        params = strategy.search_space(optuna.trial.FixedTrial(raw), tiny_backbone)
        assert params == strategy.search_space(optuna.trial.FixedTrial(raw), tiny_backbone)
        assert isinstance(params, dict) and params
        assert bool(raw) == strategy.tunable  # a tunable strategy searches something
        json.dumps(params)  # stored as a trial attribute and in every record

    def test_fits_reports_and_predicts(self, name, tiny_backbone, tiny_task, cell_runtime) -> None:
        strategy = make(name)
        params = params_for(strategy, tiny_backbone)
        reporter = NullReporter()
        predictor = strategy.fit(tiny_backbone, tiny_task, params, seed=0, reporter=reporter,
                                 runtime=cell_runtime)
        assert isinstance(predictor, Predictor)
        logits = predictor.logits(tiny_task.test)
        assert logits.shape == (len(tiny_task.test), tiny_task.num_classes)
        assert torch.isfinite(logits).all()
        assert predictor.trainable_parameters > 0
        assert len(reporter.history) >= 1
        if "epochs" in params:
            assert len(reporter.history) == params["epochs"]
        assert all(0.0 <= v <= 1.0 and not math.isnan(v) for v in reporter.history)

    def test_deterministic_for_a_seed(self, name, tiny_backbone, tiny_task, cell_runtime) -> None:
        strategy = make(name)
        params = params_for(strategy, tiny_backbone)
        runs = [strategy.fit(tiny_backbone, tiny_task, params, seed=5, reporter=NullReporter(),
                             runtime=cell_runtime).logits(tiny_task.test) for _ in range(2)]
        assert torch.equal(runs[0], runs[1])

    def test_leaves_backbone_unchanged(self, name, tiny_backbone, tiny_task, cell_runtime) -> None:
        before = state_fingerprint(tiny_backbone)
        grads = [p.requires_grad for p in tiny_backbone.parameters()]
        mode = tiny_backbone.training
        strategy = make(name)
        params = params_for(strategy, tiny_backbone)
        strategy.fit(tiny_backbone, tiny_task, params, seed=0, reporter=NullReporter(), runtime=cell_runtime)
        assert state_fingerprint(tiny_backbone) == before
        assert [p.requires_grad for p in tiny_backbone.parameters()] == grads
        assert tiny_backbone.training == mode

    def test_pruning_propagates(self, name, tiny_backbone, tiny_task, cell_runtime) -> None:
        strategy = make(name)
        params = params_for(strategy, tiny_backbone)
        with pytest.raises(optuna.TrialPruned):
            strategy.fit(tiny_backbone, tiny_task, params, seed=0, reporter=RaisingReporter(),
                         runtime=cell_runtime)

    def test_has_description(self, name: str) -> None:
        cls = STRATEGIES.get(name)
        assert cls.name == name and cls.description and "\n" not in cls.description
