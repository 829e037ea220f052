"""Opening a store: one Optuna storage URL holds every tuning trial and evaluation run.

A journal file (``journal:PATH``, an existing journal file or a ``*.journal`` / ``*.log`` path; the
default, in a run's ``--out``; :mod:`tlbench.store.journal`) or any database URL Optuna accepts
(``sqlite:///…``, ``postgresql+psycopg2://…``). Anything else is refused in one line: a typo
used to start a fresh store in a new file.

A database is opened by many workers at once, often on an empty database, and over networks
that drop connections: the opening retries what another worker or the network caused (the
schema-creation race, a refused or lost connection) and fails at once, in one line, on what
retrying cannot fix (a malformed URL, an unknown driver, a wrong password). Opened for reading
(:func:`open_existing_storage`) it creates nothing. No message shows a URL's password.
"""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import BaseStorage

from tlbench.core.errors import ConfigError
from tlbench.store.journal import CheckedJournal

# Optuna's heartbeat for database stores, when the caller gives none: a worker records one every
# HEARTBEAT_S seconds, and its RUNNING trial is stale after GRACE_FACTOR missed intervals.
HEARTBEAT_S = 10


GRACE_FACTOR = 4


CONNECT_TIMEOUT_S = 10  # libpq waits forever for a host that drops packets, by default


_ALLOWED = ("allowed: journal:PATH, an existing journal file, a *.journal path, or a database URL (sqlite:///…, "
            "postgresql+psycopg2://…)")


@dataclass(frozen=True)
class Retry:
    """How often, and how patiently, opening a database retries a transient failure: waits
    double from ``first_wait`` up to ``max_wait``, each scaled by a random 0.5–1.5 so workers
    that collided do not collide again. The defaults wait about 8 s in all."""

    attempts: int = 6
    first_wait: float = 0.25
    max_wait: float = 4.0

    def waits(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            yield min(self.max_wait, self.first_wait * 2 ** attempt) * random.uniform(0.5, 1.5)


#: Names a bare ``--storage`` path may end in to be taken as a (new) journal file.
JOURNAL_SUFFIXES = (".journal", ".log")


#: What ``--storage`` accepts, for the error that refuses anything else.
STORAGE_FORMS = ("journal:PATH, an existing journal file, a path ending in .journal or .log, or a database URL "
                 "such as sqlite:///file.db or postgresql+psycopg2://user@host/db")


def open_storage(url: str | None, out: Path, *, heartbeat: float | None = None, grace: float | None = None,
                 log: Callable[[str], None] | None = None, retry: Retry = Retry(),
                 notify: Callable[[str], None] | None = None, read_only: bool = False) -> BaseStorage:
    """``None`` → a journal file in ``out``; ``journal:PATH``, an existing file or a ``*.journal``
    path → a journal file; anything with ``://`` is passed to Optuna as a database URL (sqlite://,
    postgresql+psycopg2://). ``notify`` hears, in one line each, what was repaired in a journal
    (a cut-off last line moved aside), now or when this process appends to it.

    A database store has Optuna's heartbeat on, every ``heartbeat`` seconds (an integer ≥ 1;
    default HEARTBEAT_S): a trial whose worker stopped recording it is stale after ``grace``
    seconds (an integer ≥ 2; default GRACE_FACTOR intervals), as Optuna's stale-trial check reports.
    A journal has no heartbeat, and ignores both. ``log`` gets one line per retried failure.
    ``read_only`` (a database): refuse one without Optuna's tables rather than create them."""
    if url is None:
        return _journal(out / "store.journal", notify=notify)
    path = journal_path(url)
    if path is not None:
        return _journal(path, notify=notify)
    interval = int(max(1, heartbeat)) if heartbeat is not None else HEARTBEAT_S
    grace_s = int(max(2, grace)) if grace is not None else max(2, GRACE_FACTOR * interval)
    return _database(url, heartbeat=interval, grace=grace_s, log=log or (lambda line: None), retry=retry,
                     read_only=read_only)


def mask_url(url: str) -> str:
    """The URL with its password shown as ``***`` (``user:***@host``, ``password=***``), for
    any message that shows it; a malformed URL is masked too (whatever sits between the user
    name and the last ``@``)."""
    masked = _USERINFO.sub(r"\1:***@", url)
    return _QUERY_PASSWORD.sub(r"\1***", masked)


_USERINFO = re.compile(r"^([^:/?#]*://[^:@/]*):(.*)@")


_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&]*)", re.IGNORECASE)


