"""Where a run's time goes: the phase accountant, the line a run ends with, and what it stores."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tlbench.cli.main import main
from tlbench.core.phases import Phases, describe
from tlbench.store.opening import open_storage
from tlbench.store.progress import stored_timings


def test_nested_phases_charge_the_innermost_and_the_rest_is_other(monkeypatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    phases = Phases()
    clock[0] = 1.0  # start-up: other
    with phases("evaluation"):
        clock[0] = 4.0
        with phases("inference"):
            clock[0] = 6.0
        clock[0] = 7.0
    clock[0] = 7.5  # between units: other
    with phases("tuning"):
        clock[0] = 9.5
    with phases("evaluation"):
        clock[0] = 10.0
    out = phases.breakdown()
    assert out == {"tuning": 2.0, "evaluation": 3.0 + 1.0 + 0.5, "inference": 2.0, "other": 1.5, "wall": 10.0}
    assert list(out) == ["tuning", "evaluation", "inference", "other", "wall"]  # the breakdown's order
    assert describe(out) == ("time: 10.0 s: tuning 2.0 s (20%), evaluation training 4.5 s (45%), inference 2.0 s "
                             "(20%), other 1.5 s (15%)")
    with pytest.raises(RuntimeError):  # a phase left by an exception is closed
        with phases("report"):
            clock[0] = 11.0
            raise RuntimeError
    assert phases.breakdown()["report"] == 1.0 and phases.breakdown()["other"] == 1.5


SUITE = """\
name: timed
seed: 0
trials: 2
seeds: 2
strategies: [linear_probe]
training: {epochs: [2, 3], batch_size: 16}
backbones:
  b: {arch: cnn2d, args: {width: 8, depth: 2}, pretrain: {task: src, epochs: 1, batch_size: 64, lr: 0.003}}
source_tasks:
  src: {dataset: digits, split: {test_fraction: 0.2, val_fraction: 0.2}}
tasks:
  d:
    dataset: digits
    split: {shots: 2, val_per_class: 3, test_fraction: 0.3}
    backbones: [b]
"""


def test_a_run_ends_with_where_its_time_went_and_keeps_it_in_the_store(tmp_path: Path, capsys) -> None:
    suite = tmp_path / "timed.yaml"
    suite.write_text(SUITE)
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--report", "tables",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    line = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("time: "))
    for phase in ("pretraining", "tuning", "evaluation training", "inference", "report", "other"):
        assert f" {phase} " in line, line
    assert main(["run", str(suite), "--out", str(tmp_path / "o"), "--report", "none",
                 "--cache-dir", str(tmp_path / "cache")]) == 0  # everything done: no training, no report
    again = next(ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("time: "))
    assert "tuning" not in again and "report" not in again
    first, second = stored_timings(open_storage(None, tmp_path / "o"), "timed")
    assert first["ended"] < second["ended"] and first["worker"] == second["worker"]
    for row in (first, second):
        named = sum(v for k, v in row.items() if k not in ("worker", "ended", "wall"))
        assert named == pytest.approx(row["wall"], abs=0.01)
    assert first["tuning"] > 0 and first["evaluation"] > 0 and first["inference"] > 0 and first["report"] > 0
    assert "tuning" not in second
