"""The journal store's write lock: one writer at a time, and no lock that outlives its holder.

Optuna's journal lock is a symbolic link ``<journal>.lock`` pointing to the journal *as the
opening process named it*; a waiter judges it stale by the modification time of what it points
to. Named relatively (``runs/x/store.journal``, as every example in the docs and the default ``--out``
do), the link resolves from its own folder to a file that does not exist: the staleness test never
fires, and a lock left by a worker killed while appending hangs every later worker, each spinning
on a core.

:class:`JournalLock` is two locks, taken in this order:

1. **An operating-system lock** (``flock``) on ``<journal>.lock.owner``. The kernel releases it the
   moment its holder dies, on any path that names the file; on NFS the server releases it when
   the client's lease lapses (NFSv4; about 90 s). It serialises tlbench's processes without any
   judgement of staleness.
2. **Optuna's link**, under it, so that Optuna's own writers (optuna-dashboard, a user's script)
   still exclude tlbench and are excluded by it. Its target is the journal's own file name, which
   resolves from the link's folder however the store was named.

While it holds the link, the holder's record (worker, and the link's identity) sits in the owner
file; releasing clears it. So a holder of the operating-system lock that finds the record filled
knows its writer died holding the link, and removes that link at once (one line says so). A link
the record does not explain was made by a process that is not a tlbench worker: it is waited for,
and removed after ``grace_s`` seconds unchanged, as Optuna would. Where the filesystem refuses
``flock``, only the link is used, and a stale one is removed after the grace period.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from tlbench.core.processes import worker_id

#: Seconds a link that no tlbench worker's record explains may stay unchanged before it is removed
#: (Optuna's own default). ``$TLBENCH_JOURNAL_LOCK_GRACE`` overrides it.
GRACE_S = 30.0
#: Seconds between lines while a worker waits for another's lock.
SAY_EVERY_S = 30.0
#: The owner record's fixed size: every record is padded to it, so a shorter one overwrites a longer.
RECORD_BYTES = 512
#: flock's answers on a filesystem that has no such locks (some network and FUSE filesystems).
NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)

_THREADS: dict[str, threading.Lock] = {}  # per lock link: a process's threads take turns
_THREADS_GUARD = threading.Lock()


def grace_seconds() -> float:
    text = os.environ.get("TLBENCH_JOURNAL_LOCK_GRACE")
    try:
        return max(0.0, float(text)) if text else GRACE_S
    except ValueError:
        return GRACE_S


def _thread_lock(key: str) -> threading.Lock:
    with _THREADS_GUARD:
        return _THREADS.setdefault(key, threading.Lock())


def _stderr(line: str) -> None:
    print(f"tlbench: warning: {line}", file=sys.stderr, flush=True)


class JournalLock:
    """The write lock of the journal ``journal`` (see the module's docstring); ``say`` hears one
    line per lock removed and per long wait (default: standard error)."""

    def __init__(self, journal: Path, *, grace_s: float | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.journal = Path(os.path.realpath(journal))  # beside the real file, however it is reached
        self.shown = str(journal)  # as the user named it, in messages
        self.link = self.journal.with_name(self.journal.name + ".lock")
        self.owner = self.journal.with_name(self.journal.name + ".lock.owner")
        self.grace_s = grace_seconds() if grace_s is None else grace_s
        self.say = say
        self._fd: int | None = None
        self._mine: tuple[int, int] | None = None
        self._no_flock_said = False

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_fd=None, _mine=None, say=None)  # a copy in another process holds nothing
        return state

    # ------------------------------------------------------------------ Optuna's lock protocol (acquire, release)

    def acquire(self) -> bool:
        threads = _thread_lock(str(self.link))
        threads.acquire()
        try:
            fd = self._lock_owner_file()
            try:
                self._take_link(fd)
            except BaseException:
                if fd is not None:
                    os.close(fd)  # closing releases the flock
                raise
            self._fd = fd
        except BaseException:
            threads.release()
            raise
        return True

    def release(self) -> None:
        try:
            self._drop_link()
        finally:
            fd, self._fd, self._mine = self._fd, None, None
            try:
                if fd is not None:
                    try:
                        os.ftruncate(fd, 0)  # no holder: a later holder finds no record
                    finally:
                        os.close(fd)  # which releases the flock
            finally:
                _thread_lock(str(self.link)).release()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self.acquire()
        try:
            yield
        finally:
            self.release()

    # ------------------------------------------------------------------ the two locks

    def _lock_owner_file(self) -> int | None:
        """The owner file, open and locked (``flock``); None where the filesystem has no flock."""
        fd = os.open(self.owner, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._wait_for_owner(fd)
        except OSError as err:
            os.close(fd)
            if err.errno not in NO_FLOCK:
                raise
            if not self._no_flock_said:
                self._no_flock_said = True
                self._tell(f"storage {self.shown}: the filesystem has no flock; a lock left by a killed worker "
                           f"is removed after {self.grace_s:g} s instead of at once")
            return None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _wait_for_owner(self, fd: int) -> None:
        """Blocks until the holder releases the lock or dies (the kernel then releases it), saying
        every SAY_EVERY_S seconds whom it waits for."""
        started = time.monotonic()
        stop = threading.Event()

        def report() -> None:
            while not stop.wait(SAY_EVERY_S):
                record = read_record(self.owner)
                who = record.get("worker", "a worker") if record else "a worker"
                self._tell(f"storage {self.shown}: waiting {time.monotonic() - started:.0f} s for the journal "
                           f"lock held by {who}")

        reporter = threading.Thread(target=report, daemon=True, name="tlbench-journal-lock")
        reporter.start()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        finally:
            stop.set()

    def _take_link(self, fd: int | None) -> None:
        """Creates Optuna's link: at once when it is free; after removing it when the owner
        record says a dead tlbench worker left it; else after it has stayed unchanged for the
        grace period (another program's lock, or one whose holder died without a record)."""
        record = _parse(os.pread(fd, RECORD_BYTES, 0)) if fd is not None else None
        seen: tuple[int, int] | None = None
        since = time.monotonic()
        pause = 0.001
        while True:
            # "linking" covers the instant between making the link and recording which it is: a holder
            # killed there leaves a link the next one may remove at once.
            self._write_record(fd, "linking")
            try:
                os.symlink(self.journal.name, self.link)
                break
            except FileExistsError:
                self._write_record(fd, "waiting")
            identity = link_identity(self.link)
            if identity is None:
                continue  # released meanwhile
            if record is not None and _left_by(record, identity):
                self._remove(identity, f"removed the journal lock {self.link.name} left by worker "
                                       f"{record.get('worker')}, which stopped while holding it")
                record = None
                continue
            if identity != seen:
                seen, since, pause = identity, time.monotonic(), 0.001
            elif time.monotonic() - since > self.grace_s:
                self._remove(identity, f"removed the journal lock {self.link.name}, unchanged for "
                                       f"{self.grace_s:g} s (no tlbench worker of this store holds it)")
                continue
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        self._mine = link_identity(self.link)
        self._write_record(fd, "held", link=self._mine)

    def _drop_link(self) -> None:
        if self._mine is None:
            return
        if link_identity(self.link) == self._mine:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        else:  # only a program that is not a tlbench worker takes a lock it does not hold, after the grace
            self._tell(f"storage {self.shown}: this worker's journal lock was removed while it held it "
                       f"(held more than {self.grace_s:g} s)")

    def _remove(self, identity: tuple[int, int], line: str) -> None:
        if link_identity(self.link) == identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
            self._tell(f"storage {self.shown}: {line}")

    def _write_record(self, fd: int | None, phase: str, link: tuple[int, int] | None = None) -> None:
        """This holder's record in the owner file: ``linking`` (about to make the link), ``waiting``
        (another program's link is there) or ``held`` (with the link's identity)."""
        if fd is None:
            return
        record: dict[str, Any] = {"worker": worker_id(), "phase": phase}
        if link is not None:
            record["link"] = list(link)
        os.pwrite(fd, json.dumps(record).encode()[:RECORD_BYTES].ljust(RECORD_BYTES), 0)

    def _tell(self, line: str) -> None:
        (self.say or _stderr)(line)


def link_identity(link: Path) -> tuple[int, int] | None:
    """What tells one link from the next at the same path: inode and change time."""
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


def _left_by(record: dict[str, Any], identity: tuple[int, int]) -> bool:
    """Whether a link is the one a dead holder's record names: the link it made, or any link while
    it was making one (it died between making the link and recording it)."""
    if record.get("phase") == "linking":
        return True
    return record.get("phase") == "held" and tuple(record.get("link") or ()) == identity


def _parse(data: bytes) -> dict[str, Any] | None:
    text = data.strip(b" \x00\n")
    if not text:
        return None
    try:
        record = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def read_record(owner: Path) -> dict[str, Any] | None:
    """The owner record of a journal lock (``<journal>.lock.owner``): who holds the link, or None."""
    try:
        with open(owner, "rb") as f:
            return _parse(f.read(RECORD_BYTES))
    except OSError:
        return None
