"""`tlbench export`: a store's cells to MLflow (a file store here) and TensorBoard (event files), read
back and compared with the store's own numbers; exporting again duplicates nothing; a lab's sink
from an entry point; the refusals, one line each.

The store is a real journal written through the store's API (Optuna studies named by ``StudyName``,
typed ``RunRecord``s): two suites, a tuned cell with completed, pruned, failed and running trials
and a stale evaluation run of an earlier configuration, and an untuned cell (no tuning study)."""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tlbench.cli.main import main
from tlbench.core.budget import Budget
from tlbench.core.errors import ConfigError
from tlbench.reports.export import (CellExport, ExportSummary, MlflowSink, Sink, TensorBoardSink, available_sinks,
                                    cells_of, export_results, sink_class)
from tlbench.reports.results import Results, load_results
from tlbench.store.opening import open_storage
from tlbench.store.records import (CellFacts, Costs, DataFacts, Metrics, Provenance, RunRecord, StudyName,
                                   TuningFacts)

TUNED = {"lr": 0.01, "optimizer": "adamw", "epochs": 3}
STALE = {"lr": 0.1, "optimizer": "sgd", "epochs": 3}  # an earlier best configuration: not exported
DISTRIBUTIONS = {"lr": FloatDistribution(1e-4, 1.0, log=True), "optimizer": CategoricalDistribution(["sgd", "adamw"])}


def record(suite: str, task: str, backbone: str, strategy: str, seed: int, accuracy: float,
           params: dict) -> dict:
    return RunRecord(
        cell=CellFacts(suite=suite, task=task, backbone=backbone, strategy=strategy, suite_fingerprint="f00d",
                       backbone_weights="pretrained:abc"),
        tuning=TuningFacts(budget=Budget(trials=3), best_val_accuracy=0.75, trials_complete=2, trials_pruned=1,
                           seconds=4.5, compute=2.25, seeds="0..2"),
        seed=seed, params=params, chosen={"temperature": 1.5} if strategy == "ensemble" else {},
        metrics=Metrics(test_accuracy=accuracy, val_accuracy=accuracy - 0.05, shifted_test_accuracy=accuracy - 0.2),
        costs=Costs(train_seconds=1.0 + seed % 10, own_train_seconds=1.0, trainable_parameters=330,
                    inference_parameters=6274, inference_seconds=0.25, inference_ms_per_example=0.01),
        data=DataFacts(n_train=20, n_val=10, n_test=30, num_classes=3, split_fingerprint="5p1it"),
        provenance=Provenance(started_at=f"2026-01-02T03:04:{seed % 60:02d}+00:00", tlbench_version="0.1.0",
                              torch_version="2.4", git_commit="c0ffee", device="cpu", host="lab"),
        strategy_info={"teacher": "full_finetune"} if strategy == "ensemble" else {},
    ).model_dump()


def write_tuning(storage, suite: str, task: str, backbone: str, strategy: str) -> None:
    study = optuna.create_study(study_name=str(StudyName(suite, task, backbone, strategy, "tune")), storage=storage,
                                direction="maximize")
    trials = [(TrialState.COMPLETE, 0.6, STALE), (TrialState.COMPLETE, 0.75, TUNED), (TrialState.PRUNED, None, STALE),
              (TrialState.FAIL, None, TUNED)]
    for number, (state, value, params) in enumerate(trials):
        attrs = {"slot": number, "seed": number, "seconds": 1.5, "compute": 0.75,
                 "params": {**params}, **({"failed_reason": "out of memory"} if state == TrialState.FAIL else {})}
        study.add_trial(create_trial(
            state=state, value=value, params={k: params[k] for k in DISTRIBUTIONS}, distributions=DISTRIBUTIONS,
            user_attrs=attrs, intermediate_values={0: 0.5, 1: 0.55} if state == TrialState.PRUNED else {0: 0.5}))
    study.ask()  # a trial still running: exported once it finishes


