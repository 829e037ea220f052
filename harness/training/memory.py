"""Peak memory of one run: CUDA's allocator peak, or the process's resident set sampled."""

from __future__ import annotations

import os
import resource
import sys
import threading
from pathlib import Path
from types import TracebackType

import torch

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


def rss_mb() -> float | None:
    """Current resident set size in MiB (Linux /proc), or None where unavailable."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        return None


class PeakMemory:
    """Context manager measuring the peak memory of the block it wraps.

    On CUDA: ``torch.cuda.max_memory_allocated`` after a reset (kind ``cuda_max_allocated``).
    On CPU: the resident set size sampled every ``interval_s`` by a thread (kind
    ``process_rss``); ``growth_mb`` is the peak minus the size at entry, the block's own
    footprint as far as the allocator did not reuse memory it already held.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.growth_mb = 0.0
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "process_rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start_mb = 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start_mb = torch.cuda.memory_allocated(self.device) / 2**20
            return self
        start = rss_mb()
        if start is None:
            self.kind = "process_peak_rss_lifetime"
            return self
        self._start_mb = self.peak_mb = start
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = rss_mb()
            if now is not None and now > self.peak_mb:
                self.peak_mb = now

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_mb = max(self.peak_mb, rss_mb() or 0.0)
        else:  # no /proc: the process's lifetime peak (bytes on macOS, KiB on Linux)
            scale = 2**20 if sys.platform == "darwin" else 2**10
            self.peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
        self.growth_mb = max(0.0, self.peak_mb - self._start_mb)
