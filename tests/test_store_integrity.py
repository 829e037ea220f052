"""A store shared by many workers survives what happens to files: a line cut off mid-write is
moved aside (under the append lock), a damaged journal, a bad --storage or --out and a hostile
suite file each stop with one line and exit 2, and nothing stored is changed."""

from __future__ import annotations

import os
import pickle
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import TrialState

from tlbench.cli.main import main
from tlbench.core.errors import ConfigError
from tlbench.store.opening import open_existing_storage, open_storage
from tlbench.store.records import load_runs
from tlbench.suites.reading import MAX_SUITE_VALUES
from tlbench.suites.schema import parse_suite

SMALL = """\
name: small
seed: 0
trials: 2
seeds: 2
strategies: [linear_probe]
training: {epochs: [2, 3], batch_size: 16}
backbones:
  b: {arch: cnn2d, args: {width: 8, depth: 2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
"""


def journal_with_trials(path: Path, n: int = 3) -> Path:
    """A journal written by Optuna itself: one study, ``n`` completed trials."""
    study = optuna.create_study(study_name="s", storage=open_storage(f"journal:{path}", path.parent))
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("x", 0.0, 1.0)
        study.tell(trial, float(i))
    return path


def states(path: Path) -> list[TrialState]:
    return [t.state for t in optuna.load_study(study_name="s", storage=open_existing_storage(str(path))).trials]


def torn_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.torn-*"))


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlbench: error: "), err
    return err[0]


# ------------------------------------------------------------------ a line cut off mid-write


