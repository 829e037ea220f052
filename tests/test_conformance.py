"""The shared conformance test: every registered strategy passes ``tlbench.testing.check_strategy``
(the same check ``tlbench check`` runs on a plugin), and the check catches each violation."""

from __future__ import annotations

import copy

import pytest
import torch

from tlbench.strategies import STRATEGIES
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.testing import PROPERTIES, check_strategy


@pytest.mark.parametrize("name", STRATEGIES.names())
def test_strategy_passes_the_check(name: str) -> None:
    report = check_strategy(STRATEGIES.get(name))
    assert [r.prop for r in report.results] == list(PROPERTIES)
    report.assert_ok()


class Undescribed(FullFinetune):
    name = "undescribed"
    description = ""


class Unseeded(FullFinetune):
    name = "unseeded"
    description = "ignores its seed"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        return super().fit(backbone, task, params, seed=int(torch.randint(0, 1000, ()).item()),
                           reporter=reporter, runtime=runtime)


class Unprunable(FullFinetune):
    name = "unprunable"
    description = "swallows pruning"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        class Quiet:
            history: list[float] = []

            def report(self, epoch, value):
                try:
                    reporter.report(epoch, value)
                except Exception:  # noqa: BLE001 - the bug under test
                    pass

        return super().fit(backbone, task, params, seed=seed, reporter=Quiet(), runtime=runtime)


class Mutating(FullFinetune):
    name = "mutating"
    description = "trains the shared backbone in place"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        predictor = super().fit(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime)
        backbone.load_state_dict(copy.deepcopy(predictor.model.backbone.state_dict()))
        return predictor


class Silent(FullFinetune):
    name = "silent"
    description = "never reports"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        from tlbench.training.loop import NullReporter

        return super().fit(backbone, task, params, seed=seed, reporter=NullReporter(), runtime=runtime)


class NoSpace(FullFinetune):
    name = "no_space"
    description = "returns no params"

    def search_space(self, trial, backbone):
        return {}


@pytest.mark.parametrize("cls, failing", [
    (Undescribed, {"has a name and a one-line description"}),
    (Unseeded, {"is deterministic for a seed"}),
    (Unprunable, {"pruning propagates"}),
    (Mutating, {"leaves the shared pretrained backbone untouched", "is deterministic for a seed"}),
    (Silent, {"reports validation accuracy every epoch", "pruning propagates"}),
    (NoSpace, set(PROPERTIES) - {"has a name and a one-line description"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_check_catches_each_violation(cls, failing: set[str]) -> None:
    report = check_strategy(cls)
    assert {r.prop for r in report.failed} == failing, str(report)
    assert all(r.reason and "\n" not in r.reason for r in report.failed)
    with pytest.raises(AssertionError, match="FAIL"):
        report.assert_ok()
