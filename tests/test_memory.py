from __future__ import annotations

import pytest
import torch

from harness.memory import PeakMemory, rss_mb


def test_peak_memory_sees_a_temporary_allocation() -> None:
    if rss_mb() is None:
        pytest.skip("no /proc here: only the process's lifetime peak is available")
    with PeakMemory(torch.device("cpu"), interval_s=0.001) as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        for _ in range(20):
            block.add_(1)
        del block
    assert mem.kind == "process_rss"
    assert mem.growth_mb > 40
    assert mem.peak_mb >= mem.growth_mb