def test_a_run_moves_a_cut_off_last_line_aside_and_loses_nothing_else(tmp_path, capsys) -> None:
    """A crash (or a full disk) cut the store's last line: `tlbench report` still reads it, and
    the next `tlbench run` moves the cut bytes aside, says so in one line, redoes that record and
    leaves every other record as it was, instead of appending to the partial line."""
    suite, out = tmp_path / "small.yaml", tmp_path / "out"
    suite.write_text(SMALL)
    assert main(["run", str(suite), "--out", str(out), "--report", "none"]) == 0
    journal = out / "store.journal"
    before = load_runs(open_existing_storage(str(journal)))
    assert len(before) == 2
    whole = journal.read_bytes()
    last = whole[: -1].rfind(b"\n") + 1
    cut = last + (len(whole) - last) // 2
    journal.write_bytes(whole[:cut])
    open_existing_storage(str(journal))  # readable as it is: the cut line is skipped, as Optuna does
    assert torn_files(out) == []  # reading repairs nothing
    capsys.readouterr()

    assert main(["run", str(suite), "--out", str(out), "--report", "none"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(said) == 1 and "last line was cut off" in said[0] and str(journal) in said[0], said
    (aside,) = torn_files(out)
    assert aside.name.startswith("store.journal.torn-") and aside.name in said[0]
    assert aside.read_bytes() == whole[last:cut]  # the cut bytes, kept
    after = journal.read_bytes()
    assert after.startswith(whole[:last]) and after.endswith(b"\n")  # the good prefix, untouched
    runs = load_runs(open_existing_storage(str(journal)))
    columns = ["task", "strategy", "seed", "params", "test_accuracy"]
    assert runs[columns].to_dict("records") == before[columns].to_dict("records")


def test_a_line_cut_off_by_another_worker_is_moved_aside_before_the_next_append(tmp_path) -> None:
    """A worker dies mid-line while another keeps running: the survivor's next append moves the
    cut bytes aside first, so its own record lands on a line of its own."""
    path = journal_with_trials(tmp_path / "store.journal")
    said: list[str] = []
    study = optuna.load_study(study_name="s", storage=open_storage(f"journal:{path}", tmp_path, notify=said.append))
    good = path.read_bytes()
    with path.open("ab") as f:  # the dead worker's half line
        f.write(b'{"op_code":4,"worker_id":"dead","study_id":0,"datetime_st')
    trial = study.ask()
    study.tell(trial, 9.0)
    assert len(said) == 1 and "cut off" in said[0]
    assert path.read_bytes().startswith(good)
    assert states(path) == [TrialState.COMPLETE] * 4
    (aside,) = torn_files(tmp_path)
    assert aside.read_bytes().startswith(b'{"op_code":4,"worker_id":"dead"')


def test_a_cut_record_is_absent_after_the_repair(tmp_path) -> None:
    """Cutting the line that completed trial 2 leaves it as it was before that line: running."""
    path = journal_with_trials(tmp_path / "store.journal")
    path.write_bytes(path.read_bytes()[:-20])
    said: list[str] = []
    open_storage(f"journal:{path}", tmp_path, notify=said.append)
    assert len(said) == 1
    assert states(path) == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING]


def test_a_line_a_live_writer_is_writing_is_not_cut(tmp_path) -> None:
    """A tail without a newline is only cut under the lock every Optuna append holds: while a
    writer holds it (mid-line), opening the store waits, and then finds the line complete."""
    path = journal_with_trials(tmp_path / "store.journal")
    lock = JournalFileSymlinkLock(str(path))
    line = b'{"op_code":3,"worker_id":"w","study_id":0,"system_attr":{"k":1}}\n'
    lock.acquire()
    try:
        with path.open("ab") as f:
            f.write(line[:20])
        said: list[str] = []
        opener = threading.Thread(target=open_storage, args=(f"journal:{path}", tmp_path),
                                  kwargs={"notify": said.append})
        opener.start()
        opener.join(0.5)
        assert opener.is_alive()  # waiting for the writer's lock
        with path.open("ab") as f:
            f.write(line[20:])
    finally:
        lock.release()
    opener.join(30)
    assert not opener.is_alive() and said == [] and torn_files(tmp_path) == []
    assert path.read_bytes().endswith(line)


WORKER = """\
import sys, time
from pathlib import Path
import optuna
from tlbench.store.opening import open_storage
path, folder = Path(sys.argv[1]), Path(sys.argv[2])
(folder / f"ready-{sys.argv[3]}").touch()
while not (folder / "go").exists():
    time.sleep(0.005)
storage = open_storage(f"journal:{path}", folder, notify=lambda line: print("REPAIRED", line, flush=True))
study = optuna.load_study(study_name="s", storage=storage)
for i in range(4):
    trial = study.ask()
    study.tell(trial, float(i))
"""


def test_workers_opening_a_torn_store_at_once_cut_it_once(tmp_path) -> None:
    """Three worker processes open a store with a cut last line at the same moment and append:
    the cut bytes are moved aside exactly once and every worker's trials are stored."""
    path = journal_with_trials(tmp_path / "store.journal")
    path.write_bytes(path.read_bytes()[:-20])  # trial 2's completion, cut
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    workers = [subprocess.Popen([sys.executable, str(script), str(path), str(tmp_path), str(i)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(3)]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("ready-*"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0], [err for _, err in outputs]
    assert sum(out.count("REPAIRED") for out, _ in outputs) == 1
    assert len(torn_files(tmp_path)) == 1
    got = states(path)
    assert len(got) == 3 + 3 * 4 and got.count(TrialState.COMPLETE) == 2 + 3 * 4


def test_a_store_with_a_notifier_can_still_be_pickled(tmp_path) -> None:
    """A copy of the store in another process (Optuna's n_jobs, a DataLoader worker) reads and writes the
    same journal; the notifier and the lock's state stay behind."""
    storage = open_storage(None, tmp_path, notify=lambda line: None)
    optuna.create_study(study_name="s", storage=storage)
    copy = pickle.loads(pickle.dumps(storage))
    assert optuna.get_all_study_names(copy) == ["s"]
    optuna.create_study(study_name="t", storage=copy)
    assert sorted(optuna.get_all_study_names(open_storage(None, tmp_path))) == ["s", "t"]


# ------------------------------------------------------------------ a damaged journal: one line, exit 2

NOISE = bytes(random.Random(0).randrange(256) for _ in range(400))
DAMAGE = {
    "garbage line in the middle": (lambda lines: lines[:2] + [b"this is not json\n"] + lines[2:], "line 3", "not JSON"),
    "random bytes in the middle": (lambda lines: lines[:2] + [NOISE + b"\n"] + lines[2:], "line 3", "damaged"),
    "JSON that is no journal operation": (lambda lines: lines[:2] + [b'{"hello": [1, 2]}\n'] + lines[2:], "line 3",
                                          "not a journal operation"),
    "an operation Optuna cannot replay": (lambda lines: lines[:2] + [b'{"op_code": 4}\n'] + lines[2:], "line 3",
                                          "cannot replay"),
    "garbage as the last complete line": (lambda lines: lines + [b"oops\n"], f"line {10 + 1}", "not JSON"),
    "a file of random bytes": (lambda lines: [NOISE], "line 1", "damaged"),
}


@pytest.mark.parametrize("command", ["run", "report DIR", "report --storage"])
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_journal_is_one_line_naming_the_line(tmp_path, capsys, damage, command) -> None:
    out = tmp_path / "out"
    out.mkdir()
    path = journal_with_trials(out / "store.journal")
    damaged = b"".join(DAMAGE[damage][0](path.read_bytes().splitlines(keepends=True)))
    assert path.read_bytes().count(b"\n") == 10  # the line numbers the cases name
    path.write_bytes(damaged)
    suite = tmp_path / "small.yaml"
    suite.write_text(SMALL)
    argv = {"run": ["run", str(suite), "--out", str(out), "--report", "none"],
            "report DIR": ["report", str(out), "--out", str(tmp_path / "r")],
            "report --storage": ["report", "--storage", str(path), "--out", str(tmp_path / "r")]}[command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    _, where, why = DAMAGE[damage]
    assert str(path) in line and f"{where} (byte " in line and why in line, line
    assert path.read_bytes() == damaged and torn_files(out) == []  # nothing was changed


def test_an_sqlite_file_given_as_a_path_says_how_to_open_it(tmp_path) -> None:
    db = tmp_path / "store.db"
    optuna.create_study(study_name="s", storage=f"sqlite:///{db}")
    with pytest.raises(ConfigError, match="give --storage sqlite:///"):
        open_existing_storage(str(db))


# ------------------------------------------------------------------ --storage and --out


@pytest.mark.parametrize("bad", ["::::", "typo", "store.jounral", "journal:", ""])
def test_a_storage_string_that_names_no_store_is_refused(tmp_path, monkeypatch, bad) -> None:
    monkeypatch.chdir(tmp_path)  # where a bare name would have become a new journal
    with pytest.raises(ConfigError) as err:
        open_storage(bad, tmp_path)
    message = str(err.value)
    for form in ("journal:PATH", "an existing journal file", ".journal", "sqlite:///", "postgresql+psycopg2://"):
        assert form in message, message
    assert list(tmp_path.iterdir()) == []  # no new store started


def test_a_storage_typo_in_a_run_starts_nothing(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(SMALL)
    assert main(["run", "small.yaml", "--out", "out", "--storage", "::::"]) == 2
    assert "accepted: journal:PATH" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small.yaml"]


def test_storage_strings_that_name_a_journal(tmp_path) -> None:
    existing = journal_with_trials(tmp_path / "old-store")  # no suffix, but it exists
    for url in (f"journal:{tmp_path / 'a'}", str(tmp_path / "b.journal"), str(tmp_path / "c.log"), str(existing)):
        open_storage(url, tmp_path)
    beside = (".lock", ".lock.owner")  # the write lock and its owner record
    assert {p.name for p in tmp_path.iterdir() if not p.name.endswith(beside)} == {"a", "b.journal", "c.log",
                                                                                 "old-store"}
    open_storage(None, tmp_path / "run")  # --out's default: <out>/store.journal
    assert (tmp_path / "run" / "store.journal").is_file()


@pytest.mark.parametrize("command", ["report", "run"])
@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_out_that_cannot_be_written_is_one_line(tmp_path, capsys, where, command) -> None:
    """An --out that is a file, or lies under one, used to end a report in a traceback."""
    path = journal_with_trials(tmp_path / "run" / "store.journal")
    before = path.read_bytes()
    (tmp_path / "taken").write_text("a file the user keeps\n")
    out = tmp_path / "taken" if where == "a file" else tmp_path / "taken" / "report"
    (tmp_path / "small.yaml").write_text(SMALL)
    argv = {"report": ["report", str(path.parent), "--out", str(out)],
            "run": ["run", str(tmp_path / "small.yaml"), "--out", str(out), "--storage", str(path)]}[command]
    assert main(argv) == 2
    line = one_error_line(capsys)
    assert f"--out {out}" in line and "not a directory" in line, line
    assert (tmp_path / "taken").read_text() == "a file the user keeps\n" and path.read_bytes() == before


# ------------------------------------------------------------------ hostile suite files


def laughs(levels: int = 9) -> str:
    """A "billion laughs": each level a list of nine aliases of the one before (9**9 values)."""
    lines = ["    - &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"    - &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("field", ["sweep", "strategies", "args"])
def test_a_billion_laughs_suite_is_refused_at_once(tmp_path, field) -> None:
    """Nested aliases expand a 1 kB file to 387 million values; whatever walked them (a repr of a
    swept value, a hash of the settings) hung. The suite is refused before validation."""
    block = {"sweep": "    sweep:\n      shots:\n" + laughs().replace("    -", "        -"),
             "strategies": "", "args": "    args:\n      x:\n" + laughs().replace("    -", "        -")}[field]
    text = SMALL.replace("    backbones: [b]\n", "    backbones: [b]\n" + block)
    if field == "strategies":
        text = text.replace("strategies: [linear_probe]\n", "strategies:\n" + laughs())
    path = tmp_path / "laughs.yaml"
    path.write_text(text)
    assert path.stat().st_size < 2000
    with pytest.raises(ConfigError, match=f"expands to more than {MAX_SUITE_VALUES:,} values") as err:
        parse_suite(path)
    # Refused by the bounded check, before anything else walked the expansion (loading keeps aliases shared).
    assert err.traceback[-1].name == "_check_size"
    assert str(path) in str(err.value) and "YAML aliases" in str(err.value) and len(str(err.value)) < 200


@pytest.mark.parametrize("size", [10_000_000, 20_000])
def test_a_huge_string_gives_a_short_line(tmp_path, size) -> None:
    path = tmp_path / "huge.yaml"
    path.write_text(SMALL.replace("strategies: [linear_probe]", f"strategies: [linear_probe, {'x' * size}]"))
    with pytest.raises(ConfigError) as err:
        parse_suite(path)
    assert err.traceback[-1].name in ("_read_yaml", "_check_size")  # refused as the file is read, before validation
    message = str(err.value)
    assert len(message) < 200 and str(path) in message, message
    if size == 20_000:
        assert "strategies[1]: a string of 20,000 characters" in message


def test_a_hostile_suite_through_the_command_line_is_one_line(tmp_path, capsys) -> None:
    path = tmp_path / "laughs.yaml"
    path.write_text(SMALL.replace("strategies: [linear_probe]\n", "strategies:\n" + laughs()))
    assert main(["run", str(path), "--dry-run"]) == 2
    assert "YAML aliases" in one_error_line(capsys)


def test_bundled_suites_are_far_below_the_bounds() -> None:
    from tlbench.suites import bundled_suites

    for path in bundled_suites().values():
        parse_suite(Path(path))
        assert os.path.getsize(path) < 10_000
