"""`--tasks` and `--backbones`: a run (and its status) narrowed to some cells of a suite, whose
cells are the whole suite's — the same store, the same records as a full run's — and the bad
selections refused in one line before anything is stored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_launch import stored_cells

from tlbench.cli.main import main
from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs

SUITE = """\
name: narrow
seed: 0
trials: 2
seeds: 1
strategies: [linear_probe]
training: {epochs: [2, 3], batch_size: 16}
backbones:
  b: {arch: cnn2d, args: {width: 4, depth: 2}}
  c: {arch: cnn2d, args: {width: 6, depth: 2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    backbones: [b, c]
  e:
    dataset: digits
    split: {seed: 1, shots: 3, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
"""


@pytest.fixture
def suite(tmp_path: Path) -> Path:
    path = tmp_path / "narrow.yaml"
    path.write_text(SUITE)
    return path


def accuracies(out: Path) -> dict[tuple[str, str], list[float]]:
    runs = load_runs(open_storage(None, out))
    return {(t, b): sorted(zip(g["test_accuracy"], g["params"].astype(str), g["suite_fingerprint"]))
            for (t, b), g in runs.groupby(["task", "backbone"])}


def test_a_selection_runs_the_whole_suites_cells_into_its_store(suite: Path, tmp_path: Path, capsys) -> None:
    narrow, full = tmp_path / "narrow", tmp_path / "full"
    assert main(["run", str(suite), "--out", str(narrow), "--tasks", "d", "--report", "none"]) == 0
    assert stored_cells(narrow / "store.journal") == {("d", "b", "linear_probe"), ("d", "c", "linear_probe")}
    capsys.readouterr()
    # status with the run's flags answers for the selection; without them, for the whole suite
    assert main(["status", str(suite), "--out", str(narrow), "--tasks", "d", "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert len(view["cells"]) == 2 and view["left"] == 0
    assert main(["status", str(suite), "--out", str(narrow), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["states"]["done"] == 2 and view["states"]["not started"] == 1
    # another selection, then the rest, into the same store: no cell is run twice
    assert main(["run", str(suite), "--out", str(narrow), "--backbones", "b", "--report", "none"]) == 0
    assert main(["run", str(suite), "--out", str(narrow), "--report", "tables"]) == 0
    assert (narrow / "table.md").is_file()
    runs = load_runs(open_storage(None, narrow))
    assert len(runs) == 3 and runs.groupby(["task", "backbone"]).size().eq(1).all()
    # the same records as one full run
    assert main(["run", str(suite), "--out", str(full), "--report", "none"]) == 0
    assert accuracies(narrow) == accuracies(full)


@pytest.mark.parametrize("flags,needle", [
    (["--tasks", "x"], "--tasks: 'x' is not one of the suite's (d, e)"),
    (["--backbones", "z"], "--backbones: 'z' is not one of the suite's (b, c)"),
    (["--tasks", "e", "--backbones", "c"], "--tasks/--backbones: no selected task uses those backbones (e: b)"),
    (["--tasks", "e", "--backbones", "b,c"], "--backbones: 'c' is on none of the selected tasks"),
    (["--tasks", ","], "--tasks: give at least one; the suite's: d, e"),
])
def test_a_bad_selection_is_one_line_and_stores_nothing(suite: Path, tmp_path: Path, capsys, flags: list[str],
                                                        needle: str) -> None:
    out = tmp_path / "out"
    assert main(["run", str(suite), "--out", str(out), "--report", "none", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not (out / "store.journal").exists()


def test_set_overrides_a_field_before_validation(suite: Path, tmp_path: Path, capsys) -> None:
    """`--set tasks.d.split.shots=3` runs the suite as if the file said so: its records show it; a
    setting that changes results keeps out of the unmodified suite's store (one line), while a
    budget (`--set seeds=2`) extends it, and status with the same --set reads that run's plan."""
    out, other = tmp_path / "out", tmp_path / "other"
    assert main(["run", str(suite), "--out", str(out), "--tasks", "d", "--backbones", "b", "--report", "none"]) == 0
    assert main(["run", str(suite), "--out", str(other), "--tasks", "d", "--backbones", "b", "--report", "none",
                 "--set", "tasks.d.split.shots=3", "--set", "training.batch_size=8"]) == 0
    assert set(load_runs(open_storage(None, other))["n_train"]) == {30}  # 3 shots × 10 digits
    assert set(load_runs(open_storage(None, out))["n_train"]) == {20}
    capsys.readouterr()
    assert main(["run", str(suite), "--out", str(out), "--tasks", "d", "--backbones", "b", "--report", "none",
                 "--set", "tasks.d.split.shots=3"]) == 2
    assert "already holds results of suite 'narrow' run with other settings" in capsys.readouterr().err
    assert main(["run", str(suite), "--out", str(out), "--tasks", "d", "--backbones", "b", "--report", "none",
                 "--set", "seeds=2"]) == 0
    assert len(load_runs(open_storage(None, out))) == 2  # one more seed of the same cell
    capsys.readouterr()
    assert main(["status", str(suite), "--out", str(out), "--tasks", "d", "--backbones", "b", "--set", "seeds=2",
                 "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert [c["evaluated"] for c in view["cells"]] == [{"done": 2, "total": 2}] and view["left"] == 0


@pytest.mark.parametrize("sets,needle", [
    (["training.epoch=5"], "--set training.epoch=5: {suite}: training.epoch"),
    (["tasks.d.split.shots=abc"], "--set tasks.d.split.shots=abc: {suite}: tasks.d.split.shots"),
    (["strategies.3=lp_ft"], "--set strategies.3=lp_ft: strategies is a list of 1; '3' is not an index of it"),
    (["seeds"], "--set seeds: expected PATH=VALUE with a dotted path"),
    (["seeds=[1"], "--set seeds=[1: the value is not YAML"),
    (["seeds=2", "strategies=[nope]"], "--set strategies=[nope]: {suite}: strategies[0]: unknown strategy"),
    (["training.epochs=[0, 5]"], "--set training.epochs=[0, 5]: {suite}: training: epochs must be"),  # a block's check
])
def test_a_bad_set_is_one_line_naming_it_and_stores_nothing(suite: Path, tmp_path: Path, capsys, sets: list[str],
                                                            needle: str) -> None:
    out = tmp_path / "out"
    argv = ["run", str(suite), "--out", str(out), "--report", "none"]
    for item in sets:
        argv += ["--set", item]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle.format(suite=suite) in err[0], err
    assert not (out / "store.journal").exists()


def test_a_left_out_task_a_kept_backbone_pretrains_on_is_still_built(tmp_path: Path, capsys) -> None:
    """--tasks d, where d's backbone is pretrained on the target task e: e is left out of the cells
    but still read as the backbone's source; another backbone's source task is not read at all."""
    path = tmp_path / "pre.yaml"
    path.write_text(SUITE.replace("  c: {arch: cnn2d, args: {width: 6, depth: 2}}",
                                  "  c: {arch: cnn2d, args: {width: 6, depth: 2}, pretrain: {task: e, epochs: 1}}\n"
                                  "  s: {arch: cnn2d, args: {width: 4, depth: 2}, pretrain: {task: src, epochs: 1}}")
                    .replace("tasks:\n  d:", "source_tasks:\n  src: {dataset: digits, split: {test_fraction: 0.3}}\n"
                                             "tasks:\n  d:")
                    .replace("    backbones: [b]\n", "    backbones: [b, s]\n"))
    assert main(["run", str(path), "--tasks", "d", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "task e: dataset digits" in err and "task src:" not in err
    assert "d / c / linear_probe" in err and "e / b / linear_probe" not in err
    assert main(["run", str(path), "--dry-run"]) == 0
    assert "task src: dataset digits" in capsys.readouterr().err


def test_a_sweeps_name_selects_its_tasks_and_studies_follow_the_selection(tmp_path: Path, capsys) -> None:
    """--tasks with a sweep's name selects every task it expands into; a sensitivity study on
    left-out tasks only is not part of the run (it was refused as naming an unknown task), one on
    some selected tasks keeps those."""
    path = tmp_path / "sweep.yaml"
    path.write_text(SUITE + "  f:\n    dataset: digits\n    split: {val_per_class: 3, test_fraction: 0.3}\n"
                    "    sweep: {shots: [1, 2]}\n    backbones: [b]\n"
                    "sensitivity:\n  - {strategy: linear_probe, params: {lr: [0.01, 0.1]}, seeds: 1, tasks: [e]}\n"
                    "  - {strategy: linear_probe, params: {lr: [0.01, 0.1]}, seeds: 1, tasks: [d, f]}\n")
    assert main(["run", str(path), "--tasks", "f", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "f.shots1 / b / linear_probe" in err and "f.shots2 / b / linear_probe" in err and "d / b" not in err
    assert "sensitivity[0]: linear_probe, lr [0.01, 0.1], 1 seeds per value on f" in err
    assert "sensitivity[1]" not in err
    assert main(["run", str(path), "--tasks", "e", "--dry-run"]) == 0
    assert "on e" in capsys.readouterr().err
    assert main(["run", str(path), "--tasks", "f.shots2", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "f.shots2 / b / linear_probe" in err and "f.shots1 /" not in err
