"""Shared fixtures: a tiny backbone and task, a private cache directory per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


CACHE = pytest.StashKey[str]()
MAX_WORKERS = 8  # ``-n auto``'s ceiling: each worker holds torch and its own private stores


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pyproject's addopts): one worker per core this process may run on, at most
    MAX_WORKERS; ``PYTEST_XDIST_AUTO_NUM_WORKERS`` overrides it, ``-n 0`` runs in one process."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_WORKERS))


def pytest_configure(config: pytest.Config) -> None:
    # Never read or write the user's real cache from tests.
    os.environ["TLBENCH_CACHE"] = config.stash[CACHE] = tempfile.mkdtemp(prefix="tlbench-test-cache-")
    # Under pytest-xdist the workers share the cores: each worker, and each tlbench process a test
    # starts (they inherit OMP_NUM_THREADS), trains on its share of them, at most 2 threads as before.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads = max(1, min(2, torch.get_num_threads() // workers))
    if workers > 1:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The files holding end-to-end runs (a test marked ``slow``) first, the rest in their order:
    pytest-xdist hands whole files out in this order (``--dist loadfile --no-loadscope-reorder``),
    so the short files fill the workers' last minutes instead of one long file running alone."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file's order is kept


def pytest_unconfigure(config: pytest.Config) -> None:
    if CACHE in config.stash:  # the session's private cache is not left in /tmp
        shutil.rmtree(config.stash[CACHE], ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the whole session (starting one takes about 2 s); a skip
    without the server binaries, a failure under CI. Tests take a database each: ``postgres_url``."""
    from postgres import private_postgres, require_bindir

    with private_postgres(require_bindir()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres) -> str:
    """A fresh, empty database on the session's server, as a SQLAlchemy URL."""
    return postgres.new_database()


@pytest.fixture
def tiny_task():
    """Digits, 3 classes, 4 shots: a task that trains in milliseconds."""
    from tlbench.suites.schema import SplitSpec, TaskSpec
    from tlbench.suites.splitting import build_task

    spec = TaskSpec(dataset="digits", classes=[0, 1, 7],
                    split=SplitSpec(seed=1, shots=4, val_per_class=4, test_fraction=0.3),
                    shift={"kind": "noise", "severity": 0.2})
    return build_task("tiny", spec, where="test")


@pytest.fixture
def tiny_backbone():
    from tlbench.training.backbones import build_backbone

    backbone = build_backbone("cnn2d", {"width": 4, "depth": 3}, seed=3)
    backbone.weights_id = "tiny-test-backbone"
    return backbone


@pytest.fixture
def runtime(tmp_path):
    from tlbench.training.context import Runtime
    from tlbench.training.features import FeatureCache

    return Runtime(torch.device("cpu"), FeatureCache(tmp_path / "features"))


@pytest.fixture
def smoke_suite() -> Path:
    return ROOT / "suites" / "smoke.yaml"


@pytest.fixture
def cell_runtime(runtime, tiny_task, tiny_backbone):
    """``runtime`` with a model server for the tiny task, so strategies that reuse other
    strategies' models (distillation, ensemble) can run."""
    import dataclasses

    from helpers import make_members

    return dataclasses.replace(runtime, members=make_members(
        tiny_task, tiny_backbone, keep_weights=frozenset({"full_finetune"})))


@pytest.fixture
def registries():
    """Plugins loaded in-process (a test's ``tlbench check`` of a file, a guide's example) are forgotten after
    the test, so a later test's registries are the built-ins only."""
    import sys

    from tlbench.core.registry import _PLUGIN_SOURCES
    from tlbench.run import plugins
    from tlbench.selection.scorers import SCORERS
    from tlbench.strategies import STRATEGIES
    from tlbench.suites.datasets import DATASETS
    from tlbench.training.backbones import BACKBONES

    saved = [(r, dict(r._entries), dict(r._origins)) for r in (STRATEGIES, BACKBONES, DATASETS, SCORERS)]
    sources = dict(_PLUGIN_SOURCES)
    loaded = plugins._LOADED_ENTRY_POINTS
    path = list(sys.path)  # plugin folders join the import path
    yield
    sys.path[:] = path
    for registry, entries, origins in saved:
        registry._entries, registry._origins = entries, origins
    _PLUGIN_SOURCES.clear()
    _PLUGIN_SOURCES.update(sources)
    plugins._LOADED_ENTRY_POINTS = loaded
