"""Where tlbench keeps what it caches and where datasets live, by default."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$TLBENCH_CACHE``, else ``tlbench`` in the user's cache directory."""
    env = os.environ.get("TLBENCH_CACHE")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tlbench"


def default_data_root(cache_dir: Path | None = None) -> Path:
    """``$TLBENCH_DATA``, else ``data`` in the cache directory (``--cache-dir``, else
    :func:`default_cache_dir`)."""
    if os.environ.get("TLBENCH_DATA"):
        return Path(os.environ["TLBENCH_DATA"]).expanduser()
    return (cache_dir or default_cache_dir()) / "data"
