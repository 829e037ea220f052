"""A PostgreSQL store opened by many workers: the schema-creation race of workers starting on an
empty database, bad URLs in one line without their password, bounded retries of a server that is
not there, and Optuna's heartbeat. Every test but the masking ones runs a private server
(``postgres`` fixture, tests/postgres.py)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from postgres import free_port

from tlbench.core.errors import ConfigError
from tlbench.store.opening import Retry, mask_url, open_storage

QUICK = Retry(attempts=3, first_wait=0.1, max_wait=0.5)  # at most about 0.45 s of waiting


def _open_at(url: str, barrier, results) -> None:
    """A worker: opens the store the moment every worker is ready, and says how it went."""
    lines: list[str] = []
    barrier.wait()
    try:
        open_storage(url, Path("."), log=lines.append)
        results.put(("ok", lines))
    except BaseException as err:  # noqa: BLE001 - reported to the parent
        results.put((f"{type(err).__name__}: {err}", lines))


@pytest.mark.slow
def test_workers_starting_together_on_an_empty_database_all_open_it(postgres, postgres_url) -> None:
    # Before retries, five of six failed with IntegrityError (pg_type_typname_nsp_index) or
    # ProgrammingError (relation "studies" already exists) and tlbench called the URL bad.
    # Opening another database first imports what opening needs (alembic, the driver: a second
    # each), so the forked workers reach the server together, and quickly.
    open_storage(postgres.url, Path(".")).engine.dispose()  # no pooled connection shared with the workers
    context = multiprocessing.get_context("fork")
    workers = 6
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_open_at, args=(postgres_url, barrier, results)) for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [outcome for outcome, _ in outcomes] == ["ok"] * workers, outcomes
    retried = [line for _, lines in outcomes for line in lines]
    assert all("another worker is creating the schema" in line for line in retried), retried

    import sqlalchemy

    engine = sqlalchemy.create_engine(postgres_url)
    with engine.connect() as connection:  # one schema: one version row, one alembic stamp
        assert connection.execute(sqlalchemy.text("SELECT count(*) FROM version_info")).scalar() == 1
        assert connection.execute(sqlalchemy.text("SELECT count(*) FROM alembic_version")).scalar() == 1
    engine.dispose()
    storage = open_storage(postgres_url, Path("."))
    optuna.create_study(study_name="s", storage=storage).enqueue_trial({"x": 1})
    assert optuna.load_study(study_name="s", storage=open_storage(postgres_url, Path("."))).trials


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql+psycopg2://ann:s3cret@db.example:5432/runs") == \
        "postgresql+psycopg2://ann:***@db.example:5432/runs"
    assert mask_url("postgresql+psycopg2://ann:p@ss:w/rd@host/db") == "postgresql+psycopg2://ann:***@host/db"
    assert mask_url("postgresql+psycopg2://ann@host/db?sslmode=require&password=s3cret") == \
        "postgresql+psycopg2://ann@host/db?sslmode=require&password=***"
    for plain in ("postgresql+psycopg2://ann@host:5432/db", "postgresql://host:5432/db", "sqlite:///a/b.db"):
        assert mask_url(plain) == plain


@pytest.mark.parametrize(("url", "why"), [
    ("postgresql+psycopg3://ann:s3cret@host/db", "unknown database driver"),
    ("postgresql+psycopg2://ann:s3cret@host:port/db", "malformed URL"),
    ("://ann:s3cret@host/db", "malformed URL"),
])
def test_a_bad_url_is_one_line_without_its_password(url, why) -> None:
    lines: list[str] = []
    with pytest.raises(ConfigError) as caught:
        open_storage(url, Path("."), log=lines.append)
    message = str(caught.value)
    assert why in message and "***" in message and "s3cret" not in message and "\n" not in message, message
    assert lines == []  # nothing to retry: refused at the first attempt


def test_the_cli_says_a_bad_url_in_one_line_and_exits_2(capsys) -> None:
    from tlbench.cli.main import main

    assert main(["report", "--storage", "postgresql+psycopg3://ann:s3cret@host/db"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tlbench: error: --storage postgresql+psycopg3://ann:***@host/db: unknown database driver")
    assert "s3cret" not in err and "\n" not in err, err


def test_an_unreachable_server_is_retried_then_one_line() -> None:
    url = f"postgresql+psycopg2://ann:s3cret@127.0.0.1:{free_port()}/db"  # nothing listens there
    lines: list[str] = []
    with pytest.raises(ConfigError) as caught:
        open_storage(url, Path("."), log=lines.append, retry=QUICK)
    assert len(lines) == QUICK.attempts - 1  # one line per retry, then the error
    message = str(caught.value)
    assert "cannot open the database" in message and "3 attempts" in message and "refused" in message, message
    assert "s3cret" not in message and "ann:***@" in message and "\n" not in message
    assert len(lines) == 2 and all("ann:***@" in line and "retrying in" in line for line in lines), lines


def test_what_the_server_refuses_is_not_retried(postgres) -> None:
    """A database or role that does not exist (or a wrong password) fails at once: retrying
    cannot fix it."""
    for url in (postgres.url.rsplit("/", 1)[0] + "/nosuchdb",
                f"postgresql+psycopg2://nobody:s3cret@127.0.0.1:{postgres.port}/tlbench"):
        lines: list[str] = []
        with pytest.raises(ConfigError, match="refused the connection.*does not exist") as caught:
            open_storage(url, Path("."), log=lines.append)
        assert not lines and "s3cret" not in str(caught.value)


@pytest.mark.slow
def test_a_trial_whose_heartbeat_stops_is_stale_after_the_grace_period(postgres_url) -> None:
    storage = open_storage(postgres_url, Path("."), heartbeat=1, grace=2)
    assert storage.get_heartbeat_interval() == 1 and storage.grace_period == 2
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = study._study_id
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna expects optimize(); tlbench asks and tells
        stopped, alive = study.ask(), study.ask()
    for trial in (stopped, alive):
        storage.record_heartbeat(trial._trial_id)
    assert storage._get_stale_trial_ids(study_id) == []
    time.sleep(2.5)
    storage.record_heartbeat(alive._trial_id)
    assert storage._get_stale_trial_ids(study_id) == [stopped._trial_id]
    assert storage.get_trial(alive._trial_id).state == TrialState.RUNNING


def test_the_default_heartbeat_and_journals(postgres_url, tmp_path) -> None:
    storage = open_storage(postgres_url, Path("."))
    assert (storage.get_heartbeat_interval(), storage.grace_period) == (10, 40)
    assert open_storage(postgres_url, Path("."), heartbeat=2.7).grace_period == 8  # Optuna wants whole seconds
    assert storage.engine.pool._pre_ping  # a dropped connection is replaced, not a failed write
    journal = open_storage(None, tmp_path, heartbeat=1)  # a journal has no heartbeat: ignored
    assert not hasattr(journal, "get_heartbeat_interval") or journal.get_heartbeat_interval() is None


def test_without_a_server_the_tests_skip_except_under_ci(monkeypatch) -> None:
    import postgres as helper

    monkeypatch.setattr(helper, "find_bindir", lambda: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install postgresql"):
        helper.require_bindir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must not skip"):
        helper.require_bindir()
