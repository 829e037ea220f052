"""Where a run's time goes: the phase accountant, the line a run ends with, and what it stores."""

from __future__ import annotations

import re
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


def test_the_readme_marks_what_the_quick_suite_script_rewrites(tmp_path: Path) -> None:
    """``benchmarks/readme_quick.py`` finds its three blocks in docs/getting-started.md (the README
    holds the test table and the time, the same text) and rewrites them from a report's table.md and
    a stored timing, leaving the prose alone."""
    import importlib.util

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("readme_quick", root / "benchmarks" / "readme_quick.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.FILES == (root / "README.md", root / "docs" / "getting-started.md")
    readme = (root / "README.md").read_text()
    page = (root / "docs" / "getting-started.md").read_text()
    assert set(module.blocks(page)) == {"test", "shifted", "time"}
    assert set(module.blocks(readme)) == {"test", "time"}
    assert all(module.blocks(page)[name] == text for name, text in module.blocks(readme).items())
    table_md = ("# tlbench suite quick\n\n**Test accuracy (%)**\n\n| strategy | a |\n|---|---:|\n| x | 1.0 |\n\n_note_\n\n"
                "**Shifted-test (out-of-distribution) accuracy (%)**\n\n| strategy | a |\n|---|---:|\n| x | 0.5 |\n")
    new = module.tables_of(table_md)
    assert new == {"test": "| strategy | a |\n|---|---:|\n| x | 1.0 |", "shifted": "| strategy | a |\n|---|---:|\n| x | 0.5 |"}
    new["time"] = module.time_text({"pretraining": 30.0, "tuning": 100.0, "other": 20.0, "wall": 150.0})
    assert new["time"].startswith("**150 s** (2.5 minutes)") and "everything else 13%" in new["time"]
    rewritten = module.rewrite(page, new)
    assert module.blocks(rewritten) == new
    outside = lambda text: re.sub(r"<!-- quick:(\w+) -->.*?<!-- /quick:\1 -->", "", text, flags=re.S)  # noqa: E731
    assert outside(rewritten) == outside(page)
    with pytest.raises(SystemExit, match="README.md: no <!-- quick:shifted --> block"):
        module.rewrite(readme, new)
