"""Cache files written atomically and read without trusting them: feature caches, model
artifacts and pretrained checkpoints share these two helpers."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file unique across processes, then an atomic rename:
    a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_or_none(path: Path | None) -> Any:
    """What ``path`` holds (tensors only: ``weights_only``), or None when it is absent or
    unreadable: a torn or foreign cache file is recomputed, never trusted."""
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file counts as absent
        return None
