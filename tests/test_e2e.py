"""End to end: the smoke suite through the CLI, rerun, determinism, and kill -9 resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from tlbench.cli.main import main
from tlbench.store.opening import open_storage
from tlbench.store.records import StudyName, load_runs

STRATEGIES = 11
CELLS = 2 * STRATEGIES  # 2 tasks × 1 backbone × 11 strategies
SEEDS = 2
TRIALS = 3
UNTUNED = ("ensemble",)  # nothing to search: no tuning study


def trial_counts(out: Path) -> dict[str, tuple[int, int]]:
    storage = open_storage(None, out)
    counts = {}
    for s in optuna.get_all_study_summaries(storage):
        if StudyName.parse(s.study_name) is None:  # the run's stored plan: no trials
            continue
        trials = optuna.load_study(study_name=s.study_name, storage=storage).get_trials()
        finished = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        counts[s.study_name] = (finished, len(trials))
    return counts


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("smoke")
    assert main(["run", "smoke", "--out", str(out)]) == 0
    return out


def test_outputs_written(smoke_run: Path) -> None:
    runs = pd.read_parquet(smoke_run / "runs.parquet")
    assert len(runs) == CELLS * SEEDS
    assert not runs.duplicated(["task", "backbone", "strategy", "seed"]).any()
    for column in ["suite", "task", "backbone", "strategy", "seed", "params", "test_accuracy",
                   "val_accuracy", "shifted_test_accuracy", "train_seconds", "trainable_parameters",
                   "peak_memory_mb", "tlbench_version", "torch_version", "git_commit", "device"]:
        assert column in runs, column
    assert runs["test_accuracy"].between(0, 1).all()
    assert (runs["precision"] == "fp32").all() and not runs["channels_last"].any()  # CPU defaults
    assert runs["shifted_test_accuracy"].notna().all()
    assert len(pd.read_csv(smoke_run / "runs.csv")) == len(runs)
    table = (smoke_run / "table.md").read_text()
    from tlbench.strategies import STRATEGIES as registry
    # every built-in runs end to end: these 11 in the smoke suite, the parameter-efficient ones (VPT needs a
    # ViT) in suites/peft.yaml's end-to-end test (tests/test_peft.py)
    shown = {s for s in registry.names() if f"| {s} |" in table}
    assert len(shown) == STRATEGIES and set(registry.names()) - shown == {"bitfit", "lora", "adapter", "vpt", "ssf"}
    assert "digits-2shot" in table and "mnist1d-shifted" in table
    counts = trial_counts(smoke_run)
    for name, (finished, _) in counts.items():
        assert finished == (TRIALS if name.endswith("::tune") else SEEDS), name
    assert not [n for n in counts if n.endswith("::tune") and n.split("::")[3] in UNTUNED]


def test_reusing_strategies_record_what_they_reused(smoke_run: Path) -> None:
    runs = pd.read_parquet(smoke_run / "runs.parquet")
    ft = runs[runs["strategy"] == "full_finetune"].set_index(["task", "seed"])
    kd = runs[runs["strategy"] == "distillation"]
    ens = runs[runs["strategy"] == "ensemble"]
    assert len(kd) == len(ens) == 2 * SEEDS  # two tasks: the checks below cover every run
    assert (kd["student_parameters"] < kd["teacher_parameters"]).all()
    assert (kd["inference_parameters"] == kd["student_parameters"]).all()
    for row in kd.itertuples():  # teacher k is full_finetune's evaluation run k
        teacher = ft.loc[(row.task, row.seed)]
        assert row.teacher_parameters == teacher["inference_parameters"]
        assert row.teacher_test_accuracy == pytest.approx(teacher["test_accuracy"])
        assert row.train_seconds > row.own_train_seconds
    assert (ens["ensemble_size"] == 3).all()  # smoke inherits quick: 3 full_finetune models
    one = ft.groupby("task")["inference_parameters"].first()
    for row in ens.itertuples():
        models = 1 if row.ensemble_method.endswith("soup") else len(row.ensemble_members.split(", "))
        assert row.inference_parameters == models * one[row.task]
        assert row.train_seconds > row.own_train_seconds >= 0
    assert len(list((smoke_run / "models").rglob("*.pt"))) >= 2 * 3 * SEEDS  # kept for reuse


def test_reusing_without_the_reused_strategy_is_one_clear_line(tmp_path, capsys) -> None:
    rc = main(["run", "smoke", "--out", str(tmp_path), "--strategies", "distillation"])
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line or "Traceback" in line]
    assert rc == 2 and len(err) == 1, err  # progress lines before it, one error line, no traceback
    assert err[0].startswith("tlbench: error: ")
    assert "reuses models of 'full_finetune', which has no tuned configuration" in err[0]
    assert "--strategies" in err[0]


def test_reusing_from_the_store_alone(smoke_run: Path, tmp_path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    shutil.rmtree(out / "models")  # artifacts gone: the teacher is refitted, identically
    before = pd.read_parquet(smoke_run / "runs.parquet")
    assert main(["run", "smoke", "--out", str(out), "--seeds", "3", "--strategies", "distillation"]) == 0
    after = pd.read_parquet(out / "runs.parquet")
    assert set(after["strategy"]) == {"distillation"} and len(after) == 2 * 3
    new = after[after["seed"] == after["seed"].max()]
    assert new["teacher"].str.endswith("#2").all()
    old = before[before["strategy"] == "distillation"].merge(after, on=["task", "seed"])
    assert (old["test_accuracy_x"] == old["test_accuracy_y"]).all()


def test_rerun_redoes_nothing(smoke_run: Path, capsys) -> None:
    before = trial_counts(smoke_run)
    assert main(["run", "smoke", "--out", str(smoke_run), "--report", "none"]) == 0
    assert trial_counts(smoke_run) == before
    assert "reusing cached pretrained backbone" in capsys.readouterr().err


def test_more_seeds_extends_without_redoing(smoke_run: Path, tmp_path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    before = load_runs(open_storage(None, out))
    assert main(["run", "smoke", "--out", str(out), "--seeds", "3", "--report", "none"]) == 0
    after = load_runs(open_storage(None, out))
    assert len(after) == CELLS * 3
    merged = before.merge(after, on=["task", "backbone", "strategy", "seed"], suffixes=("", "_new"))
    assert len(merged) == len(before)
    assert (merged["test_accuracy"] == merged["test_accuracy_new"]).all()
    assert (merged["started_at"] == merged["started_at_new"]).all()  # not re-run


def test_fewer_seeds_or_strategies_narrow_the_table(smoke_run: Path, tmp_path) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    before = trial_counts(out)
    assert main(["run", "smoke", "--out", str(out), "--seeds", "1", "--strategies", "scratch", "--report",
                 "tables"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert set(runs["strategy"]) == {"scratch"} and len(runs) == 2  # 2 tasks × 1 seed
    assert trial_counts(out) == before  # nothing re-run


def test_same_seeds_same_metrics(smoke_run: Path, tmp_path) -> None:
    assert main(["run", "smoke", "--out", str(tmp_path), "--strategies", "linear_probe,scratch",
                 "--report", "tables"]) == 0
    # --report tables: the tables, data files and page, no figure drawn
    assert not (tmp_path / "figures").exists() and "Figures not drawn" in (tmp_path / "report.html").read_text()
    a = pd.read_parquet(smoke_run / "runs.parquet")
    b = pd.read_parquet(tmp_path / "runs.parquet")
    keys = ["task", "backbone", "strategy", "seed"]
    merged = a.merge(b, on=keys, suffixes=("_a", "_b"))
    assert len(merged) == 2 * 2 * SEEDS
    for metric in ("test_accuracy", "val_accuracy", "shifted_test_accuracy"):
        assert (merged[f"{metric}_a"] == merged[f"{metric}_b"]).all(), metric
    assert (merged["params_a"] == merged["params_b"]).all()


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path) -> None:
    out = tmp_path / "killed"
    subset = ["--strategies", "full_finetune,distillation,ensemble,linear_probe"]  # reuse included
    cmd = [sys.executable, "-m", "tlbench.cli", "run", "smoke", "--out", str(out), "--trials", "8", *subset,
           "--report", "none"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    journal = out / "store.journal"
    deadline = time.monotonic() + 120
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        # Kill once the first cell is done and the dependent ones have started.
        if journal.exists() and journal.read_text().count('"state":1,') >= 10:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.02)
    proc.wait()
    assert killed, "the run finished before it could be interrupted"
    assert not (out / "runs.parquet").exists()
    assert main(["run", "smoke", "--out", str(out), "--trials", "8", *subset, "--report", "tables"]) == 0
    runs = pd.read_parquet(out / "runs.parquet")
    assert len(runs) == 2 * 4 * SEEDS
    assert not runs.duplicated(["task", "backbone", "strategy", "seed"]).any()
    for name, (finished, _) in trial_counts(out).items():
        assert finished == (8 if name.endswith("::tune") else SEEDS), name
    # The resumed run holds exactly the records an uninterrupted run produces.
    clean = tmp_path / "clean"
    assert main(["run", "smoke", "--out", str(clean), "--trials", "8", *subset, "--report", "tables"]) == 0
    keys = ["task", "backbone", "strategy", "seed"]
    expected = pd.read_parquet(clean / "runs.parquet").sort_values(keys, ignore_index=True)
    got = runs.sort_values(keys, ignore_index=True)
    for column in ("params", "test_accuracy", "val_accuracy", "shifted_test_accuracy",
                   "tuning_best_val_accuracy", "tuning_best_trial_seed"):
        assert got[column].equals(expected[column]), (column, _trials(out), _trials(clean))


def test_store_refuses_results_of_other_settings(smoke_run: Path, tmp_path, capsys) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(smoke_run, out)
    suite = tmp_path / "changed.yaml"
    suite.write_text(f"include: {Path(__file__).parent.parent / 'suites' / 'smoke.yaml'}\n"
                     "training: {epochs: [3, 5]}\n")
    before = load_runs(open_storage(None, out))
    assert main(["run", str(suite), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "other settings" in err[0] and str(suite) in err[0]
    assert "(training.epochs: [2, 4] → [3, 5])" in err[0]  # the field that differs, not two fingerprints
    assert len(load_runs(open_storage(None, out))) == len(before)  # nothing lost
    assert main(["run", "smoke", "--out", str(out), "--set", "training.epochs=[3, 5]", "--dry-run"]) == 0
    assert main(["run", "smoke", "--out", str(out), "--set", "training.epochs=[3, 5]"]) == 2  # the same via --set
    assert "(training.epochs: [2, 4] → [3, 5])" in capsys.readouterr().err
    # status of that run answers as the run would, instead of showing the old settings' cells as done
    assert main(["status", "smoke", "--out", str(out), "--set", "training.epochs=[3, 5]"]) == 2
    assert "(training.epochs: [2, 4] → [3, 5])" in capsys.readouterr().err
    assert main(["status", "smoke", "--out", str(out)]) == 0


def test_compare_two_stores_that_differ_in_one_setting(smoke_run: Path, tmp_path, capsys) -> None:
    """``tlbench compare``: the paired differences over the seeds both stores ran equal a recomputation
    from their runs.parquet files; the setting that differs is named field by field, the --set that made
    it is in the report's protocol, and the cells only the baseline has are listed, not compared."""
    import numpy as np
    from scipy import stats as sps
    from statsmodels.stats.multitest import multipletests

    other = tmp_path / "epochs"
    assert main(["run", "smoke", "--out", str(other), "--strategies", "linear_probe,scratch",
                 "--set", "training.epochs=[3, 5]", "--report", "tables"]) == 0
    assert "--set training.epochs=[3, 5]" in (other / "report.html").read_text()
    capsys.readouterr()
    out = tmp_path / "cmp"
    assert main(["compare", f"base={smoke_run}", f"longer={other}", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| settings | training.epochs | [2, 4] | [3, 5] |" in printed
    assert "| base, not longer |" in printed and "full_finetune" in printed
    assert main(["compare", f"a={smoke_run}", f"b={smoke_run / 'store.journal'}", "--out", str(out)]) == 2
    assert "a and b are the same store" in capsys.readouterr().err
    frame = pd.read_parquet(out / "compare.parquet")
    assert set(frame["strategy"]) == {"linear_probe", "scratch"} and len(frame) == 2 * 4  # 2 metrics × 4 cells
    a, b = pd.read_parquet(smoke_run / "runs.parquet"), pd.read_parquet(other / "runs.parquet")
    for metric, part in frame.groupby("metric"):
        expected = []
        for r in part.to_dict("records"):
            keys = ["task", "backbone", "strategy", "seed"]
            pair = a.merge(b, on=keys, suffixes=("_a", "_b"))
            pair = pair[(pair["task"] == r["task"]) & (pair["strategy"] == r["strategy"])]
            diff = (pair[f"{metric}_b"] - pair[f"{metric}_a"]).to_numpy()
            assert r["n"] == len(pair) == SEEDS and np.isclose(r["diff"], diff.mean())
            expected.append(sps.ttest_rel(pair[f"{metric}_b"], pair[f"{metric}_a"]).pvalue
                            if diff.std() > 0 else (0.0 if np.abs(diff).max() > 0 else 1.0))
        assert np.allclose(part["p_holm"], multipletests(expected, method="holm")[1])
    assert (out / "figures" / "compare.png").is_file() and (out / "compare.tex").is_file()


def test_compare_refuses_stores_tested_on_different_data(smoke_run: Path, tmp_path, capsys) -> None:
    other = tmp_path / "split"
    assert main(["run", "smoke", "--out", str(other), "--strategies", "scratch", "--tasks", "digits-2shot",
                 "--set", "tasks.digits-2shot.split.seed=1", "--report", "none"]) == 0
    capsys.readouterr()
    assert main(["compare", str(smoke_run), str(other), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "digits-2shot / glyph-cnn / scratch" in err[0] and "different data" in err[0]
    assert not (tmp_path / "cmp").exists()


def _trials(out: Path) -> list:
    """The tuning trials of every study, compactly, for failure messages."""
    storage = open_storage(None, out)
    rows = []
    for s in optuna.get_all_study_summaries(storage):
        if s.study_name.endswith("::tune"):
            study = optuna.load_study(study_name=s.study_name, storage=storage)
            rows.append((s.study_name.split("::")[1:4], [(t.number, t.state.name[:4], t.value, t.user_attrs.get("seed"),
                         t.user_attrs.get("retry_of")) for t in study.trials]))
    return rows


def test_run_writes_the_report(smoke_run: Path) -> None:
    for name in ("runs.parquet", "runs.csv", "trials.parquet", "table.md", "table.tex", "report.html",
                 "figures/accuracy.png", "figures/accuracy.pdf", "figures/cd_diagram.png",
                 "figures/cost_accuracy.png", "figures/tuning_curves.png"):
        assert (smoke_run / name).is_file(), name
    trials = pd.read_parquet(smoke_run / "trials.parquet")
    tuned = trials[trials["state"].isin(["COMPLETE", "PRUNED"])].groupby(["task", "strategy"]).size()
    assert (tuned == TRIALS).all() and "ensemble" not in set(trials["strategy"])


@pytest.mark.slow
def test_report_command_reads_only_the_store(smoke_run: Path, tmp_path) -> None:
    before = trial_counts(smoke_run)
    out = tmp_path / "report"
    # In a process of its own: reading stored results needs no torch (importing it takes 1.7 s).
    program = ("import sys; from tlbench.cli.main import main; code = main(sys.argv[1:]); "
               "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr); sys.exit(code)")
    got = subprocess.run([sys.executable, "-c", program, "report", str(smoke_run), "--out", str(out)],
                         capture_output=True, text=True, timeout=600)
    assert got.returncode == 0, got.stderr[-2000:]
    assert got.stderr.splitlines()[-1] == "no torch"
    assert trial_counts(smoke_run) == before  # nothing trained
    line = next(x for x in got.stderr.splitlines() if x.startswith("wrote the report"))
    for path in out.rglob("*"):  # every file written, named in the one line
        assert path.is_dir() or path.name in line, path
    assert "figures/ (" in line and "slice_full_finetune.pdf" in line
    body = (out / "table.md").read_text().split("\n", 1)[1]
    assert body == (smoke_run / "table.md").read_text().split("\n", 1)[1]  # same tables as the run's
    # (`report --storage` on a journal: tests/test_store_integrity.py, on small stores)
    # every number is recomputable from runs.parquet: one cell by hand
    runs = pd.read_parquet(out / "runs.parquet")
    ft = runs[(runs["strategy"] == "full_finetune") & (runs["task"] == "digits-2shot")]["test_accuracy"]
    lines = body.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| strategy |") and "digits-2shot" in line)
    column = next(j for j, c in enumerate(lines[header].split("|")) if c.strip().startswith("digits-2shot"))
    row = next(line for line in lines[header:] if line.startswith("| full_finetune |"))  # the main table's
    assert row.split("|")[column].strip(" *†").split(" ±")[0] == f"{ft.mean() * 100:.1f}"


@pytest.mark.parametrize("args,needle", [
    (["report", "{tmp}/nowhere"], "no store there"),
    (["report", "--storage", "{tmp}/missing.journal"], "no such journal file"),
    (["report", "{tmp}/empty"], "holds no evaluation runs"),
    (["report"], "exactly one"),
    (["report", "{tmp}/empty", "--suite", "nope"], "suites there: none"),
])
def test_report_of_a_missing_or_empty_store_is_one_line(tmp_path, capsys, args, needle) -> None:
    (tmp_path / "empty").mkdir()
    open_storage(None, tmp_path / "empty")  # an empty journal
    (tmp_path / "empty" / "store.journal").touch()
    rc = main([a.format(tmp=tmp_path) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("tlbench: error: ") and needle in err[0]


def test_the_runner_reports_to_an_observer_and_writes_no_report(tmp_path: Path) -> None:
    """run_plan prints nothing and writes no report: it tells an observer what happens and
    returns what it ran; the command line renders and reports."""
    from tlbench.core.paths import default_cache_dir
    from tlbench.run.cell import RunObserver
    from tlbench.run.plan import load_plan
    from tlbench.run.runner import run_plan
    from tlbench.training.context import make_runtime

    events: list[tuple[str, ...]] = []

    class Recording(RunObserver):
        def plan_started(self, plan):
            events.append(("plan", str(len(plan.cells))))

        def cell_started(self, cell, *, phase, total):
            events.append(("start", cell.strategy, phase, str(total)))

        def cell_finished(self, cell, outcome):
            events.append(("done", cell.strategy, outcome.summary.split(":")[0]))

    smoke = Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml"
    plan = load_plan(smoke, trials=2, seeds=1, strategies=["linear_probe", "scratch"])
    storage = open_storage(None, tmp_path)
    result = run_plan(plan, out=tmp_path, storage=storage, runtime=make_runtime("cpu", None),
                      cache_dir=default_cache_dir(), observer=Recording())
    assert events[0] == ("plan", "4")
    assert ("start", "linear_probe", "tuning", "2") in events and ("start", "scratch", "evaluating", "1") in events
    assert [e[1] for e in events if e[0] == "done"] == ["linear_probe", "scratch"] * 2
    assert len(result.seeds) == 1 and all(o.evaluated for o in result.outcomes)
    assert not (tmp_path / "table.md").exists() and not (tmp_path / "report.html").exists()
    assert len(load_runs(storage)) == 2 * 2  # tasks × strategies × 1 seed
