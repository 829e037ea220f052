"""tlbench: benchmark transfer-learning strategies under equal tuning budgets.

The names in ``tlbench.__all__`` are the public API (docs/api.md): what a plugin author
writes a strategy, backbone, dataset or scorer against, and what an analyst reads results with.
Every other module and name is internal and may change without notice.

The names are resolved on first use (PEP 562), so ``import tlbench`` is cheap and importing
any submodule never drags in the layers above it.
"""

from __future__ import annotations

import importlib as _importlib
from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from tlbench.core.version import __version__

#: public name → the module that defines it
_EXPORTS: dict[str, str] = {
    # errors
    "TlbenchError": "tlbench.core.errors", "ConfigError": "tlbench.core.errors", "NonFiniteLoss": "tlbench.core.errors",
    # typed blocks and registries
    "Frozen": "tlbench.core.frozen", "Registry": "tlbench.core.registry",
    "STRATEGIES": "tlbench.strategies", "BACKBONES": "tlbench.training.backbones",
    "DATASETS": "tlbench.suites.datasets",
    # strategies and what they return
    "Strategy": "tlbench.strategies.base", "Predictor": "tlbench.strategies.base",
    "ModelPredictor": "tlbench.strategies.base",
    # composable parts and the one fine-tuning routine
    "finetune": "tlbench.strategies.full_finetune", "new_classifier": "tlbench.strategies.full_finetune",
    "FreezeSchedule": "tlbench.strategies.parts", "L2SP": "tlbench.strategies.parts",
    "Distillation": "tlbench.strategies.parts", "model_groups": "tlbench.strategies.parts",
    "group_parameters": "tlbench.strategies.parts", "layerwise_lr_groups": "tlbench.strategies.parts",
    "suggest_optimizer": "tlbench.strategies.parts", "make_optimizer": "tlbench.strategies.parts",
    "make_schedule": "tlbench.strategies.parts", "warmup_cosine": "tlbench.strategies.parts",
    "slanted_triangular": "tlbench.strategies.parts",
    # the training loop's contract
    "Hook": "tlbench.training.loop", "Batch": "tlbench.training.loop", "Reporter": "tlbench.training.loop",
    "NullReporter": "tlbench.training.loop", "fit_epochs": "tlbench.training.loop",
    "predict_logits": "tlbench.training.loop",
    "accuracy": "tlbench.training.loop", "report_final": "tlbench.training.loop",
    "Runtime": "tlbench.training.context",
    # backbones, data, tasks
    "Backbone": "tlbench.training.backbones", "Classifier": "tlbench.training.backbones",
    "TorchvisionBackbone": "tlbench.training.backbones", "ImageView": "tlbench.data.views",
    "TorchvisionDataset": "tlbench.suites.images",
    "Dataset": "tlbench.suites.pools", "DataPool": "tlbench.suites.pools", "DataAccess": "tlbench.suites.pools",
    "Task": "tlbench.data.splits", "Split": "tlbench.data.splits",
    # reusing other strategies' models
    "Member": "tlbench.training.context", "ModelServer": "tlbench.training.context",
    # stored results
    "load_results": "tlbench.reports.results", "Results": "tlbench.reports.results",
    "RunRecord": "tlbench.store.records", "StudyName": "tlbench.store.records", "Protocol": "tlbench.store.records",
    "SCHEMA_VERSION": "tlbench.store.records", "Budget": "tlbench.core.budget",
    "SearchSpace": "tlbench.store.space", "Param": "tlbench.store.space",
    # model selection: transferability scorers
    "Scorer": "tlbench.selection.scorers", "SCORERS": "tlbench.selection.scorers",
    "ScoreInputs": "tlbench.selection.inputs", "SourceHead": "tlbench.training.backbones",
    "ScoreRecord": "tlbench.store.scores",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> _Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tlbench' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if _TYPE_CHECKING:  # static analysers see the real names
    from tlbench.core.budget import Budget
    from tlbench.core.errors import ConfigError, NonFiniteLoss, TlbenchError
    from tlbench.core.frozen import Frozen
    from tlbench.core.registry import Registry
    from tlbench.data.splits import Split, Task
    from tlbench.data.views import ImageView
    from tlbench.reports.results import Results, load_results
    from tlbench.selection.inputs import ScoreInputs
    from tlbench.selection.scorers import SCORERS, Scorer
    from tlbench.store.records import SCHEMA_VERSION, Protocol, RunRecord, StudyName
    from tlbench.store.scores import ScoreRecord
    from tlbench.store.space import Param, SearchSpace
    from tlbench.strategies import STRATEGIES
    from tlbench.strategies.base import ModelPredictor, Predictor, Strategy
    from tlbench.strategies.full_finetune import finetune, new_classifier
    from tlbench.strategies.parts import (
        L2SP,
        Distillation,
        FreezeSchedule,
        group_parameters,
        layerwise_lr_groups,
        make_optimizer,
        make_schedule,
        model_groups,
        slanted_triangular,
        suggest_optimizer,
        warmup_cosine,
    )
    from tlbench.suites.datasets import DATASETS
    from tlbench.suites.images import TorchvisionDataset
    from tlbench.suites.pools import DataAccess, DataPool, Dataset
    from tlbench.training.backbones import BACKBONES, Backbone, Classifier, SourceHead, TorchvisionBackbone
    from tlbench.training.context import Member, ModelServer, Runtime
    from tlbench.training.loop import (
        Batch,
        Hook,
        NullReporter,
        Reporter,
        accuracy,
        fit_epochs,
        predict_logits,
        report_final,
    )
