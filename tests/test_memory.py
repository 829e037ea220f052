from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tlbench.training.memory import rss_mb

# In a fresh interpreter: in the test process, memory freed by earlier tests (a ViT, say) is
# reused by the allocator and the RSS would not grow — the known limit of CPU growth figures.
PROBE = """
import json, torch
from tlbench.training.memory import PeakMemory
with PeakMemory(torch.device("cpu"), interval_s=0.001) as mem:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    for _ in range(20):
        block.add_(1)
    del block
print(json.dumps({"kind": mem.kind, "growth": mem.growth_mb, "peak": mem.peak_mb}))
"""


def test_peak_memory_sees_a_temporary_allocation() -> None:
    if rss_mb() is None:
        pytest.skip("no /proc here: only the process's lifetime peak is available")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120)
    mem = json.loads(out.stdout.strip().splitlines()[-1])
    assert mem["kind"] == "process_rss"
    assert mem["growth"] > 40
    assert mem["peak"] >= mem["growth"]