def write_evaluation(storage, suite: str, task: str, backbone: str, strategy: str, seeds: list[int],
                     params: dict, *, stale: bool = False) -> None:
    study = optuna.create_study(study_name=str(StudyName(suite, task, backbone, strategy, "eval")), storage=storage,
                                direction="maximize", load_if_exists=True)
    study.set_user_attr("params", params)
    if stale:
        study.add_trial(create_trial(value=0.9, user_attrs={"record": record(suite, task, backbone, strategy,
                                                                               500000, 0.9, STALE)}))
    for k, seed in enumerate(seeds):
        accuracy = 0.5 + 0.1 * k
        study.add_trial(create_trial(value=accuracy, user_attrs={"record": record(suite, task, backbone, strategy,
                                                                                  seed, accuracy, params)}))


def build_store(out: Path, seeds: tuple[int, ...] = (500000, 500001)) -> Path:
    """A run directory whose store.journal holds suite ``mini`` (a tuned cell and an untuned one) and
    suite ``other`` (one tuned cell)."""
    storage = open_storage(None, out)
    write_tuning(storage, "mini", "digits", "cnn", "linear_probe")
    write_evaluation(storage, "mini", "digits", "cnn", "linear_probe", list(seeds), TUNED, stale=True)
    write_evaluation(storage, "mini", "digits", "cnn", "ensemble", list(seeds), {})
    write_tuning(storage, "other", "signals", "cnn1d", "full_finetune")
    write_evaluation(storage, "other", "signals", "cnn1d", "full_finetune", [500000], TUNED)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return build_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(scope="module")
def results(run_dir: Path) -> Results:
    return load_results(run_dir / "store.journal", importances=False)


