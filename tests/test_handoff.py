"""The plan ``tlbench launch`` checked, handed to its workers (:mod:`tlbench.run.handoff`): read instead of planned
again, the same plan; a file from other code or a torn one is not trusted (the worker plans, saying so in one line);
a suite's file plugins are loaded before the plan is read, in a fresh process."""

from __future__ import annotations

import argparse
import contextlib
import io
import pickle
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_launch import TINY
from test_plugins import extras_suite

from tlbench.cli import worker
from tlbench.cli.launch import worker_argv
from tlbench.cli.main import build_parser, main
from tlbench.run import handoff
from tlbench.run.plan import load_plan
from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def test_the_handed_plan_is_the_plan(suite: Path, tmp_path: Path) -> None:
    plan = load_plan(suite)
    path = handoff.hand_over(plan, tmp_path / "workers")
    assert handoff.hand_over(plan, tmp_path / "workers") == path  # named by its content: written once
    taken, why = handoff.take_over(path)
    assert why == "" and taken is not None
    assert taken.cells == plan.cells and taken.suite.fingerprint() == plan.suite.fingerprint()
    assert taken.searched.keys() == plan.searched.keys() and taken.options.keys() == plan.options.keys()
    task, same = plan.tasks["d"], taken.tasks["d"]
    assert torch.equal(task.train.x, same.train.x) and torch.equal(task.test.y, same.test.y)
    assert task.fingerprint == same.fingerprint


def test_a_plan_from_other_code_or_a_torn_file_is_not_used(suite: Path, tmp_path: Path) -> None:
    path = handoff.hand_over(load_plan(suite), tmp_path)
    handed = pickle.loads(path.read_bytes())
    other = tmp_path / "other.pickle"
    other.write_bytes(pickle.dumps(replace(handed, code="0.0.1+000000000000")))
    plan, why = handoff.take_over(other)
    assert plan is None and "planned by other code (0.0.1+000000000000" in why
    torn = tmp_path / "torn.pickle"
    torn.write_bytes(path.read_bytes()[:100])
    plan, why = handoff.take_over(torn)
    assert plan is None and "unreadable" in why
    assert handoff.take_over(tmp_path / "gone.pickle") == (None, f"{tmp_path / 'gone.pickle'} is gone")
    foreign = tmp_path / "foreign.pickle"
    foreign.write_bytes(pickle.dumps({"plan": 1}))
    assert handoff.take_over(foreign)[0] is None


def _run(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_a_worker_given_the_plan_does_not_plan_again(suite: Path, tmp_path: Path, monkeypatch) -> None:
    plan_file = handoff.hand_over(load_plan(suite), tmp_path / "workers")
    journal = tmp_path / "store.journal"

    def planned(*args, **kwargs):
        raise AssertionError("the worker planned the suite again")

    with monkeypatch.context() as patched:
        patched.setattr("tlbench.run.plan.load_plan", planned)
        code, err = _run("run", str(suite), "--storage", str(journal), "--report", "none", "--plan-file",
                         str(plan_file))
    assert code == 0, err
    runs = load_runs(open_storage(str(journal), tmp_path))
    assert set(runs["task"]) == {"d", "e"} and len(runs) == 2
    # The same records as a worker that planned for itself (a store of its own).
    code, err = _run("run", str(suite), "--storage", str(tmp_path / "alone" / "store.journal"), "--report", "none")
    assert code == 0, err
    alone = load_runs(open_storage(str(tmp_path / "alone" / "store.journal"), tmp_path))
    keys = ["task", "seed"]
    assert (runs.sort_values(keys)["test_accuracy"].to_list() == alone.sort_values(keys)["test_accuracy"].to_list())


def test_a_worker_that_cannot_use_the_plan_plans_itself_and_says_why(suite: Path, tmp_path: Path) -> None:
    stale = tmp_path / "plan-stale.pickle"
    handed = pickle.loads(handoff.hand_over(load_plan(suite), tmp_path).read_bytes())
    stale.write_bytes(pickle.dumps(replace(handed, code="0.0.1+000000000000")))
    code, err = _run("run", str(suite), "--storage", str(tmp_path / "out" / "store.journal"), "--report", "none",
                     "--plan-file", str(stale))
    assert code == 0, err
    lines = [line for line in err.splitlines() if "plans the suite itself" in line]
    assert len(lines) == 1 and "planned by other code" in lines[0] and lines[0].startswith("tlbench: warning:")


def test_the_launcher_hands_its_plan_to_every_worker(suite: Path, tmp_path: Path) -> None:
    args = build_parser().parse_args(["launch", str(suite), "--storage", "x.journal", "--jobs", "2"])
    argv = worker_argv(args, tmp_path, threads=1, plan=tmp_path / "workers" / "plan-0123.pickle")
    assert argv[argv.index("--plan-file") + 1] == str(tmp_path / "workers" / "plan-0123.pickle")
    assert "--plan-file" not in worker_argv(args, tmp_path, threads=1)
    assert "--plan-file" not in build_parser().format_help() and "--plan-file" not in _help("run")


def _help(command: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command].format_help()


def test_a_suites_file_plugins_are_loaded_before_its_plan_is_read(tmp_path: Path, registries) -> None:
    """In a fresh process, as a worker reads it: the plan's dataset and backbone come from a plugin file."""
    suite = extras_suite(tmp_path)
    path = handoff.hand_over(load_plan(suite), tmp_path / "workers")
    read = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
        from pathlib import Path
        from tlbench.run.handoff import take_over
        plan, why = take_over(Path({str(path)!r}))
        assert plan is not None, why
        print(plan.suite.backbones["wide"].arch_class.__name__, len(plan.tasks["blobs-5shot"].train.y))
    """)], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr[-2000:]
    assert read.stdout.split() == ["WideCNN", "15"]


def test_prepare_run_reads_a_handed_plan_only_for_a_real_run(suite: Path, tmp_path: Path, monkeypatch) -> None:
    """A dry run with --plan-file still plans (it opens nothing and is what a user types to check a suite)."""
    plan_file = handoff.hand_over(load_plan(suite), tmp_path)
    taken = []
    monkeypatch.setattr(handoff, "take_over", lambda path: taken.append(path) or (None, "unused"))
    args = build_parser().parse_args(["run", str(suite), "--dry-run", "--plan-file", str(plan_file)])
    assert worker.prepare_run(args, dry_run=True).plan.cells and taken == []
