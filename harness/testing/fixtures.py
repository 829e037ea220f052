"""The tiny tasks, backbones and model servers the contract checks use, for a plugin author's own
tests too: a digits task (tensors), a task of image files written to a temporary folder, and a
small CNN for each."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from tlbench.data.preprocess import Preprocess
from tlbench.data.splits import Task
from tlbench.run.model_server import ArtifactStore, CellRecipes, Members, Reuse
from tlbench.store.progress import evaluation_seed
from tlbench.strategies import STRATEGIES, Strategy
from tlbench.suites.pools import DataAccess
from tlbench.suites.schema import SplitSpec, TaskSpec
from tlbench.suites.splitting import build_task
from tlbench.training.backbones import Backbone, build_backbone


def tiny_task() -> Task:
    """Digits, 3 classes, 4 shots per class, with a noisy shifted test split."""
    spec = TaskSpec(dataset="digits", classes=[0, 1, 7],
                    split=SplitSpec(seed=1, shots=4, val_per_class=4, test_fraction=0.3),
                    shift={"kind": "noise", "severity": 0.2})
    return build_task("tiny", spec, where="tlbench.testing")


def tiny_backbone(in_channels: int = 1) -> Backbone:
    """A 3-group CNN of width 4 (random weights, fixed seed)."""
    backbone = build_backbone("cnn2d", {"width": 4, "depth": 3, "in_channels": in_channels}, seed=3)
    backbone.weights_id = "tiny-test-backbone" if in_channels == 1 else f"tiny-test-backbone-{in_channels}ch"
    return backbone


def tiny_vit(in_channels: int = 1) -> Backbone:
    """A 2-block timm ViT of width 16 on 4-pixel patches (random weights, fixed seed; any image size):
    the tiny backbone of strategies that need a token sequence. Needs timm."""
    args = {"model": "vit_tiny_patch16_224", "in_chans": in_channels,
            "model_args": {"img_size": 8, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 2,
                           "dynamic_img_size": True}}
    backbone = build_backbone("timm", args, seed=3)
    backbone.weights_id = f"tiny-test-vit-{in_channels}ch"
    return backbone


@functools.lru_cache(maxsize=1)
def _image_folder() -> Path:
    """3 classes × 8 RGB PNG files of 12 × 12 pixels (brightness encodes the class), written once per
    process to a temporary folder, removed when the process exits."""
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="tlbench-check-images-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rng = np.random.default_rng(0)
    for c, name in enumerate(("a", "b", "c")):
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            pixels = np.clip(50 + 70 * c + rng.integers(-30, 30, (12, 12, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.png")
    return root


def tiny_image_task() -> Task:
    """A task of image files (an image folder: 3 classes, 2 shots), read lazily and preprocessed to
    12 × 12 RGB, as real-data suites read theirs."""
    spec = TaskSpec(dataset="image_folder", args={"path": "images"},
                    split=SplitSpec(seed=1, shots=2, val_per_class=2, test_fraction=0.3))
    task = build_task("tiny-images", spec, where="tlbench.testing", data=DataAccess(_image_folder()))
    return task.bound(Preprocess(12, 12))


def sample_params(strategy: Strategy, backbone: Backbone, seed: int = 0) -> dict[str, Any]:
    """One configuration drawn at random (seeded) from a strategy's search space."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return strategy.search_space(study.ask(), backbone)


class TinyCell(CellRecipes):
    """The recipes of a cell outside a suite: strategies by name with the given settings,
    configurations from ``params`` or drawn at random, evaluation seeds as a suite's."""

    def __init__(self, task: Task, backbone: Backbone, *, make: Callable[[str], Strategy],
                 params: dict[str, dict[str, Any]] | None = None, reuse: Reuse = Reuse(),
                 task_for: Callable[[str], Task] | None = None, seeds: int = 0) -> None:
        self.cell, self.context, self.backbone_name = ("test", "tiny", "tiny-backbone"), "test", "tiny-backbone"
        self.reuse, self._seeds = reuse, seeds
        self._task, self._backbone, self._make, self._params = task, backbone, make, params or {}
        self._task_for = task_for

    def strategy(self, name: str) -> Strategy:
        return self._make(name)

    def params(self, name: str) -> dict[str, Any]:
        return self._params.get(name) or sample_params(self.strategy(name), self._backbone)

    def seed(self, index: int) -> int:
        return evaluation_seed(0, index)

    def seeds(self) -> int:
        return self._seeds

    def task(self, backbone: str) -> Task:
        if self._task_for is None or backbone == self.backbone_name:
            return self._task
        return self._task_for(backbone)


def model_server(task: Task, backbone: Backbone, *, make: Callable[[str], Strategy] | None = None,
                 params: dict[str, dict[str, Any]] | None = None, reuse: Reuse = Reuse(),
                 backbones: dict[str, Backbone] | None = None, task_for: Callable[[str], Task] | None = None,
                 root: Any = None, seeds: int = 0) -> Members:
    """A cell's model server outside a suite, for strategies that reuse others' models
    (``seeds``: the cell's evaluation seeds, for models trained beyond them in blocks)."""
    make = make or (lambda name: STRATEGIES.get(name)(epochs=(2, 3), batch_size=8))
    recipes = TinyCell(task, backbone, make=make, params=params, reuse=reuse, task_for=task_for, seeds=seeds)
    return Members(recipes, ArtifactStore(root), backbones or {"tiny-backbone": backbone})