def _hide(text: str, url: str) -> str:
    """A driver's message with the URL's password removed, wherever it repeats the URL."""
    userinfo = _USERINFO.match(url)
    secrets = ([userinfo.group(2)] if userinfo else []) + [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _database(url: str, *, heartbeat: int, grace: int, log: Callable[[str], None], retry: Retry,
              read_only: bool = False) -> BaseStorage:
    """Optuna's RDBStorage, opened with retries: the schema-creation race of workers starting on
    an empty database and connections that fail for a moment are retried with backoff; the
    rest, and what still fails after the last attempt, is one ConfigError naming the masked URL.
    ``read_only``: a database without Optuna's tables is refused instead of given them."""
    shown = mask_url(url)
    engine_kwargs = _engine_kwargs(url, shown)
    waits = retry.waits()
    started = time.monotonic()
    attempt = 1
    while True:
        try:
            if read_only and not _has_tables(url, engine_kwargs):
                raise ConfigError(f"--storage {shown}: the database holds no store (no Optuna tables); give the "
                                  f"store of a tlbench run (reading creates nothing)")
            with warnings.catch_warnings():  # heartbeat_interval is "experimental": a warning per worker
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                                                  grace_period=grace, skip_table_creation=read_only)
        except ConfigError:
            raise
        except Exception as err:  # noqa: BLE001 - drivers raise many types; sorted below
            kind, reason = _classify(err)
            reason = _hide(reason, url)
            if kind == "refused":
                raise ConfigError(f"--storage {shown}: the database refused the connection ({reason}); check the "
                                  f"user name, the password and the database name") from None
            if kind == "fatal":
                raise ConfigError(f"--storage {shown}: cannot open ({reason}); {_ALLOWED}") from None
            wait = next(waits, None)
            if wait is None:
                spent = time.monotonic() - started
                what = ("the schema, which other workers were creating at the same time" if kind == "race"
                        else "the database; check the host, the port and that the server runs")
                raise ConfigError(f"--storage {shown}: cannot open {what} ({attempt} attempts in {spent:.1f} s; "
                                  f"last: {reason})") from None
            cause = "another worker is creating the schema" if kind == "race" else reason
            log(f"storage {shown}: {cause}; retrying in {wait:.1f} s (attempt {attempt + 1} of {retry.attempts})")
            time.sleep(wait)
            attempt += 1


def _has_tables(url: str, engine_kwargs: dict) -> bool:
    """Whether the database holds Optuna's tables (its studies table), asked without creating anything."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


def _engine_kwargs(url: str, shown: str) -> dict:
    """SQLAlchemy engine options: ``pool_pre_ping`` tests a pooled connection before each use
    and replaces it if the server or the network dropped it (a restart, an idle timeout), where a
    worker would otherwise fail its next write; psycopg2 also gets a connect timeout. The URL is
    parsed here so a malformed one or an unknown driver is one line before anything connects."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (ArgumentError, ValueError) as err:
        why = "unknown database driver" if "plugin" in str(err) else "malformed URL"
        raise ConfigError(f"--storage {shown}: {why} ({_hide(_first_line(err), url)}); {_ALLOWED}") from None
    kwargs: dict = {"pool_pre_ping": True}
    if getattr(dialect, "driver", None) == "psycopg2" and "connect_timeout" not in parsed.query:
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
    return kwargs


# An OperationalError that retrying cannot fix: the server answered and said no.
_REFUSED = ("authentication failed", "no password supplied", "no pg_hba.conf entry", "does not exist",
            "access denied", "unknown database", "permission denied")


# A ProgrammingError or IntegrityError of two workers creating the same schema at once.
_RACE = ("already exists", "duplicate", "unique constraint")


