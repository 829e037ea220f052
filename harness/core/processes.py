"""Who this process is, and whether another still runs: the stamp a worker leaves on what it holds
(claims in the store, the journal's lock) and the test of whether that worker is alive."""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from pathlib import Path


def core_count() -> int:
    """How many cores this process may run on (a cgroup or taskset may allow fewer than the machine has)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def proc_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, from /proc); None without /proc or
    when no such process runs."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time since boot


def host_name() -> str:
    """The host a worker stamps its trials with: ``$TLBENCH_HOST`` when set (containers that share
    a host name but not a process table must each set their own; tests forge another host this
    way), else the machine's name."""
    return os.environ.get("TLBENCH_HOST") or socket.gethostname()


@functools.lru_cache(maxsize=1)
def worker_id() -> str:
    """host:pid:start-time of this process; unique even when a pid is reused."""
    pid = os.getpid()
    return f"{host_name()}:{pid}:{proc_start(pid) or dt.datetime.now().timestamp()}"


def worker_alive(worker: str) -> bool:
    """Whether the process that left the stamp ``worker`` still runs. Workers on other hosts cannot
    be checked here and count as alive (a database store's heartbeat covers them); without /proc
    only the pid is checked."""
    try:
        host, pid_text, start = worker.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return True  # not a stamp of ours: leave it alone
    if host != host_name():
        return True
    if proc_start(os.getpid()) is None:  # no /proc (macOS): is the pid in use at all?
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return proc_start(pid) == start
