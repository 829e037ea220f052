"""A private PostgreSQL server for tests and benchmarks: its own cluster in a temporary folder,
on a free port of 127.0.0.1, trust authentication, gone when the context exits.

Tests import it as ``postgres`` (pytest puts ``tests/`` on the import path); benchmarks through
the same folder, which ``benchmarks/conftest.py`` adds. It needs only the server binaries
(``initdb``, ``pg_ctl``) and psycopg2, no running service and no configuration.

PostgreSQL refuses to run as root, so under root the cluster belongs to, and the server runs as,
the ``postgres`` system user (``runuser``); otherwise it runs as the current user.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path


USER = "tlbench"  # the cluster's superuser, the same whoever runs the tests
SYSTEM_USER = "postgres"  # the account the server runs as under root
PACKAGE = "postgresql"  # what provides the binaries (Debian/Ubuntu)


def find_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``: the one on PATH, else the highest version under
    /usr/lib/postgresql (Debian keeps the server binaries off PATH); None without a server."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        found = Path(initdb).resolve().parent  # a symlink on PATH: its target has the server binary too
        if (found / "pg_ctl").exists():
            return found
    versions = [path.parent for path in Path("/usr/lib/postgresql").glob("*/bin/initdb")
                if (path.parent / "pg_ctl").exists()]
    versions.sort(key=lambda bindir: [int(part) for part in re.findall(r"\d+", bindir.parent.name)] or [0])
    return versions[-1] if versions else None


def require_bindir() -> Path:
    """The server binaries; without them a skip, except under CI (``helpers.skip_unless_ci``)."""
    from helpers import skip_unless_ci

    bindir = find_bindir()
    if bindir is None:
        skip_unless_ci(f"needs a PostgreSQL server (initdb, pg_ctl): apt-get install {PACKAGE}")
    return bindir


@dataclass
class PrivateServer:
    """A running private server: ``url`` is its first database; ``new_database()`` makes another,
    empty one, so tests sharing a server do not see each other's tables."""

    url: str
    port: int
    folder: Path
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1), repr=False)

    def new_database(self, name: str | None = None) -> str:
        """Creates an empty database and returns its SQLAlchemy URL."""
        import psycopg2

        name = name or f"db{next(self._names)}"
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER, dbname="postgres")
        try:
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return url_of(self.port, name)

    def __str__(self) -> str:
        return self.url


def url_of(port: int, database: str) -> str:
    return f"postgresql+psycopg2://{USER}@127.0.0.1:{port}/{database}"


@contextlib.contextmanager
def private_postgres(bindir: Path | None = None, *, database: str = "tlbench") -> Iterator[PrivateServer]:
    """Starts a throwaway cluster (``initdb`` + ``pg_ctl start``, about 2 s) and stops it on exit
    (``-m immediate``: nothing in it is kept, so nothing needs a clean shutdown)."""
    bindir = bindir or find_bindir()
    if bindir is None:
        raise FileNotFoundError(f"no PostgreSQL server binaries (initdb, pg_ctl); apt-get install {PACKAGE}")
    folder = Path(tempfile.mkdtemp(prefix="tlbench-pg-"))
    as_user = _as_server_user(folder)
    data, log = folder / "data", folder / "server.log"
    started = False
    try:
        _call(as_user + [str(bindir / "initdb"), "-D", str(data), f"--username={USER}", "--auth=trust",
                         "--encoding=UTF8", "--locale=C", "--no-sync"], "initdb")
        for _ in range(3):  # another process may take the free port between choosing and binding it
            port = free_port()
            # No durability (fsync off): the cluster lives only as long as the test session.
            options = (f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={folder} "
                       f"-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
            proc = subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                             "-w", "-t", "60", "start"], capture_output=True, text=True)
            if proc.returncode == 0:
                started = True
                break
            if "could not bind" not in _tail(log) and "already in use" not in _tail(log):
                raise RuntimeError(f"pg_ctl start failed: {proc.stderr.strip() or proc.stdout.strip()}; "
                                   f"server log: {_tail(log)}")
        else:
            raise RuntimeError(f"pg_ctl start: no free port after 3 tries; server log: {_tail(log)}")
        server = PrivateServer(url=url_of(port, database), port=port, folder=folder)
        server.new_database(database)
        yield server
    finally:
        if started:
            subprocess.run(as_user + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def _as_server_user(folder: Path) -> list[str]:
    """The command prefix that runs the server binaries as a user PostgreSQL accepts, after giving
    that user the folder (mkdtemp makes it root's, mode 0700)."""
    if os.geteuid() != 0:
        return []
    try:
        account = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(f"running as root, and PostgreSQL will not: no {SYSTEM_USER!r} system user to run "
                           f"it as (the {PACKAGE} package creates one)") from None
    os.chown(folder, account.pw_uid, account.pw_gid)
    return ["runuser", "-u", SYSTEM_USER, "--"]


def _call(command: list[str], what: str) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-2000:].strip()
    except OSError:
        return ""


if __name__ == "__main__":  # a quick check by hand: python tests/postgres.py
    start = time.perf_counter()
    with private_postgres() as running:
        print(f"{running.url} up in {time.perf_counter() - start:.2f} s; another database: {running.new_database()}")
    print(f"up and down in {time.perf_counter() - start:.2f} s")
