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