@pytest.fixture
def file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """MLflow 3 refuses a file store unless this is set (it recommends a database); the tests use one for speed."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def mlflow_runs(uri: str, suite: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(suite)
    assert experiment is not None, suite
    return client.search_runs([experiment.experiment_id], max_results=1000)


def by_key(runs: list) -> dict[str, object]:
    keyed = {run.data.tags["tlbench.key"]: run for run in runs}
    assert len(keyed) == len(runs), "two runs of one key"
    return keyed


def test_the_cells_are_what_the_store_holds(results: Results) -> None:
    cells = {cell.key: cell for cell in cells_of(results)}
    assert sorted(cells) == ["mini::digits::cnn::ensemble", "mini::digits::cnn::linear_probe",
                             "other::signals::cnn1d::full_finetune"]
    probe = cells["mini::digits::cnn::linear_probe"]
    assert [r.seed for r in probe.runs] == [500000, 500001]  # the stale run of the earlier configuration is not
    assert all(r.params == TUNED for r in probe.runs) and probe.params == TUNED
    assert [(t.number, t.state) for t in probe.trials] == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "PRUNED"),
                                                           (3, "FAIL")]  # not the running trial
    assert probe.trials[2].value == pytest.approx(0.55) and probe.trials[3].reason == "out of memory"
    assert probe.budget == {"trials": 3} and probe.tuning["best_val_accuracy"] == 0.75
    assert probe.summary["test_accuracy_mean"] == pytest.approx(0.55)
    assert probe.summary["test_accuracy_std"] == pytest.approx(0.1 / 2 ** 0.5)
    ensemble = cells["mini::digits::cnn::ensemble"]
    assert ensemble.trials == () and ensemble.runs[0].params == {"chosen.temperature": 1.5}
    assert ensemble.runs[0].tags["info.teacher"] == "full_finetune" and ensemble.runs[0].tags["git_commit"] == "c0ffee"
    assert probe.digest == cells_of(results)[1].digest  # stable across reads


def test_mlflow_holds_one_run_per_evaluation_run_and_trial_with_the_stores_numbers(results: Results, tmp_path: Path,
                                                                                  file_store) -> None:
    uri = str(tmp_path / "mlruns")
    done = export_results(results, MlflowSink(uri))
    assert done == ExportSummary(written=tuple(c.key for c in cells_of(results)), unchanged=(), runs=5, trials=8)
    runs = by_key(mlflow_runs(uri, "mini"))
    kinds = [run.data.tags["tlbench.kind"] for run in runs.values()]
    assert sorted(kinds) == ["cell"] * 2 + ["evaluation"] * 4 + ["trial"] * 4
    parent = runs["mini::digits::cnn::linear_probe"]
    cell_tags = {"suite": "mini", "task": "digits", "backbone": "cnn", "strategy": "linear_probe"}
    assert cell_tags.items() <= parent.data.tags.items()
    assert parent.data.params == {"lr": "0.01", "optimizer": "adamw", "epochs": "3", "budget.trials": "3"}
    assert parent.data.metrics["test_accuracy_mean"] == pytest.approx(0.55)
    assert parent.data.metrics["seeds"] == 2 and parent.data.metrics["tuning_compute"] == 2.25
    for row in results.runs[results.runs["suite"] == "mini"].to_dict("records"):
        run = runs[f"mini::digits::cnn::{row['strategy']}::seed={row['seed']}"]
        assert run.data.tags["mlflow.parentRunId"] == runs[f"mini::digits::cnn::{row['strategy']}"].info.run_id
        assert {**cell_tags, "strategy": row["strategy"]}.items() <= run.data.tags.items()
        assert run.data.tags["tlbench.kind"] == "evaluation" and run.data.tags["host"] == "lab"
        hyper = {k: str(v) for k, v in row["params"].items()}
        hyper |= {f"chosen.{k}": str(v) for k, v in row["chosen"].items()}
        assert run.data.params == {**hyper, "seed": str(row["seed"])}
        for metric in ("test_accuracy", "shifted_test_accuracy", "val_accuracy", "train_seconds", "inference_seconds",
                       "trainable_parameters"):
            assert run.data.metrics[metric] == row[metric], metric
        assert run.info.status == "FINISHED"
        assert run.info.start_time == int(datetime.fromisoformat(row["started_at"]).timestamp() * 1000)
    trials = results.trials[(results.trials["suite"] == "mini") & (results.trials["state"] != "RUNNING")]
    for row in trials.to_dict("records"):
        run = runs[f"mini::digits::cnn::linear_probe::trial={row['number']}"]
        assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id and run.data.tags["state"] == row["state"]
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[row["state"]]
        params = {k: str(v) for k, v in json.loads(row["params"]).items()}
        assert run.data.params == {**params, "seed": str(int(row["seed"]))}
        assert run.data.metrics.get("val_accuracy") == (None if math.isnan(row["value"]) else row["value"])
        assert run.data.metrics["seconds"] == row["seconds"] and run.data.metrics["compute"] == row["compute"]
    assert runs["mini::digits::cnn::linear_probe::trial=3"].data.tags["reason"] == "out of memory"
    other = by_key(mlflow_runs(uri, "other"))  # one experiment per suite
    assert len(other) == 1 + 1 + 4 and other["other::signals::cnn1d::full_finetune"].data.tags["suite"] == "other"


def test_exporting_again_to_mlflow_duplicates_nothing_and_replaces_a_changed_cell(tmp_path: Path, results: Results,
                                                                                  file_store) -> None:
    uri = str(tmp_path / "mlruns")
    run = build_store(tmp_path / "run", seeds=(500000,))  # the suite before its second seed ran
    first = export_results(load_results(run / "store.journal", importances=False), MlflowSink(uri))
    assert len(first.written) == 3
    before = by_key(mlflow_runs(uri, "mini"))
    assert len(before) == 2 + 2 + 4
    storage = open_storage(None, run)
    for strategy, params in (("linear_probe", TUNED), ("ensemble", {})):  # the second seed runs
        write_evaluation(storage, "mini", "digits", "cnn", strategy, [500001], params)
    grown = load_results(run / "store.journal", importances=False)
    done = export_results(grown, MlflowSink(uri))
    assert len(done.written) == 2 and done.unchanged == ("other::signals::cnn1d::full_finetune",)
    after = by_key(mlflow_runs(uri, "mini"))
    assert len(after) == 2 + 4 + 4  # the changed cells replaced, nothing twice
    assert after["mini::digits::cnn::ensemble"].info.run_id != before["mini::digits::cnn::ensemble"].info.run_id
    assert after["mini::digits::cnn::ensemble::seed=500001"].data.metrics["test_accuracy"] == 0.5
    again = export_results(grown, MlflowSink(uri))
    assert again.written == () and len(again.unchanged) == 3
    assert {k: r.info.run_id for k, r in by_key(mlflow_runs(uri, "mini")).items()} == {
        k: r.info.run_id for k, r in after.items()}


def test_a_cell_cut_short_is_replaced_by_the_next_export(tmp_path: Path, results: Results, file_store) -> None:
    """The digest tag is set last: a cell whose export stopped halfway is not taken for complete."""
    uri = str(tmp_path / "mlruns")

    class Stops(MlflowSink):
        def _run(self, experiment_id, name, **kwargs):
            if "seed 500001" in name:
                raise KeyboardInterrupt
            return super()._run(experiment_id, name, **kwargs)

    with pytest.raises(KeyboardInterrupt):
        export_results(results, Stops(uri))
    assert export_results(results, MlflowSink(uri)).unchanged == ()
    runs = by_key(mlflow_runs(uri, "mini"))
    assert len(runs) == 2 + 4 + 4


def test_two_stores_of_one_suite_are_kept_apart(tmp_path: Path, file_store) -> None:
    """Two runs of the same suite (runs/quick, runs/quick-wd) exported to one tracker are two sets of
    runs: a cell is identified by its store and its key."""
    uri, tb = str(tmp_path / "mlruns"), tmp_path / "tb"
    first, second = build_store(tmp_path / "quick"), build_store(tmp_path / "quick-wd")
    for run in (first, second):
        results = load_results(run / "store.journal", importances=False)
        assert len(export_results(results, MlflowSink(uri), source=str(run)).written) == 3
    runs = mlflow_runs(uri, "mini")
    assert len(runs) == 2 * (2 + 4 + 4)
    assert {r.data.tags["tlbench.store"] for r in runs} == {str(first), str(second)}
    results = load_results(first / "store.journal", importances=False)
    export_results(results, TensorBoardSink(str(tb)), source=str(first))
    with pytest.raises(ConfigError, match="holds the export of another store"):
        export_results(results, TensorBoardSink(str(tb)), source=str(second))


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def session_hparams(folder: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import metadata

    events = EventAccumulator(str(folder))
    events.Reload()
    content = events.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    info = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in info.hparams.items()}


def test_tensorboard_event_files_hold_the_stores_numbers(results: Results, tmp_path: Path) -> None:
    dest = tmp_path / "tb"
    done = export_results(results, TensorBoardSink(str(dest)))
    assert len(done.written) == 3
    cell = dest / "mini" / "digits" / "cnn" / "linear_probe"
    assert sorted(p.name for p in cell.iterdir()) == [".tlbench-export.json", "seed-500000", "seed-500001", "tuning"]
    for row in results.runs[(results.runs["suite"] == "mini") & (results.runs["strategy"] == "linear_probe")].to_dict(
            "records"):
        scalars = tensorboard_scalars(cell / f"seed-{row['seed']}")
        for metric in ("test_accuracy", "shifted_test_accuracy", "val_accuracy", "train_seconds"):
            [(step, value)] = scalars[f"evaluation/{metric}"]
            assert step == 0 and value == pytest.approx(row[metric], rel=1e-6)  # event files hold float32
        hyper = session_hparams(cell / f"seed-{row['seed']}")
        assert hyper == {"suite": "mini", "task": "digits", "backbone": "cnn", "strategy": "linear_probe",
                         "lr": pytest.approx(0.01), "optimizer": "adamw", "epochs": 3, "seed": row["seed"]}
    tuning = tensorboard_scalars(cell / "tuning")  # the trials as steps
    assert tuning["tuning/val_accuracy"] == [(0, pytest.approx(0.6)), (1, pytest.approx(0.75)),
                                             (2, pytest.approx(0.55))]  # the pruned trial's last value; not failed
    assert tuning["tuning/best_val_accuracy"] == [(0, pytest.approx(0.6)), (1, pytest.approx(0.75)),
                                                  (2, pytest.approx(0.75)), (3, pytest.approx(0.75))]
    assert [step for step, _ in tuning["tuning/seconds"]] == [0, 1, 2, 3]
    assert not (dest / "mini" / "digits" / "cnn" / "ensemble" / "tuning").exists()  # untuned
    assert (dest / "other" / "signals" / "cnn1d" / "full_finetune" / "seed-500000").is_dir()


def test_exporting_again_to_tensorboard_rewrites_only_changed_cells_and_refuses_a_foreign_folder(
        tmp_path: Path, results: Results) -> None:
    dest = tmp_path / "tb"
    run = build_store(tmp_path / "run")
    export_results(load_results(run / "store.journal", importances=False), TensorBoardSink(str(dest)))
    cell = dest / "mini" / "digits" / "cnn" / "linear_probe"
    other = next((dest / "other" / "signals" / "cnn1d" / "full_finetune" / "seed-500000").iterdir())
    retuned = {**TUNED, "lr": 0.02}  # the cell tuned further: a new best configuration, evaluated on seed 500002
    write_evaluation(open_storage(None, run), "mini", "digits", "cnn", "linear_probe", [500002], retuned)
    grown = load_results(run / "store.journal", importances=False)
    done = export_results(grown, TensorBoardSink(str(dest)))
    assert done.written == ("mini::digits::cnn::linear_probe",) and len(done.unchanged) == 2
    assert sorted(p.name for p in cell.glob("seed-*")) == ["seed-500002"]  # the earlier configuration's runs gone
    assert session_hparams(cell / "seed-500002")["lr"] == pytest.approx(0.02)
    assert [len(list((cell / s).iterdir())) for s in ("seed-500002", "tuning")] == [1, 1]  # one event file each
    assert other.is_file()  # an unchanged cell is not rewritten
    assert export_results(grown, TensorBoardSink(str(dest))).written == ()
    foreign = tmp_path / "foreign"
    (foreign / "mini" / "digits" / "cnn" / "linear_probe").mkdir(parents=True)
    (foreign / "mini" / "digits" / "cnn" / "linear_probe" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="is in the way and was not written by tlbench export"):
        export_results(results, TensorBoardSink(str(foreign)))
    assert (foreign / "mini" / "digits" / "cnn" / "linear_probe" / "notes.txt").read_text() == "mine"


def test_the_cli_exports_a_run_directory_or_a_storage_url(run_dir: Path, tmp_path: Path, file_store,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    uri = str(tmp_path / "mlruns")
    assert main(["export", str(run_dir), "--to", "mlflow", uri]) == 0
    err = capsys.readouterr().err
    assert "exported 3 cells (5 evaluation runs, 8 tuning trials)" in err and "3 written" in err
    journal = run_dir / "store.journal"
    assert main(["export", "--storage", str(journal), "--suite", "mini", "--to", "mlflow", uri]) == 0
    err = capsys.readouterr().err  # the same store, named another way: nothing new
    assert "exported 2 cells (4 evaluation runs, 4 tuning trials)" in err and "0 written, 2 unchanged" in err
    runs = mlflow_runs(uri, "mini")
    assert len(runs) == 2 + 4 + 4 and {r.data.tags["tlbench.store"] for r in runs} == {str(journal.resolve())}
    tb = tmp_path / "tb"
    assert main(["export", str(run_dir), "--suite", "other", "--to", "tensorboard", str(tb)]) == 0
    assert "tensorboard --logdir" in capsys.readouterr().err
    assert [p.name for p in tb.iterdir()] == ["other"]


@pytest.mark.parametrize("args, needles", [
    (["--to", "wandb", "x"], ("export --to 'wandb': no such sink", "available: mlflow, tensorboard")),
    (["--suite", "nope", "--to", "tensorboard", "x"], ("--suite 'nope'", "suites there: mini, other")),
    (["--to", "mlflow"], ("--to: expected 2 arguments",)),
], ids=["unknown-sink", "unknown-suite", "no-destination"])
def test_refusals_are_one_line_and_exit_2(run_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                          needles: tuple[str, ...]) -> None:
    assert main(["export", str(run_dir), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


def test_no_store_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path), "--to", "tensorboard", str(tmp_path / "tb")]) == 2
    assert "no store there" in capsys.readouterr().err
    assert not (tmp_path / "tb").exists()


def test_a_missing_package_names_the_extra_to_install(run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(MlflowSink, "requires", ("mlflow_not_installed_here",))
    assert main(["export", str(run_dir), "--to", "mlflow", str(tmp_path / "m")]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == ("tlbench: error: export --to mlflow: needs mlflow_not_installed_here, which is not installed: "
                    "pip install 'tlbench[mlflow]'")


GUIDE = Path(__file__).resolve().parents[1] / "docs" / "guides" / "trackers.md"


def guide_sink() -> str:
    """The guide's example sink, as the guide shows it (the Python block that is the file lab_sinks.py)."""
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), flags=re.DOTALL)
    [block] = [b for b in blocks if b.startswith("# lab_sinks.py\n")]
    return block


