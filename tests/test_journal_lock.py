"""The journal's write lock (tlbench.store.lock): a worker killed while it holds the lock, named
by a relative or an absolute path, never hangs the others; other programs' locks are still
respected; writers exclude one another across threads and processes, Optuna's own included."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tlbench.store.lock import JournalLock, read_record

#: A process that opens the store as ``tlbench run --storage`` does (the path as given, relative or not), takes
#: its write lock and keeps it until killed.
HOLDER = """\
import sys, time
from pathlib import Path
from tlbench.store.opening import open_storage
storage = open_storage(sys.argv[1], Path("."))
storage._backend._lock_obj.acquire()
print("held", flush=True)
time.sleep(600)
"""

#: ``n`` increments of a counter file, each read-modify-write under the journal's lock (ours, or Optuna's own
#: symlink lock with ``optuna`` as the second argument).
COUNTER = """\
import sys
from pathlib import Path
journal, kind, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if kind == "optuna":
    from optuna.storages.journal import JournalFileSymlinkLock
    lock = JournalFileSymlinkLock(str(journal))
else:
    from tlbench.store.lock import JournalLock
    lock = JournalLock(journal)
counter = journal.with_name("counter")
for _ in range(n):
    lock.acquire()
    try:
        value = int(counter.read_text() or 0)
        counter.write_text(str(value + 1))
    finally:
        lock.release()
"""


def hold_and_kill(where: Path, storage: str) -> None:
    """Starts a holder of ``storage``'s lock in ``where`` and kills it with SIGKILL once it holds it."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, storage], cwd=where, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def acquire_within(lock: JournalLock, seconds: float) -> bool:
    """Whether ``lock`` is acquired within ``seconds`` (in a thread, so a hang fails instead of hanging the
    tests); if it is, it is released again."""
    got = threading.Event()

    def take() -> None:
        lock.acquire()
        lock.release()
        got.set()

    threading.Thread(target=take, daemon=True).start()
    return got.wait(seconds)


@pytest.mark.parametrize("relative", [True, False])
def test_a_worker_killed_while_holding_the_lock_leaves_none_behind(tmp_path, monkeypatch, relative) -> None:
    """The hang of Optuna's lock named relatively: the next writer finds the dead worker's link and
    record, and removes the link at once (the grace period here is an hour), saying so."""
    monkeypatch.chdir(tmp_path)
    journal = Path("runs/x/store.journal") if relative else tmp_path / "runs/x/store.journal"
    hold_and_kill(tmp_path, str(journal))
    assert os.path.islink(tmp_path / "runs/x/store.journal.lock")  # left behind by the killed worker
    assert os.readlink(tmp_path / "runs/x/store.journal.lock") == "store.journal"  # resolves from its folder
    lines: list[str] = []
    assert acquire_within(JournalLock(journal, grace_s=3600, say=lines.append), 30)
    assert len(lines) == 1 and "left by worker" in lines[0] and "stopped while holding it" in lines[0], lines
    assert not os.path.lexists(tmp_path / "runs/x/store.journal.lock")
    assert read_record(tmp_path / "runs/x/store.journal.lock.owner") is None  # released: no holder recorded


