"""Opening a store: one Optuna storage URL holds every tuning trial and evaluation run.

A journal file (a path, or ``journal:PATH``; the default, in a run's ``--out``) or any
database URL Optuna accepts (``sqlite:///…``, ``postgresql+psycopg2://…``).
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from tlbench.errors import ConfigError


def open_storage(url: str | None, out: Path) -> BaseStorage:
    """``None`` → a journal file in ``out``; a path or ``journal:PATH`` → a journal file;
    anything else is passed to Optuna as a database URL (sqlite://, postgresql+psycopg2://)."""
    if url is None:
        return _journal(out / "store.journal")
    path = _journal_path(url)
    if path is not None:
        return _journal(path)
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as err:  # noqa: BLE001 - bad URLs raise many types
        raise ConfigError(f"--storage {url!r}: cannot open ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); allowed: a journal file "
                          f"path, journal:PATH, or a database URL") from None


def open_existing_storage(url: str) -> BaseStorage:
    """Opens a store that must already exist (for reading): a journal file that is missing
    is an error here, not a new empty store."""
    path = _journal_path(url)
    if path is not None and not path.is_file():
        raise ConfigError(f"--storage {url!r}: no such journal file; give the store of a tlbench run")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--storage {url!r}: no such SQLite database (reading must not create one)")
    return open_storage(url, Path("."))


def _journal_path(url: str) -> Path | None:
    """The journal file a storage argument names (a path or ``journal:PATH``); None for a
    database URL."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    return None if "://" in url else Path(url)


def _journal(path: Path) -> BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise ConfigError(f"storage {path}: cannot open the journal file ({err.strerror or err}); "
                          f"give a writable file path") from None
