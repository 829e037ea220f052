"""The shared conformance tests: every registered strategy, backbone and dataset passes its contract
(``tlbench.testing``, the checks ``tlbench check`` runs on a plugin), one pytest case per property;
deliberately broken plugins fail exactly the properties they break; expected failures can be marked."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tlbench.core.frozen import Frozen
from tlbench.strategies import STRATEGIES
from tlbench.strategies.base import ModelPredictor
from tlbench.strategies.full_finetune import FullFinetune
from tlbench.suites.datasets import DATASETS
from tlbench.suites.pools import DataPool, Dataset, NoArgs
from tlbench.testing import (
    BACKBONE_PROPERTIES,
    DATASET_PROPERTIES,
    PROPERTIES,
    check_backbone,
    check_dataset,
    check_strategy,
    parametrize_with_checks,
)
from tlbench.testing.fixtures import tiny_image_task
from tlbench.training.backbones import BACKBONES, SmallCNN2d

# ------------------------------------------------------------------ every built-in passes

#: A small variant of each built-in backbone (the checks build each a few times).
BACKBONE_ARGS = {"resnet": {"variant": "resnet18"}, "convnext": {"variant": "convnext_tiny"},
                 "efficientnet": {"variant": "efficientnet_b0"}, "mobilenet_v3": {"variant": "mobilenet_v3_small"},
                 "vit": {"variant": "vit_b_32"}, "timm": {"model": "resnet10t"}}
#: Built-in datasets that need no files beyond what packages ship (image folders: the checks' own folder);
#: the torchvision formats are checked on files written in their formats in test_image_formats.py.
DATASET_ARGS = {"digits": {}, "mnist1d": {"num_samples": 300}, "glyphs": {"n": 300, "size": 8}}


@parametrize_with_checks([STRATEGIES.get(name) for name in STRATEGIES.names()])
def test_every_strategy_keeps_the_contract(check) -> None:
    check()


@parametrize_with_checks([(BACKBONES.get(name), {"args": BACKBONE_ARGS.get(name, {})}) for name in BACKBONES.names()])
def test_every_backbone_keeps_the_contract(check) -> None:
    check()


def _image_folder_settings() -> dict:
    tiny_image_task()  # writes the checks' image folder once
    from tlbench.testing.fixtures import _image_folder

    return {"args": {"path": "images"}, "data": _image_folder()}


@parametrize_with_checks([(DATASETS.get(name), {"args": args}) for name, args in DATASET_ARGS.items()]
                         + [(DATASETS.get("image_folder"), _image_folder_settings())])
def test_bundled_datasets_keep_the_contract(check) -> None:
    check()


def test_a_report_lists_every_property_in_order() -> None:
    assert [r.prop for r in check_strategy(STRATEGIES.get("linear_probe")).results] == list(PROPERTIES)


# ------------------------------------------------------------------ broken strategies fail what they break


class Undescribed(FullFinetune):
    name = "undescribed"
    description = ""


class Unseeded(FullFinetune):
    name = "unseeded"
    description = "ignores its seed"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        return super().fit(backbone, task, params, seed=int(torch.randint(0, 1000, ()).item()),
                           reporter=reporter, runtime=runtime)


class OneSeed(FullFinetune):
    name = "one_seed"
    description = "trains every seed alike"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        return super().fit(backbone, task, params, seed=0, reporter=reporter, runtime=runtime)


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

            def spend(self, flops):
                pass

        return super().fit(backbone, task, params, seed=seed, reporter=Quiet(), runtime=runtime)


class Forwarding(FullFinetune):
    """A strategy whose reporter wrapper forwards the whole Reporter protocol (report and spend), as
    the documentation says: the check's own reporters must implement all of it (they lacked spend)."""

    name = "forwarding"
    description = "wraps its reporter"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        class Wrapper:
            def report(self, epoch, value):
                reporter.report(epoch, value)

            def spend(self, flops):
                reporter.spend(flops)

        return super().fit(backbone, task, params, seed=seed, reporter=Wrapper(), runtime=runtime)


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


