"""Benchmarks run outside the default test run: ``pytest benchmarks``."""

from __future__ import annotations

import os
import tempfile

import torch


def pytest_configure(config) -> None:
    os.environ.setdefault("TLBENCH_CACHE", tempfile.mkdtemp(prefix="tlbench-bench-cache-"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
