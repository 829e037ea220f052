"""Cache files written atomically and read without trusting them: feature caches, model
artifacts and pretrained checkpoints share these two helpers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import torch


@contextlib.contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write that replaces ``path`` when the block ends: a temporary file unique
    across processes, then an atomic rename, so a reader never sees half a file (on an error the
    temporary file is removed and ``path`` is left as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` through :func:`replacing`."""
    with replacing(path) as f:
        torch.save(obj, f)


def load_or_none(path: Path | None) -> Any:
    """What ``path`` holds (tensors only: ``weights_only``), or None when it is absent or
    unreadable: a torn or foreign cache file is recomputed, never trusted."""
    if path is None or not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - any unreadable file counts as absent
        return None


@contextlib.contextmanager
def building(path: Path) -> Iterator[None]:
    """Holds an exclusive lock on ``path``'s ``.lock`` file while a cache entry is built, so of
    several workers that miss the same entry at once one builds it and the others wait, then
    find it (each checks the cache again inside). The lock is the operating system's
    (``flock``): a killed builder releases it, and a stale lock file is harmless."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