def _classify(err: BaseException) -> tuple[str, str]:
    """("race" | "transient" | "refused" | "fatal", a one-line reason). Optuna wraps some SQLAlchemy errors
    (StorageInternalError, ImportError), so the cause chain is searched for the database's own."""
    import sqlalchemy.exc as sa

    found: BaseException = err
    for link in _chain(err):
        if isinstance(link, sa.SQLAlchemyError):
            found = link
            break
    missing = [link for link in _chain(err) if isinstance(link, ImportError)]
    if missing:  # Optuna's ImportError, caused by the driver's ModuleNotFoundError
        return "fatal", (f"{_first_line(missing[-1])}: the database driver is not installed; "
                         f"for PostgreSQL: pip install 'tlbench[postgres]'")
    orig = getattr(found, "orig", None)  # the driver's exception, without SQLAlchemy's decorations
    reason = f"{type(orig or found).__name__}: {_first_line(orig or found)}"
    text = str(orig or found).lower()
    if isinstance(found, (sa.IntegrityError, sa.ProgrammingError)) and any(s in text for s in _RACE):
        return "race", reason
    if isinstance(found, sa.OperationalError):
        if "unable to open database file" in text:  # SQLite: a folder that is not there or not writable
            return "fatal", reason
        if "locked" not in text and any(s in text for s in _REFUSED):
            return "refused", reason
        return "transient", reason
    if isinstance(found, (sa.DisconnectionError, sa.TimeoutError)):
        return "transient", reason
    return "fatal", reason


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def open_existing_storage(url: str) -> BaseStorage:
    """Opens a store that must already exist (for reading): a journal file that is missing
    is an error here, not a new empty store."""
    path = journal_path(url)
    if path is not None and not path.is_file():
        raise ConfigError(f"--storage {url!r}: no such journal file; give the store of a tlbench run")
    if path is not None:
        return _journal(path, write=False)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"--storage {url!r}: no such SQLite database (reading must not create one)")
    return open_storage(url, Path("."), read_only=True)


def store_label(url: str | None, out: Path) -> str:
    """The store ``url`` names (``None``: ``out``'s journal) as one string that is the same however it is
    written: a journal file's real absolute path, or the database URL with its password masked."""
    path = out / "store.journal" if url is None else journal_path(url)
    return os.path.realpath(path) if path is not None else mask_url(url or "")


def journal_path(url: str) -> Path | None:
    """The journal file a storage argument names; None for a database URL. Anything else is
    refused: taking every string as a path made a typo (``--storage ::::``) start a fresh run
    in a new file."""
    if url.startswith("journal:"):
        if not url.removeprefix("journal:"):
            raise ConfigError(f"--storage {url!r}: journal: needs a file path; accepted: {STORAGE_FORMS}")
        return Path(url.removeprefix("journal:"))
    if "://" in url:
        return None
    path = Path(url)
    if url and (path.suffix in JOURNAL_SUFFIXES or path.is_file()):
        return path
    raise ConfigError(f"--storage {url!r}: not a store; accepted: {STORAGE_FORMS}")


def _journal(path: Path, *, notify: Callable[[str], None] | None = None, write: bool = True) -> BaseStorage:
    """A journal storage on ``path``, its lines checked as they are read (the first damaged one
    stops it). Opened for writing, a cut-off last line is then moved aside (``notify`` says so),
    under the lock Optuna's appends hold; reading skips such a line, as Optuna does."""
    from optuna.storages.journal import JournalStorage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = CheckedJournal(path, notify=notify)
    except OSError as err:
        raise ConfigError(f"storage {path}: cannot open the journal file ({err.strerror or err}); "
                          f"give a writable file path") from None
    try:
        storage = JournalStorage(backend)
        if write:
            backend.cut_torn_tail()
        return storage
    except ConfigError:
        raise
    except OSError as err:
        raise ConfigError(f"storage {path}: cannot {'repair' if write else 'read'} the journal file "
                          f"({err.strerror or err})") from None
    except Exception as err:  # noqa: BLE001 - a record Optuna cannot replay fails in many ways
        detail = (str(err).splitlines() or [""])[0][:200]
        raise ConfigError(backend.damaged(f"Optuna cannot replay it: {type(err).__name__}: {detail}")) from None
