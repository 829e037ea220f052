"""The operator's commands around a shared store: where a run's report goes, GPUs that exist, `tlbench
status` as a read-only, pipe-friendly view, the reasons trials failed, and the launcher's report after a
worker died."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_launch import CELLS, TINY, stored_cells

from tlbench.cli import launch
from tlbench.cli.main import main
from tlbench.core.budget import Budget
from tlbench.core.errors import ConfigError
from tlbench.store import progress
from tlbench.store.opening import open_existing_storage, open_storage


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlbench: error: "), err
    return err[0]


# ------------------------------------------------------------------ where the report goes


@pytest.mark.slow
def test_a_run_on_a_named_journal_reports_beside_it_and_never_over_another_stores_report(suite, tmp_path,
                                                                                         monkeypatch, capsys) -> None:
    """`--storage runs/exp2/store.journal` without --out reports into runs/exp2 (it used to replace
    runs/<suite>'s tables with exp2's, silently); an --out that holds another store's results is refused
    before anything is written, whether that store is its journal or a database it reported on."""
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(suite), "--report", "tables"]) == 0  # runs/tiny-launch/store.journal
    first = Path("runs/tiny-launch")
    before = {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()}
    assert main(["run", str(suite), "--storage", "runs/exp2/store.journal", "--report", "tables"]) == 0
    assert (Path("runs/exp2") / "table.md").is_file() and stored_cells(Path("runs/exp2/store.journal")) == CELLS
    capsys.readouterr()
    for storage in ("runs/exp2/store.journal", "sqlite:///other.db"):
        assert main(["run", str(suite), "--storage", storage, "--out", str(first), "--report", "tables"]) == 2
        line = one_error_line(capsys)
        assert f"--out {first}: it holds the results of another store ({first / 'store.journal'}); give this " in line
    assert {p.name: p.read_bytes() for p in first.iterdir() if p.is_file()} == before  # nothing touched
    assert not Path("other.db").exists()
    # A database store's report folder is marked, so another store is refused there too.
    assert main(["run", str(suite), "--storage", "sqlite:///a.db", "--out", "db-report", "--report", "none"]) == 0
    assert Path("db-report/store.txt").read_text().strip() == "sqlite:///a.db"
    assert main(["run", str(suite), "--storage", "sqlite:///a.db", "--out", "db-report", "--report", "none"]) == 0
    capsys.readouterr()
    assert main(["run", str(suite), "--storage", "sqlite:///b.db", "--out", "db-report", "--report", "none"]) == 2
    assert "it holds the results of another store (sqlite:///a.db)" in one_error_line(capsys)
    assert not Path("b.db").exists()


def test_launch_derives_its_folder_from_the_store(suite, tmp_path, monkeypatch) -> None:
    seen = {}

    def record(args, prepared, slots, console, plan_file):
        seen["out"], seen["plan"], seen["handed"] = prepared.out, plan_file, plan_file.is_file()
        return 0

    monkeypatch.setattr(launch, "launch_local", record)
    monkeypatch.chdir(tmp_path)
    assert main(["launch", str(suite), "--storage", "runs/exp2/store.journal", "--jobs", "2", "--report",
                 "none"]) == 0
    assert seen["out"] == Path("runs/exp2")
    assert seen["plan"].parent == Path("runs/exp2/workers") and seen["handed"]  # the plan handed over
    assert not seen["plan"].exists()  # and removed once the (attached) workers ended


# ------------------------------------------------------------------ GPUs that exist


def test_devices_that_do_not_exist_are_refused_in_one_line(suite, tmp_path, monkeypatch, capsys) -> None:
    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(launch, "start_worker", refuse)
    argv = ["launch", str(suite), "--storage", str(tmp_path / "s.journal"), "--out", str(tmp_path / "o")]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main([*argv, "--devices", "0"]) == 2
    assert "--devices 0: CUDA sees no GPU here; leave --devices out to run the workers on the CPU" in \
        one_error_line(capsys)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert main([*argv, "--devices", "0,5,7"]) == 2
    assert "--devices 0,5,7: no GPU 5, 7; CUDA sees 2 (indices 0-1)" in one_error_line(capsys)
    assert not (tmp_path / "o").exists()


def test_device_indices_count_the_gpus_this_process_sees(monkeypatch) -> None:
    """Under Slurm a job sees its own GPUs through CUDA_VISIBLE_DEVICES: --devices 0,1 means those."""
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert launch.visible_gpus([0, 1], "0,1") == {0: "4", 1: "6"}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert launch.visible_gpus([1], "1") == {1: "1"}


# ------------------------------------------------------------------ tlbench status


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("status")
    suite = tmp / "tiny.yaml"
    suite.write_text(TINY)
    assert main(["run", str(suite), "--out", str(tmp / "out"), "--report", "none"]) == 0
    return suite, tmp / "out"


def test_status_into_a_closed_pipe_stops_quietly(finished) -> None:
    """`tlbench status … | head -1`: the reader went away, which is no error (it ended in a BrokenPipeError
    traceback)."""
    suite, out = finished
    proc = subprocess.Popen([sys.executable, "-m", "tlbench.cli", "status", str(suite), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before anything was written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and err == "", err  # as a process killed by SIGPIPE


def test_status_answers_from_the_plan_the_run_stored_without_torch(finished, tmp_path, monkeypatch,
                                                                    capsys) -> None:
    """The issue asks for status in about a second: torch alone takes more to import. The run stored its
    cells' plan; status reads it (and the trials) with the store layer only, and says what planning says."""
    suite, out = finished
    probe = ("import sys; from tlbench.cli.main import main; code = main(sys.argv[1:]); "
             "print('TORCH' if 'torch' in sys.modules else 'NO TORCH'); sys.exit(code)")
    fast = subprocess.run([sys.executable, "-c", probe, "status", str(suite), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert fast.returncode == 0 and fast.stdout.endswith("NO TORCH\n"), fast.stdout + fast.stderr
    # other flags than the run's: status plans the suite (torch), and answers for those flags
    planned = subprocess.run([sys.executable, "-c", probe, "status", str(suite), "--out", str(out), "--seeds", "2"],
                             capture_output=True, text=True, timeout=120)
    assert planned.returncode == 0 and planned.stdout.endswith("\nTORCH\n"), planned.stdout + planned.stderr
    assert "2 units of work left" in planned.stdout
    # the same table as planning the suite gives, and a copy of the file (a comment added) hits the same plan
    monkeypatch.setattr(progress, "stored_plan", lambda *a, **k: None)
    assert main(["status", str(suite), "--out", str(out)]) == 0
    assert capsys.readouterr().out == fast.stdout.removesuffix("NO TORCH\n")
    monkeypatch.undo()
    copy = tmp_path / "tiny.yaml"
    copy.write_text(suite.read_text() + "\n# a comment\n")
    again = subprocess.run([sys.executable, "-c", probe, "status", str(copy), "--out", str(out)],
                           capture_output=True, text=True, timeout=120)
    assert again.stdout == fast.stdout, again.stdout + again.stderr


def test_status_json_is_the_tables_view_as_data(finished, tmp_path, capsys) -> None:
    """`tlbench status --json` for scripts: one JSON object with each cell's work done, held and
    left, the same counts the table prints, and the workers; a suite edited since the run shows
    its new work left there too."""
    import json

    suite, out = finished
    assert main(["status", str(suite), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert main(["status", str(suite), "--out", str(out), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["suite"] == "tiny-launch" and view["store"].endswith("store.journal")
    assert len(view["cells"]) == 2 and view["states"] == {"done": 2, "running": 0, "waiting": 0, "not started": 0}
    assert view["left"] == 0 and f"{len(view['cells'])} cells (2 done)" in table
    for cell in view["cells"]:
        assert cell["state"] == "done" and cell["evaluated"] == {"done": 1, "total": 1} and cell["left"] == 0
        assert f"{cell['task']} / {cell['backbone']} / {cell['strategy']}" in table
    assert view["workers"] == {"alive": [], "dead": []} and view["model_selection"] is None
    edited = tmp_path / "tiny.yaml"
    edited.write_text(suite.read_text().replace("seeds: 1", "seeds: 3"))
    assert main(["status", str(edited), "--out", str(out), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["left"] == 4 and {c["evaluated"]["total"] for c in view["cells"]} == {3}


def test_version(capsys) -> None:
    from tlbench.core.version import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"tlbench {__version__}\n"


def test_status_plans_a_suite_edited_since_the_run(finished, tmp_path, capsys) -> None:
    """A stored plan answers only for the suite file and flags it was made from: a suite whose seeds were raised
    since the run is planned again (its new seeds are work left), never read from the stale plan."""
    suite, out = finished
    text = suite.read_text()
    assert "seeds: 1" in text
    edited = tmp_path / "tiny.yaml"
    edited.write_text(text.replace("seeds: 1", "seeds: 3"))
    assert main(["status", str(edited), "--out", str(out)]) == 0
    assert "4 units of work left" in capsys.readouterr().out  # two more seeds in each of the two cells


def test_status_of_a_suite_the_store_does_not_hold_says_which_it_holds(finished, capsys) -> None:
    suite, out = finished
    assert main(["status", "smoke", "--storage", str(out / "store.journal")]) == 2
    assert "holds no study of suite 'smoke'; suites there: tiny-launch" in one_error_line(capsys)


def test_status_of_an_empty_store_says_no_worker_has_started(suite, tmp_path, capsys) -> None:
    empty = tmp_path / "empty.journal"
    empty.touch()
    assert main(["status", str(suite), "--storage", str(empty)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "2 cells (2 not started)" in first and "the store is empty: no worker has started on it yet" in first


def test_status_and_report_create_nothing_in_a_database(suite, tmp_path, capsys) -> None:
    """The docs say status only reads: on a database without Optuna's tables it said nothing was there
    and left the tables behind."""
    import sqlalchemy

    db = tmp_path / "empty.db"
    sqlalchemy.create_engine(f"sqlite:///{db}").connect().close()  # an existing, empty database file
    for argv in (["status", str(suite), "--storage", f"sqlite:///{db}"], ["report", "--storage", f"sqlite:///{db}",
                                                                           "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        assert "the database holds no store (no Optuna tables)" in one_error_line(capsys)
        assert sqlalchemy.inspect(sqlalchemy.create_engine(f"sqlite:///{db}")).get_table_names() == []


def test_status_creates_no_tables_on_postgresql(suite, postgres_url, capsys) -> None:
    import sqlalchemy

    assert main(["status", str(suite), "--storage", postgres_url]) == 2
    assert "the database holds no store (no Optuna tables)" in one_error_line(capsys)
    assert sqlalchemy.inspect(sqlalchemy.create_engine(postgres_url)).get_table_names() == []
    with pytest.raises(ConfigError, match="no Optuna tables"):
        open_existing_storage(postgres_url)
    open_storage(postgres_url, Path("."))  # a worker creates them
    assert "studies" in sqlalchemy.inspect(sqlalchemy.create_engine(postgres_url)).get_table_names()
    assert main(["status", str(suite), "--storage", postgres_url]) == 0  # now a store, empty


# ------------------------------------------------------------------ why a trial failed


def test_a_lost_claim_says_why_in_the_trials_table(tmp_path) -> None:
    from test_search_store import forged_claim

    from tlbench.reports.results import load_results
    from tlbench.run.tuning import make_study

    storage = open_storage(None, tmp_path)
    study = make_study("s::t::b::linear_probe::tune", storage, budget=Budget(trials=2), seed=0)
    forged_claim(study, {"slot": 0, "seed": 0})  # holds slot 0
    import tlbench.store.claims as store

    assert store.claim(study, {"slot": 0, "seed": 0}, lambda t: t.user_attrs.get("slot") == 0) is None  # lost
    trials = load_results(storage, importances=False).trials
    lost = trials[trials["number"] == 1]
    assert lost["state"].tolist() == ["FAIL"]
    assert lost["reason"].tolist() == ["claim lost: trial 0 holds the same unit of work (this one never ran)"]


# ------------------------------------------------------------------ the launcher's report


def test_the_launcher_reports_a_suite_finished_although_a_worker_died(suite, tmp_path, monkeypatch, capsys) -> None:
    """One worker died (exit -9), the other finished every cell: the report is written, exit 0; with work
    left, no report and exit 1."""
    journal, out = tmp_path / "store.journal", tmp_path / "out"

    def one_dies_after_nothing(args, prepared, slots, console, plan_file):
        return 1

    monkeypatch.setattr(launch, "launch_local", one_dies_after_nothing)
    argv = ["launch", str(suite), "--storage", str(journal), "--jobs", "2", "--out", str(out)]
    assert main(argv) == 1
    assert "units of work are left; run the same command again to resume" in capsys.readouterr().err
    assert not (out / "table.md").exists()

    def other_finishes(args, prepared, slots, console, plan_file):
        assert main(["run", str(suite), "--storage", str(journal), "--out", str(out), "--report", "none"]) == 0
        return 1

    monkeypatch.setattr(launch, "launch_local", other_finishes)
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "the other workers finished the suite: every cell is done in the store, so its report is written" in err
    assert (out / "table.md").is_file()


def test_a_failed_workers_log_end_is_this_launchs_not_an_earlier_ones(tmp_path, capsys) -> None:
    """Logs are appended to across launches: the lines shown under a failed worker begin where this launch's
    part of its log begins."""
    from rich.console import Console

    log = tmp_path / "worker-0.log"
    log.write_text("".join(f"earlier launch line {i}\n" for i in range(20)))
    offset = log.stat().st_size
    with log.open("ab") as sink:
        sink.write(b"== this launch's header\n")
        sink.flush()
        proc = subprocess.Popen([sys.executable, "-c", "import sys; print('importing'); sys.exit(3)"], stdout=sink)
    started = launch.Started(launch.Slot(0, (0,), 1), proc, log, 0.0, offset)
    assert launch.watch([started], Console(stderr=True, highlight=False, soft_wrap=True)) == 1
    err = capsys.readouterr().err
    assert "failed: exit 3" in err and "== this launch's header" in err and "importing" in err
    assert "earlier launch line" not in err


def test_every_subcommands_help_ends_with_two_examples_that_parse() -> None:
    import shlex

    from tlbench.cli.main import EXAMPLES, build_parser

    parser = build_parser()
    subcommands = next(a for a in parser._actions if a.dest == "command").choices  # noqa: SLF001
    assert set(subcommands) == set(EXAMPLES)
    for name, sub in subcommands.items():
        lines = sub.format_help().rstrip().splitlines()
        assert lines[-3] == "examples:" and [line.strip() for line in lines[-2:]] == list(EXAMPLES[name]), name
        for example in EXAMPLES[name]:
            args = parser.parse_args(shlex.split(example)[1:])
            assert args.command == name