def fake_distribution(root: Path, entries: str) -> None:
    dist = root / "lab_sinks-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lab-sinks\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[tlbench.sinks]\n{entries}")
    (root / "lab_sinks.py").write_text(guide_sink())
    (root / "lab_broken.py").write_text("class NotASink:\n    pass\n")


def test_a_lab_registers_its_own_sink_with_an_entry_point(run_dir: Path, results: Results, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """The guide's example sink, installed as a distribution's entry point, exports through the command."""
    fake_distribution(tmp_path, "jsonl = lab_sinks:JsonLines\nbroken = lab_broken:NotASink\n"
                                "tensorboard = lab_sinks:JsonLines\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert available_sinks() == ["mlflow", "tensorboard", "broken", "jsonl"]
    assert sink_class("tensorboard") is TensorBoardSink  # a built-in wins over an entry point of its name
    out = tmp_path / "runs.jsonl"
    assert main(["export", str(run_dir), "--to", "jsonl", str(out)]) == 0
    assert "3 written" in capsys.readouterr().err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    rows = results.runs.to_dict("records")
    assert [(x["cell"], x["seed"]) for x in lines] == [("::".join((r["suite"], r["task"], r["backbone"],
                                                                   r["strategy"])), r["seed"]) for r in rows]
    assert [x["test_accuracy"] for x in lines] == [r["test_accuracy"] for r in rows]
    assert [x.get("lr") for x in lines] == [r["params"].get("lr") for r in rows]
    assert main(["export", str(run_dir), "--to", "jsonl", str(out)]) == 0
    assert "0 written, 3 unchanged since the last export" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--to", "broken", str(out)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "entry point broken = lab_broken:NotASink (group tlbench.sinks, lab-sinks 1.0)" in line
    assert "'NotASink' is not a subclass of tlbench.reports.export.Sink" in line
    assert main(["export", str(run_dir), "--to", "nope", str(out)]) == 2
    assert "available: mlflow, tensorboard (built in), broken, jsonl (entry points)" in capsys.readouterr().err


def test_a_sink_is_typed_and_abstract() -> None:
    with pytest.raises(TypeError):
        Sink("x")  # type: ignore[abstract]
    assert issubclass(MlflowSink, Sink) and issubclass(TensorBoardSink, Sink)
    assert MlflowSink.missing() is None and TensorBoardSink.missing() is None  # installed by the dev extra
    assert CellExport("s", "t", "b", "x").key == "s::t::b::x"
