"""Typed, versioned records: study names, run records, the protocol, and stores written by
the previous release (tests/data/release-0.1.0: a smoke run of linear_probe, full_finetune,
distillation and ensemble by tlbench 0.1.0 before records were versioned, with the table
that release's ``tlbench report`` wrote from it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import pytest

from tlbench.cli.main import main
from tlbench.core.budget import Budget
from tlbench.core.errors import TlbenchError
from tlbench.store.opening import open_storage
from tlbench.store.records import SCHEMA_VERSION, RunRecord, StoreError, StudyName, load_runs, read_protocol
from tlbench.strategies.base import ModelPredictor

RELEASE = Path(__file__).resolve().parent / "data" / "release-0.1.0"
#: A store written by tlbench at schema 4 before its modules were regrouped into layers (commit f6196e7):
#: tests/data/schema-4/schema4.yaml run with `--report tables` (a search-space override, a sensitivity
#: study, reused models), and the table `tlbench report` wrote from it.
SCHEMA4 = Path(__file__).resolve().parent / "data" / "schema-4"


def old_store(tmp_path: Path) -> Path:
    path = tmp_path / "old" / "store.journal"
    path.parent.mkdir()
    shutil.copy(RELEASE / "store.journal", path)
    return path


def test_study_names_are_built_and_parsed_in_one_place() -> None:
    name = StudyName("quick", "digits-2shot", "glyph-cnn", "lp_ft", "eval")
    assert str(name) == "quick::digits-2shot::glyph-cnn::lp_ft::eval"
    assert StudyName.parse(str(name)) == name and name.cell == ("digits-2shot", "glyph-cnn", "lp_ft")
    for foreign in ("x", "a::b::c::d::other", "a::b::c::d::e::tune", "a::::c::d::tune"):
        assert StudyName.parse(foreign) is None, foreign


def test_a_report_of_the_previous_releases_store_is_the_same(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = old_store(tmp_path)
    assert main(["report", str(journal.parent), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "table.md").read_text() == (RELEASE / "table.md").read_text()
    runs = load_runs(open_storage(str(journal), tmp_path))
    assert (runs["schema_version"] == SCHEMA_VERSION).all() and len(runs) == 16
    kd = runs[runs["strategy"] == "distillation"]
    assert kd["teacher"].str.startswith("full_finetune#").all()  # strategy facts: still columns
    assert (runs[runs["strategy"] == "ensemble"]["ensemble_size"] > 0).all()


def test_a_report_of_a_store_written_before_the_layers_moved_is_the_same(tmp_path: Path) -> None:
    from tlbench.reports.results import load_results

    journal = tmp_path / "s4" / "store.journal"
    journal.parent.mkdir()
    shutil.copy(SCHEMA4 / "store.journal", journal)
    assert main(["report", str(journal.parent), "--out", str(tmp_path / "report")]) == 0
    assert (tmp_path / "report" / "table.md").read_text() == (SCHEMA4 / "table.md").read_text()
    results = load_results(open_storage(str(journal), tmp_path), importances=False)
    assert len(results.runs) == 20 and set(results.runs["strategy"]) == {"linear_probe", "full_finetune", "lp_ft",
                                                                         "distillation", "ensemble"}
    assert len(results.sensitivity) == 4 and {"varied:lr_sgd", "tuned:lr_sgd"} <= set(results.sensitivity.columns)
    assert results.search_spaces["full_finetune"]["lr_sgd"] == "[0.001, 0.1] (log)"
    assert results.protocol is not None and results.protocol.budget == Budget(trials=3)


def test_a_newer_schema_is_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = old_store(tmp_path)
    storage = open_storage(str(journal), tmp_path)
    record = load_runs(storage).iloc[0].to_dict()
    study = optuna.create_study(study_name=str(StudyName("smoke", "t", "b", "s", "eval")), storage=storage)
    trial = study.ask()
    trial.set_user_attr("record", {**{k: v for k, v in record.items() if isinstance(v, (str, int, float))},
                                   "schema_version": SCHEMA_VERSION + 1})
    study.tell(trial, 0.5)
    before = journal.read_bytes()
    assert main(["report", str(journal.parent), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert f"schema version {SCHEMA_VERSION + 1}" in err and "smoke::t::b::s::eval" in err and "upgrade" in err
    assert journal.read_bytes() == before  # nothing stored was touched


def test_version_1_records_keep_strategy_facts_apart_from_metrics() -> None:
    flat = {"suite": "s", "task": "t", "backbone": "b", "strategy": "distillation", "tuning_budget": 3,
            "tuning_seeds": "0..2", "suite_fingerprint": "f", "backbone_weights": "w", "seed": 1, "params": {},
            "test_accuracy": 0.5, "val_accuracy": 0.4, "train_seconds": 2.0, "own_train_seconds": 1.0,
            "trainable_parameters": 10, "inference_parameters": 20, "inference_seconds": 0.1,
            "inference_ms_per_example": 0.01, "n_train": 5, "n_val": 5, "n_test": 5, "num_classes": 2,
            "split_fingerprint": "x", "started_at": "now", "tlbench_version": "0.1.0", "torch_version": "2",
            "git_commit": "c", "device": "cpu", "host": "h", "teacher": "full_finetune#1"}
    record = RunRecord.from_stored(flat)
    assert record.schema_version == SCHEMA_VERSION and record.strategy_info == {"teacher": "full_finetune#1"}
    assert record.row()["teacher"] == "full_finetune#1" and record.row()["test_accuracy"] == 0.5
    assert RunRecord.from_stored(record.model_dump()) == record
    assert record.metrics.test_accuracy == 0.5 and record.tuning.budget.trials == 3 and record.cell.task == "t"
    dump = record.model_dump()
    with pytest.raises(StoreError, match=r"malformed \(metrics.test_accuracy"):
        RunRecord.from_stored({**dump, "metrics": {**dump["metrics"], "test_accuracy": "high"}})


def test_records_are_grouped_and_the_runs_frame_keeps_its_columns() -> None:
    """A record is a few typed groups (cell, tuning, metrics, costs, data, provenance), none with dozens of
    flat fields; the runs frame still has one column per field, as before schema 5, so analyses and reports
    read the same columns from stores of any schema."""
    from tlbench.store.records import GROUPS, RunContext

    assert len(RunRecord.model_fields) <= 12 and len(RunContext.model_fields) <= 4
    assert all(len(block.model_fields) <= 12 for block in GROUPS.values())
    journal = SCHEMA4 / "store.journal"
    old = load_runs(open_storage(str(journal), journal.parent))
    assert (old["schema_version"] == SCHEMA_VERSION).all()
    assert set(RunRecord.columns()) <= set(old.columns)
    assert old["tuning_budget"].tolist() == [3] * len(old) and old["tuning_budget_epochs"].isna().all()


def test_a_strategy_fact_cannot_take_a_metrics_name() -> None:
    predictor = ModelPredictor(__import__("torch").nn.Linear(2, 2), device=__import__("torch").device("cpu"),
                               trainable=4)
    predictor.annotate(teacher="x")
    with pytest.raises(TypeError, match="test_accuracy would shadow"):
        predictor.annotate(test_accuracy=1.0)


def test_a_missing_protocol_is_an_error_not_a_question_mark() -> None:
    with pytest.raises(TlbenchError, match="study s::t::b::x::tune: the tuning protocol is missing"):
        read_protocol({}, where="study s::t::b::x::tune")
    with pytest.raises(StoreError):
        read_protocol({"protocol": {"sampler": "TPESampler"}}, where="w")


def test_load_results_opens_a_store_by_its_path_and_never_creates_one(tmp_path: Path) -> None:
    import tlbench

    journal = old_store(tmp_path)
    results = tlbench.load_results(str(journal), "smoke", importances=False)
    assert len(results.runs) == 16 and results.protocol is not None and results.protocol.budget == Budget(trials=3)
    assert tlbench.load_results(f"journal:{journal}", importances=False).runs.equals(results.runs)
    numbers = results.stats  # statistics as data, from a store an older release wrote
    means = numbers[(numbers["statistic"] == "mean") & (numbers["metric"] == "test_accuracy")]
    assert len(means) == results.runs.groupby(["task", "backbone", "strategy"]).ngroups
    for r in means.to_dict("records"):
        cell = results.runs[(results.runs["task"] == r["task"]) & (results.runs["strategy"] == r["strategy"])]
        assert r["value"] == pytest.approx(cell["test_accuracy"].mean()) and r["n"] == len(cell)
    with pytest.raises(TlbenchError, match="no such journal file"):
        tlbench.load_results(tmp_path / "typo" / "store.journal")
    assert not (tmp_path / "typo").exists()


def test_a_tuning_study_without_its_protocol_is_skipped(tmp_path: Path) -> None:
    """A run killed between creating a tuning study and storing its protocol leaves such a study."""
    import tlbench

    journal = old_store(tmp_path)
    storage = open_storage(str(journal), tmp_path)
    optuna.create_study(study_name=str(StudyName("smoke", "t", "b", "s", "tune")), storage=storage)
    results = tlbench.load_results(storage, "smoke", importances=False)
    assert results.protocol is not None and len(results.runs) == 16


def test_an_invalid_run_record_fails_its_trial_in_one_line(tiny_backbone, tiny_task, runtime) -> None:
    from helpers import run_context
    from optuna.trial import TrialState

    from tlbench.run.evaluation import evaluate
    from tlbench.strategies import STRATEGIES, Predictor

    class Uncounted(Predictor):
        trainable_parameters = None  # a plugin's predictor that does not say
        inference_parameters = 10

        def __init__(self, inner: Predictor) -> None:
            self.inner = inner

        def logits(self, split):
            return self.inner.logits(split)

    class NoCount(STRATEGIES.get("linear_probe")):  # type: ignore[misc,valid-type]
        name = "no_count"

        def fit(self, *args, **kwargs):
            return Uncounted(super().fit(*args, **kwargs))

    study = optuna.create_study(direction="maximize")
    probe = NoCount(epochs=(2, 2), batch_size=8)
    with pytest.raises(TlbenchError, match=r"strategy 'no_count': its run record is invalid \(costs\.trainable_param"):
        evaluate(study, probe, tiny_backbone, tiny_task, {"lr": 0.01, "weight_decay": 1e-4, "epochs": 2},
                 seeds=[1], context=run_context(), runtime=runtime)
    assert [t.state for t in study.trials] == [TrialState.FAIL]


def test_inference_is_timed_after_a_warm_up_and_scored_on_the_first_pass(tiny_backbone, tiny_task, runtime) -> None:
    from helpers import run_context

    from tlbench.run.evaluation import evaluate
    from tlbench.strategies import STRATEGIES, Predictor
    from tlbench.training.loop import INFERENCE_REPEATS, NullReporter, accuracy

    calls: list[int] = []

    class Counted(Predictor):
        trainable_parameters = 1
        inference_parameters = 1

        def __init__(self, inner: Predictor) -> None:
            self.inner = inner

        def logits(self, split):
            out = self.inner.logits(split)
            if split is tiny_task.test:
                calls.append(len(calls))
                if len(calls) > 1:  # a timed repeat: its logits must not be what is scored
                    out = -out
            return out

        def inference_seconds(self, split, *, measured):
            return measured  # what the harness measured, not the probe's own backbone timing

    class CountedProbe(STRATEGIES.get("linear_probe")):  # type: ignore[misc,valid-type]
        name = "counted"

        def fit(self, *args, **kwargs):
            return Counted(super().fit(*args, **kwargs))

    params = {"lr": 0.05, "weight_decay": 1e-4, "epochs": 3}
    [record] = evaluate(optuna.create_study(direction="maximize"), CountedProbe(epochs=(3, 3), batch_size=8),
                        tiny_backbone, tiny_task, params, seeds=[1], context=run_context(), runtime=runtime)
    assert len(calls) == 1 + INFERENCE_REPEATS  # one warm-up pass, then the timed ones
    plain = STRATEGIES.get("linear_probe")(epochs=(3, 3), batch_size=8).fit(
        tiny_backbone, tiny_task, params, seed=1, reporter=NullReporter(), runtime=runtime)
    assert record.metrics.test_accuracy == accuracy(plain.logits(tiny_task.test), tiny_task.test.y)
    assert record.costs.inference_seconds > 0


def test_records_name_the_checkout_commit() -> None:
    """Run from a git checkout (as the tests and CI are), every record's git_commit is its HEAD (with -dirty
    for local changes); it used to be "unknown" because the package folder, not the checkout, was compared
    with git's top level."""
    import subprocess

    from tlbench.core.provenance import _CHECKOUT, git_commit

    head = subprocess.run(["git", "-C", str(_CHECKOUT), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    git_commit.cache_clear()
    assert git_commit().removesuffix("-dirty") == head