def test_a_run_on_a_relative_store_finishes_after_a_worker_died_holding_its_lock(tmp_path) -> None:
    """As the operator hit it: `tlbench run --storage runs/x/store.journal` after a worker on that store was
    killed while it appended. Optuna's lock made every later worker wait forever (spinning on a core)."""
    from test_launch import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    hold_and_kill(tmp_path, "runs/x/store.journal")
    env = {**os.environ, "TLBENCH_JOURNAL_LOCK_GRACE": "3600"}  # only the dead worker's record can free it
    done = subprocess.run([sys.executable, "-m", "tlbench.cli", "run", "tiny.yaml", "--storage", "runs/x/store.journal",
                           "--out", "runs/x", "--report", "none"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "removed the journal lock store.journal.lock left by worker" in done.stderr
    assert "all 2 cells of this run done in the store" in done.stderr


def test_another_programs_lock_is_waited_for_then_removed_after_the_grace_period(tmp_path) -> None:
    """A link no tlbench worker's record explains (Optuna's own writer, or a previous release's worker, with
    the path it was given): respected while it changes hands, removed once unchanged for the grace period."""
    journal = tmp_path / "store.journal"
    journal.touch()
    os.symlink("runs/elsewhere/store.journal", tmp_path / "store.journal.lock")  # dangling, as Optuna's was
    lines: list[str] = []
    lock = JournalLock(journal, grace_s=1.0, say=lines.append)
    started = time.monotonic()
    lock.acquire()
    waited = time.monotonic() - started
    lock.release()
    assert waited >= 1.0
    assert len(lines) == 1 and "unchanged for 1 s (no tlbench worker of this store holds it)" in lines[0], lines
    # a live foreign holder: not taken while the grace period has not passed
    os.symlink("store.journal", tmp_path / "store.journal.lock")
    patient = JournalLock(journal, grace_s=3600)
    assert not acquire_within(patient, 0.5)
    os.unlink(tmp_path / "store.journal.lock")  # the other program releases it
    time.sleep(0.3)  # the waiting thread takes it now
    assert not os.path.lexists(tmp_path / "store.journal.lock")


@pytest.mark.slow
def test_writers_exclude_one_another_across_processes_and_optunas_own_lock(tmp_path) -> None:
    """Three processes (two with tlbench's lock, one with Optuna's symlink lock) each add 1 to a
    shared counter 150 times under the lock: no increment is lost."""
    journal = tmp_path / "store.journal"
    journal.touch()
    (tmp_path / "counter").write_text("0")
    procs = [subprocess.Popen([sys.executable, "-c", COUNTER, str(journal), kind, "150"], cwd=tmp_path)
             for kind in ("tlbench", "tlbench", "optuna")]
    for proc in procs:
        assert proc.wait(timeout=300) == 0
    assert int((tmp_path / "counter").read_text()) == 450


def test_threads_of_one_process_take_turns(tmp_path) -> None:
    """Two lock objects on one journal in one process (a status reader beside a run, say) exclude each
    other too: the operating-system lock alone would not (on NFS it is per process)."""
    journal = tmp_path / "store.journal"
    journal.touch()
    counter = tmp_path / "counter"
    counter.write_text("0")

    def work() -> None:
        lock = JournalLock(journal)
        for _ in range(200):
            lock.acquire()
            try:
                value = int(counter.read_text())
                time.sleep(0)
                counter.write_text(str(value + 1))
            finally:
                lock.release()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert int(counter.read_text()) == 600


def test_without_flock_a_dead_holders_lock_is_removed_after_the_grace_period(tmp_path, monkeypatch) -> None:
    """A filesystem that refuses flock (some network and FUSE filesystems): the link alone, and one line
    saying that a killed worker's lock now costs the grace period."""
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    journal = tmp_path / "store.journal"
    journal.touch()
    os.symlink("store.journal", tmp_path / "store.journal.lock")  # left by a killed worker
    monkeypatch.setattr(fcntl, "flock", no_flock)
    lines: list[str] = []
    lock = JournalLock(journal, grace_s=0.5, say=lines.append)
    assert acquire_within(lock, 30)
    assert "has no flock" in lines[0] and "unchanged for 0.5 s" in lines[1], lines
    assert acquire_within(lock, 5) and len(lines) == 2  # said once


def test_a_copy_in_another_process_holds_nothing(tmp_path) -> None:
    import pickle

    lock = JournalLock(tmp_path / "store.journal", say=print)
    lock.acquire()
    try:
        copy = pickle.loads(pickle.dumps(lock))
        assert copy._fd is None and copy._mine is None and copy.say is None
        assert copy.link == lock.link
    finally:
        lock.release()
