"""Benchmarks run outside the default test run: ``pytest benchmarks``."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

# The tests' helpers that benchmarks share (``postgres``: a private PostgreSQL server), without a copy.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def pytest_configure(config) -> None:
    os.environ.setdefault("TLBENCH_CACHE", tempfile.mkdtemp(prefix="tlbench-bench-cache-"))
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def postgres():
    """A private PostgreSQL server for the benchmark session (see tests/postgres.py)."""
    from postgres import private_postgres, require_bindir

    with private_postgres(require_bindir()) as server:
        yield server
