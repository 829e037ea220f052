"""``tlbench launch``: workers started on this machine (pinned to their own cores), detached, through submitit's
local executor and, with sbatch faked, as a Slurm array; bad input refused before anything starts."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tlbench.cli import launch
from tlbench.cli.launch import Slot, assign_slots, core_list, split_cores, worker_argv
from tlbench.cli.main import build_parser, main
from tlbench.core.errors import ConfigError
from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs

# A random-weights backbone (nothing to pretrain), one cheap strategy, two tasks so two workers have two cells.
TINY = """\
name: tiny-launch
seed: 0
trials: 2
seeds: 1
strategies: [linear_probe]
training: {epochs: [2, 3], batch_size: 16}
backbones:
  b: {arch: cnn2d, args: {width: 4, depth: 2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
  e:
    dataset: digits
    split: {seed: 1, shots: 3, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
"""
CELLS = {("d", "b", "linear_probe"), ("e", "b", "linear_probe")}


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def stored_cells(journal: Path) -> set[tuple[str, str, str]]:
    runs = load_runs(open_storage(str(journal), journal.parent))
    assert not runs.duplicated(["task", "backbone", "strategy", "seed"]).any()
    return set(zip(runs["task"], runs["backbone"], runs["strategy"]))


def worker_lines(err: str) -> dict[int, tuple[int, str]]:
    """worker index → (pid, what it runs on) from the launcher's lines."""
    found = re.findall(r"^worker (\d+): pid (\d+), (.*?), log ", err, flags=re.M)
    return {int(i): (int(pid), where) for i, pid, where in found}


# ------------------------------------------------------------------ who runs where (no processes)


def test_cores_are_split_into_disjoint_contiguous_sets() -> None:
    slots, note = assign_slots(3, list(range(8)))
    assert [s.cores for s in slots] == [(0, 1, 2), (3, 4, 5), (6, 7)]
    assert [s.threads for s in slots] == [3, 3, 2] and note is None
    assert all(s.device is None for s in slots)
    assert split_cores([4, 5, 6, 7, 0, 1], 2) == [(0, 1, 4), (5, 6, 7)]
    assert core_list((0, 1, 2, 3, 8, 10, 11)) == "0-3,8,10-11"
    assert [s.threads for s in assign_slots(3, list(range(8)), threads=1)[0]] == [1, 1, 1]  # --threads wins


def test_more_workers_than_cores_share_them_one_thread_each() -> None:
    slots, note = assign_slots(5, [0, 1])
    assert all(s.cores == (0, 1) and s.threads == 1 for s in slots)
    assert note == "5 workers on 2 cores: they share the cores, 1 thread each"


def test_devices_round_robin_with_several_workers_per_gpu() -> None:
    slots, note = assign_slots(None, list(range(8)), devices=[0, 1], per_device=2)
    assert [s.device for s in slots] == ["0", "1", "0", "1"] and note is None
    assert [s.cores for s in slots] == [(0, 1), (2, 3), (4, 5), (6, 7)]  # a GPU worker's CPU work gets its share
    assert slots[1].where() == "GPU 1, cores 2-3 (2 threads)"
    assert [s.device for s in assign_slots(3, list(range(8)), devices=[0, 1], per_device=2)[0]] == ["0", "1", "0"]
    with pytest.raises(ConfigError, match="more workers than --devices 0,1 × --per-device 2 = 4"):
        assign_slots(5, list(range(8)), devices=[0, 1], per_device=2)
    with pytest.raises(ConfigError, match="--per-device K: give the GPUs"):
        assign_slots(2, list(range(8)), per_device=2)
    with pytest.raises(ConfigError, match="say how many workers"):
        assign_slots(None, list(range(8)))


def test_workers_get_the_options_given_and_nothing_else(tmp_path: Path) -> None:
    """Every option of ``tlbench run`` that the user gave reaches the workers unchanged."""
    given = ["launch", "s.yaml", "--storage", "db.journal", "--jobs", "2", "--trials", "4", "--seeds", "3",
             "--strategies", "linear_probe,lp_ft", "--device", "cpu", "--precision", "fp32", "--channels-last", "off",
             "--compile", "--workers", "2", "--data-root", "/data", "--cache-dir", "/cache", "--threads", "3",
             "--tasks", "d", "--backbones", "b,c", "--set", "training.batch_size=64", "--set", "search.sampler=random"]
    args = build_parser().parse_args(given)
    argv = worker_argv(args, Path("out"), threads=3)
    assert argv[:8] == ["run", "s.yaml", "--storage", "db.journal", "--report", "none", "--out", "out"]
    run = vars(build_parser().parse_args(argv))
    for key, value in vars(args).items():
        if key in run and key not in ("command", "report", "out"):
            assert run[key] == value, key
    plain = worker_argv(build_parser().parse_args(["launch", "s.yaml", "--storage", "x", "--jobs", "1"]), Path("o"),
                        threads=None)
    assert plain == ["run", "s.yaml", "--storage", "x", "--report", "none", "--out", "o"]  # defaults stay out


def test_a_database_password_is_never_shown() -> None:
    assert launch.shown("postgresql+psycopg2://me:s3cret@db:5432/tl") == "postgresql+psycopg2://me:***@db:5432/tl"
    assert launch.shown("runs/store.journal") == "runs/store.journal"


# ------------------------------------------------------------------ bad input: one line, exit 2, nothing started


@pytest.mark.parametrize("extra,needle", [
    (["--jobs", "0"], "--jobs 0: give 1 or more workers"),
    (["--storage", None], "the following arguments are required: --storage"),
    (["--on", "k8s"], "argument --on: invalid choice: 'k8s'"),
    (["--devices", "0,x"], "--devices '0,x': give GPU indices"),
    (["--partition", "gpu"], "--partition applies to --on slurm or submitit-local, not --on local"),
    (["--on", "submitit-local", "--devices", "0"], "--devices applies to --on local"),
    (["--on", "submitit-local", "--slurm-arg", "account"], "--slurm-arg 'account': give KEY=VALUE"),
    (["--storage", "bogus://nowhere"], "unknown database driver"),
    (["--suite-file", "missing.yaml"], "suite file not found"),
])
def test_bad_input_is_one_line_and_starts_nothing(suite: Path, tmp_path: Path, capsys, monkeypatch, extra,
                                                   needle) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("a worker was started")

    monkeypatch.setattr(launch, "start_worker", refuse)
    monkeypatch.setattr(launch, "launch_submitit", refuse)
    argv = {"suite": str(suite), "--storage": str(tmp_path / "s.journal"), "--jobs": "2", "--out": str(tmp_path / "o")}
    pairs = dict(zip(extra[::2], extra[1::2]))
    if "--suite-file" in pairs:
        argv["suite"] = str(tmp_path / pairs.pop("--suite-file"))
    argv.update(pairs)
    args = ["launch", argv.pop("suite")] + [x for k, v in argv.items() if v is not None for x in (k, v)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tlbench: error: ") and needle in err[0], err
    assert not (tmp_path / "o" / "workers").exists() and not (tmp_path / "o" / "slurm").exists()


def test_without_submitit_the_slurm_path_says_what_to_install(suite: Path, tmp_path: Path, capsys,
                                                              monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` raises ImportError
    assert main(["launch", str(suite), "--storage", str(tmp_path / "s.journal"), "--jobs", "2", "--on", "slurm",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "tlbench: error: --on slurm needs submitit: pip install 'tlbench[slurm]'"


# ------------------------------------------------------------------ Ctrl-C


def test_interrupt_terminates_then_kills(capsys, monkeypatch) -> None:
    monkeypatch.setattr(launch, "GRACE_SECONDS", 0.5)
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE)
    assert stubborn.stdout is not None and stubborn.stdout.readline() == b"ready\n"
    started = [launch.Started(Slot(i, (0,), 1), p, Path("log"), time.monotonic()) for i, p in
               enumerate([polite, stubborn])]
    assert launch.interrupted(started, launch.Console(stderr=True)) == 130
    assert polite.returncode == -signal.SIGTERM and stubborn.returncode == -signal.SIGKILL
    assert "run the same command again to resume" in capsys.readouterr().err


# ------------------------------------------------------------------ Slurm, with sbatch faked


def test_slurm_submits_one_array_job_with_the_options_given(suite: Path, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path / "script.sh"}\necho "Submitted batch job 4242"\n')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    journal = "postgresql+psycopg2://me:s3cret@db/tl"  # never opened: the store check is faked below
    monkeypatch.setattr(launch, "prepare_run", lambda args: _prepared(args, suite, tmp_path / "o"))
    assert main(["launch", str(suite), "--storage", journal, "--jobs", "3", "--on", "slurm", "--detach",
                 "--partition", "gpu", "--gpus-per-job", "1", "--cpus-per-job", "4", "--time", "90", "--mem", "16",
                 "--slurm-arg", "account=proj", "--slurm-arg", "qos=high", "--out", str(tmp_path / "o")]) == 0
    script = (tmp_path / "script.sh").read_text()
    for line in ("--array=0-2%3", "--partition=gpu", "--gpus-per-node=1", "--cpus-per-task=4", "--time=90",
                 "--mem=16GB", "--account=proj", "--qos=high", "--job-name=tlbench-tiny-launch"):
        assert f"#SBATCH {line}\n" in script, line
    err = capsys.readouterr().err
    assert "submitted 3 jobs (array 4242) to slurm: 4242_0 4242_1 4242_2" in err and "scancel 4242" in err
    assert "s3cret" not in err
    # Each job runs one worker in process; its checkpoint is the same call again (re-queued on preemption).
    delayed = pickle.loads((tmp_path / "o" / "slurm" / "4242_1_submitted.pkl").read_bytes())
    worker = delayed.function
    assert isinstance(worker, launch.Worker) and worker.index == 1 and worker.threads == 4
    assert worker.argv[:4] == ["run", str(suite), "--storage", journal] and worker.argv[-2:] == ["--threads", "4"]
    again = worker.checkpoint()
    assert isinstance(again.function, launch.Worker) and again.function.argv == worker.argv
    # A submission sbatch refuses is one line, exit 2.
    (bin_dir / "sbatch").write_text('#!/bin/sh\necho "sbatch: error: invalid partition specified: nope" >&2\nexit 1\n')
    assert main(["launch", str(suite), "--storage", journal, "--jobs", "2", "--on", "slurm", "--partition", "nope",
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the suite's line, then why
    assert len(err) == 2 and err[-1] == ("tlbench: error: --on slurm: the submission was refused: sbatch: error: "
                                         "invalid partition specified: nope"), err


def _prepared(args, suite: Path, out: Path) -> launch.Prepared:
    from tlbench.run.plan import load_plan

    return launch.Prepared(load_plan(suite), None, out, out, None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ real workers (seconds each)


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, Path, Path, str]:
    """Two local workers of the tiny suite, run to the end: (suite, store, out, what the launcher said)."""
    tmp = tmp_path_factory.mktemp("launch")
    suite, journal, out = tmp / "tiny.yaml", tmp / "store.journal", tmp / "out"
    suite.write_text(TINY)
    capture = io.StringIO()
    with contextlib.redirect_stderr(capture):
        code = main(["launch", str(suite), "--storage", str(journal), "--jobs", "2", "--out", str(out),
                     "--report", "tables"])
    assert code == 0, capture.getvalue()
    return suite, journal, out, capture.getvalue()


@pytest.mark.slow
def test_local_workers_on_their_own_cores_fill_the_store(launched) -> None:
    _, journal, out, err = launched
    for i in (0, 1):
        log = out / "workers" / f"worker-{i}.log"
        assert log.is_file() and "tlbench.cli run" in log.read_text().splitlines()[0]
        assert re.search(rf"^worker {i} \(pid \d+\) finished: exit 0", err, flags=re.M), err
    assert stored_cells(journal) == CELLS
    assert (out / "table.md").is_file()  # the report, once every worker succeeded
    assert "--plan-file" in (out / "workers" / "worker-0.log").read_text().splitlines()[0]
    assert not list((out / "workers").glob("plan-*.pickle"))  # the handed plan is removed once they ended
    # The cores each worker really ran on, as the kernel reported them right after the start.
    where = [w for _, w in worker_lines(err).values()]
    cores = [set(re.match(r"cores (\S+)", w).group(1).split(",")) for w in where]  # type: ignore[union-attr]
    if len(launch.available_cores()) >= 2:
        assert len(where) == 2 and not cores[0] & cores[1] and all("(1 thread)" in w for w in where), where
    else:
        assert "share the cores" in err


@pytest.mark.slow
def test_detach_returns_at_once_and_a_relaunch_redoes_nothing(launched, capsys) -> None:
    suite, journal, out, _ = launched
    before = load_runs(open_storage(str(journal), out))
    # One worker: each costs seconds of CPU importing torch, and two were tested above.
    assert main(["launch", str(suite), "--storage", str(journal), "--jobs", "1", "--out", str(out),
                 "--detach"]) == 0
    err = capsys.readouterr().err
    pids = [pid for pid, _ in worker_lines(err).values()]
    assert len(pids) == 1 and f"tlbench status {suite} --storage {journal}" in err and f"kill {pids[0]}" in err
    # Still importing torch: the launcher did not wait for it.
    assert all(os.waitpid(pid, os.WNOHANG) == (0, 0) for pid in pids)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    assert codes == [0], (out / "workers" / "worker-0.log").read_text()
    assert len(list((out / "workers").glob("plan-*.pickle"))) == 1  # a detached launch leaves it to its workers
    after = load_runs(open_storage(str(journal), out))
    assert len(after) == len(before) and stored_cells(journal) == CELLS  # resumed: nothing redone


@pytest.mark.slow
def test_submitit_local_jobs_fill_the_store(suite: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("submitit")
    journal, out = tmp_path / "store.journal", tmp_path / "out"
    assert main(["launch", str(suite), "--storage", str(journal), "--jobs", "2", "--on", "submitit-local",
                 "--out", str(out), "--report", "none"]) == 0
    err = capsys.readouterr().err
    assert "submitted 2 jobs to local" in err and err.count("finished: exit 0") == 2, err
    assert stored_cells(journal) == CELLS
    assert len(list((out / "slurm").glob("*_result.pkl"))) == 2