class HardCoded(FullFinetune):
    name = "hard_coded"
    description = "suggests a rate, then trains with its own"

    def search_space(self, trial, backbone):
        return {**super().search_space(trial, backbone), "lr": 0.01, "weight_decay": 0.0, "warmup_fraction": 0.0,
                "epochs": 2}


class Elsewhere(FullFinetune):
    name = "elsewhere"
    description = "predicts on another device"

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        predictor = super().fit(backbone, task, params, seed=seed, reporter=reporter, runtime=runtime)

        class Meta(ModelPredictor):
            def logits(self, split):
                return torch.empty(len(split), task.num_classes, device="meta")

        return Meta(predictor.model, device=predictor.device, trainable=predictor.trainable_parameters)


class OpaqueFacts(FullFinetune):
    name = "opaque_facts"
    description = "records a tensor as a fact"

    def fit(self, *args, **kwargs):
        return super().fit(*args, **kwargs).annotate(temperature=torch.tensor(2.0))


class WrongState(FullFinetune):
    name = "wrong_state"
    description = "returns another network's weights"

    def fit(self, *args, **kwargs):
        predictor = super().fit(*args, **kwargs)
        predictor.state = lambda: {"weight": torch.zeros(3)}
        return predictor


@pytest.mark.parametrize("cls, failing", [
    (Undescribed, {"has a name and a one-line description"}),
    (Unseeded, {"is deterministic for a seed"}),
    (OneSeed, {"different seeds give different models"}),
    (Unprunable, {"pruning propagates"}),
    (Forwarding, set()),
    (Mutating, {"leaves the shared pretrained backbone untouched", "is deterministic for a seed"}),
    (Silent, {"reports validation accuracy every epoch", "pruning propagates"}),
    (NoSpace, set(PROPERTIES) - {"has a name and a one-line description"}),
    (HardCoded, {"honours the suite's search-space overrides"}),
    (Elsewhere, {"fits on a tiny task", "fits on a task of image files", "is deterministic for a seed",
                 "different seeds give different models", "state() loads back into the classifier"}),
    (OpaqueFacts, {"strategy facts are JSON-serialisable"}),
    (WrongState, {"state() loads back into the classifier"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_strategy_check_catches_each_violation(cls, failing: set[str]) -> None:
    report = check_strategy(cls)
    assert {r.prop for r in report.failed} == failing, str(report)
    assert all(r.reason and "\n" not in r.reason for r in report.failed)
    if failing:
        with pytest.raises(AssertionError, match="FAIL"):
            report.assert_ok()


# ------------------------------------------------------------------ broken backbones and datasets


class LooseParameter(SmallCNN2d):
    name = "loose_parameter"
    description = "keeps a scale outside its groups"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = nn.Parameter(torch.ones(()))

    def forward_features(self, x):
        return super().forward_features(x) * self.scale


class WrongWidth(SmallCNN2d):
    name = "wrong_width"
    description = "says its features are wider than they are"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_dim += 1


class DeadGroup(SmallCNN2d):
    name = "dead_group"
    description = "its first group is never used"

    def forward_features(self, x):
        for group in self.groups[1:]:
            x = group(x if x.shape[1] == group[0].in_channels else x.repeat(1, group[0].in_channels, 1, 1))
        return self.pool(x)


class NumpySeeded(SmallCNN2d):
    name = "numpy_seeded"
    description = "initialises from an unseeded generator"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        import numpy as np

        with torch.no_grad():
            first = next(self.parameters())
            first.copy_(torch.from_numpy(np.random.default_rng().normal(size=tuple(first.shape))))


@pytest.mark.parametrize("cls, failing", [
    (LooseParameter, {"its layer groups hold every parameter"}),
    (WrongWidth, {"forward_features gives (N, feature_dim)", "new_head maps the features to logits",
                  "gradients reach every layer group"}),
    (DeadGroup, {"gradients reach every layer group"}),
    (NumpySeeded, {"builds from its arguments, the same for a seed"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_backbone_check_catches_each_violation(cls, failing: set[str]) -> None:
    report = check_backbone(cls, args={"width": 4, "depth": 3})
    assert [r.prop for r in report.results] == list(BACKBONE_PROPERTIES)
    assert {r.prop for r in report.failed} == failing, str(report)
    assert all(r.reason and "\n" not in r.reason for r in report.failed)
    if cls is WrongWidth:
        assert [r.reason.startswith("not checked") for r in report.failed] == [False, True, True], str(report)


def _pool(y: list[int], classes: int = 3) -> DataPool:
    return DataPool(torch.arange(len(y) * 4, dtype=torch.float32).reshape(len(y), 4), torch.tensor(y),
                    tuple(f"c{i}" for i in range(classes)))


class Fine(Dataset):
    name, description, Args = "fine", "a good pool", NoArgs

    def load(self, args, data):
        return _pool([0, 1, 2] * 3)


class OutOfRange(Fine):
    name = "out_of_range"

    def load(self, args, data):
        return _pool([0, 1, 3] * 3)


class Ragged(Fine):
    name = "ragged"

    def load(self, args, data):
        pool = _pool([0, 1, 2] * 3)
        return DataPool(pool.x[:-1], pool.y, pool.class_names)


class Shuffled(Fine):
    name = "shuffled"

    def load(self, args, data):
        return _pool(torch.randperm(9).remainder(3).tolist())


class NeedsArgs(Fine):
    name = "needs_args"

    class Args(Frozen):
        path: str


@pytest.mark.parametrize("cls, failing", [
    (Fine, set()),
    (OutOfRange, {"loads a pool of labelled examples"}),
    (Ragged, {"loads a pool of labelled examples"}),
    (Shuffled, {"loads the same examples in the same order"}),
    (NeedsArgs, set(DATASET_PROPERTIES) - {"has a name and a one-line description"}),
], ids=lambda v: v.__name__ if isinstance(v, type) else "")
def test_the_dataset_check_catches_each_violation(cls, failing: set[str]) -> None:
    report = check_dataset(cls)
    assert [r.prop for r in report.results] == list(DATASET_PROPERTIES)
    assert {r.prop for r in report.failed} == failing, str(report)
    dependents = [r for r in report.failed if r.prop != "its Args take the arguments given"]
    if cls is NeedsArgs:  # what needs the refused arguments says so, rather than repeating the refusal as its own
        assert all(r.reason.startswith("not checked: its arguments are refused") for r in dependents), str(report)


# ------------------------------------------------------------------ pytest cases by name, expected failures


def test_the_cases_are_named_and_known_failures_are_strict_xfails() -> None:
    mark = parametrize_with_checks([OneSeed, (Fine, {})], expected_failures={
        "one_seed": {"different seeds give different models": "trains every seed alike, on purpose"}})
    cases = mark.args[1]
    ids = [case.id for case in cases]
    assert ids[:2] == ["one_seed-has a name and a one-line description",
                       "one_seed-search space works with optuna.trial.FixedTrial"]
    assert "fine-loads the same examples in the same order" in ids
    xfails = {case.id: case.marks[0] for case in cases if case.marks}
    assert list(xfails) == ["one_seed-different seeds give different models"]
    only = xfails["one_seed-different seeds give different models"]
    assert only.name == "xfail" and only.kwargs["strict"] is True
    by_id = {case.id: case.values[0] for case in cases}
    with pytest.raises(AssertionError, match="one_seed: different seeds give different models: fits with two"):
        by_id["one_seed-different seeds give different models"]()
    by_id["fine-loads a pool of labelled examples"]()  # passes: returns quietly
