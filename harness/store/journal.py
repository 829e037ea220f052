"""The journal file, made safe for many workers and crashes: every line is checked as it is read (a
damaged one stops with one line naming the file, the line and its byte offset), and a line cut
off at the end (a crash or a full disk mid-write) is moved aside before anything is appended to
it. Writes are made under :class:`tlbench.store.lock.JournalLock`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, BinaryIO

from optuna.storages.journal import BaseJournalBackend

from tlbench.core.errors import ConfigError
from tlbench.store.lock import JournalLock
from tlbench.store.optuna_internals import JOURNAL_OPS

#: How every journal line Optuna writes begins (up to the colon, after which older releases put a space).
_RECORD_START = b'{"op_code"'


class CheckedJournal(BaseJournalBackend):
    """Optuna's journal file format, read and written with two repairs of the failure modes of
    Optuna's own file backend.

    Reading checks every line: Optuna raises a bare JSON error one line late (a traceback, no line
    number) and skips a damaged last complete line, which the next append then buries. Appending
    first moves a cut-off last line aside (a writer that crashed or hit a full disk mid-line):
    Optuna would append to it and make the whole file unreadable. Every write is made under
    :class:`~tlbench.store.lock.JournalLock`, which Optuna's own writers respect too.
    """

    def __init__(self, path: Path, *, notify: Callable[[str], None] | None = None) -> None:
        self._lock_obj = JournalLock(path, say=notify)
        # Opened by its absolute path, so that the process may change folders; ``path`` as given names it in messages.
        self._file = str(self._lock_obj.journal)
        if not os.path.exists(self._file):
            open(self._file, "ab").close()
        self._offsets: dict[int, int] = {0: 0}  # line number → its byte offset, as far as read
        self.path = path
        self._notify = notify
        self._at: tuple[int, int] = (0, 0)  # (line number, byte offset) of the line being replayed

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_notify"] = None  # a copy in another process has no one to tell
        return state

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        """Optuna's reader (same offsets cache, same stop at bytes another writer is still
        writing), raising one line that names the file, line and byte offset of a bad line."""
        with open(self._file, "rb") as f:
            size = os.fstat(f.fileno()).st_size  # later appends are read next time
            number, offset = 0, 0
            if log_number_from in self._offsets:
                number, offset = log_number_from, self._offsets[log_number_from]
                f.seek(offset)
            for line in f:
                if offset + len(line) > size:
                    break
                if not line.endswith(b"\n"):  # a line being written now, or cut off
                    if not _record_start(line):
                        self._at = (number + 1, offset)
                        raise ConfigError(self.damaged("the last line is not a journal record and has no newline"))
                    break
                self._offsets.setdefault(number + 1, offset + len(line))
                if number >= log_number_from:
                    self._at = (number + 1, offset)
                    yield self._record(line)
                number, offset = number + 1, offset + len(line)

    def _record(self, line: bytes) -> dict[str, Any]:
        try:
            log = json.loads(line)
        except UnicodeDecodeError:
            raise ConfigError(self.damaged("not UTF-8 text")) from None
        except json.JSONDecodeError as err:
            raise ConfigError(self.damaged(f"not JSON: {err.msg} at column {err.colno}")) from None
        if not isinstance(log, dict) or type(log.get("op_code")) is not int or log["op_code"] not in JOURNAL_OPS:
            raise ConfigError(self.damaged("JSON, but not a journal operation: no known op_code"))
        return log

    def damaged(self, why: str) -> str:
        """The one line that stops at a bad line of the journal: where it is and what to do."""
        line, offset = self._at
        hint = ""
        try:
            with open(self._file, "rb") as f:
                if f.read(16).startswith(b"SQLite format 3"):
                    hint = f"; it is an SQLite database: give --storage sqlite:///{self.path}"
        except OSError:
            pass
        return (f"storage {self.path}: line {line} (byte {offset}) is damaged ({why}){hint}; nothing was changed: "
                f"restore the file from a copy, or cut that line out to keep the records around it")

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        """Optuna's append, after moving aside a cut-off last line another writer left."""
        with self._lock_obj.held():
            self._cut_torn_tail_locked()
            data = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file, "ab") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())

    def cut_torn_tail(self) -> None:
        """Moves a cut-off last line aside now (when a run opens the store), so the run says so
        before it starts. A complete last line needs no lock: appends only add whole lines after it."""
        with open(self._file, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 1))
            if size == 0 or f.read(1) == b"\n":
                return
        with self._lock_obj.held():
            self._cut_torn_tail_locked()

    def _cut_torn_tail_locked(self) -> None:
        """Under the append lock, bytes after the last newline are no line being written: a writer
        died or ran out of disk mid-line. They go to ``<journal>.torn-<UTC time>`` and the file is cut
        back to its last complete line; the record they began was never stored, so it is redone."""
        with open(self._file, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            good = _after_last_newline(f, size)
            if good == size:
                return
            f.seek(good)
            torn = f.read()
            if not _record_start(torn):
                f.seek(0)
                self._at = (sum(block.count(b"\n") for block in iter(lambda: f.read(1 << 20), b"")) + 1, good)
                raise ConfigError(self.damaged("the last line is not a journal record and has no newline"))
            aside = _write_aside(self.path, torn)  # before cutting: nothing is lost if this fails
            f.truncate(good)
            f.flush()
            os.fsync(f.fileno())
        if self._notify is not None:
            self._notify(f"storage {self.path}: the last line was cut off mid-write (a crash or a full disk): "
                         f"moved its {len(torn)} bytes (from byte {good}) to {aside.name}; the complete lines before "
                         f"it are kept and the cut record counts as never written")


def _record_start(data: bytes) -> bool:
    """Whether ``data`` is how a journal line begins (or a prefix of that): a cut-off record,
    as opposed to foreign bytes that must not be taken for one."""
    return _RECORD_START.startswith(data[: len(_RECORD_START)])


def _after_last_newline(f: BinaryIO, size: int, chunk: int = 1 << 16) -> int:
    """The offset just after the last ``\\n`` of the open file ``f`` (0 when it has none), read backwards."""
    end = size
    while end > 0:
        start = max(0, end - chunk)
        f.seek(start)
        found = f.read(end - start).rfind(b"\n")
        if found >= 0:
            return start + found + 1
        end = start
    return 0


def _write_aside(path: Path, data: bytes) -> Path:
    """Writes ``data`` to a new ``<path>.torn-<UTC time>[-n]`` beside ``path`` (never over another)."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in range(1000):
        aside = path.with_name(f"{path.name}.torn-{stamp}" + (f"-{n}" if n else ""))
        try:
            with open(aside, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            return aside
        except FileExistsError:
            continue
    raise OSError(f"no free name for {path.name}.torn-{stamp}")
