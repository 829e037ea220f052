"""Choices a strategy makes after its last epoch, on validation data (WiSE-FT's mixing coefficient, SWA,
a temperature): tuning maximises the validation accuracy they give (``report_final``), every run records
them (``Predictor.choose``), and the report shows them beside the tuned hyperparameters."""

from __future__ import annotations

import copy

import optuna
import pytest

from tlbench import ModelPredictor, Strategy, accuracy, finetune, new_classifier, report_final, suggest_optimizer
from tlbench.core.budget import Budget
from tlbench.reports.tables import hyperparameter_tables, to_markdown
from tlbench.run.evaluation import evaluate
from tlbench.run.tuning import make_study, tune
from tlbench.store.opening import open_storage
from tlbench.store.records import load_runs
from tlbench.testing import check_strategy
from tlbench.training.loop import NullReporter, SpendOnly


class WiseFT(Strategy):
    """Fine-tuning, then the weights interpolated back towards where fine-tuning started, the mixing
    coefficient chosen on validation data (Wortsman et al. 2022, "Robust fine-tuning of zero-shot models")."""

    name = "wise_ft"
    description = "fine-tuning, then weights mixed with the starting ones (mix chosen on validation data)"

    def search_space(self, trial, backbone):
        return {**suggest_optimizer(trial), "epochs": self.suggest_epochs(trial)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        model = new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime)
        start = copy.deepcopy(model.state_dict())
        predictor = finetune(model, task, params, seed=seed, reporter=reporter, runtime=runtime,
                             batch_size=self.batch_size)
        tuned = copy.deepcopy(model.state_dict())

        def mix(alpha: float) -> None:
            model.load_state_dict({k: start[k] + alpha * (v - start[k]) if v.is_floating_point() else v
                                   for k, v in tuned.items()})

        scores = {}
        for alpha in (0.0, 0.5, 1.0):
            mix(alpha)
            scores[alpha] = accuracy(predictor.logits(task.val), task.val.y)
        best = max(scores, key=lambda a: (scores[a], a))
        mix(best)
        report_final(reporter, scores[best])
        return predictor.choose(alpha=best)


def test_the_tuning_objective_is_the_validation_accuracy_after_the_choice(tmp_path, tiny_task, tiny_backbone,
                                                                        cell_runtime) -> None:
    class Marked(WiseFT):
        name = "marked"

        def fit(self, backbone, task, params, *, seed, reporter, runtime):
            reporter.report(0, 0.25)
            reporter.report(1, 0.5)
            report_final(reporter, 0.875)
            return ModelPredictor(new_classifier(backbone, task.num_classes, seed=seed, runtime=runtime),
                                  device=runtime.device, trainable=1).choose(temperature=1.5)

    study = make_study("s::t::b::marked::tune", open_storage(None, tmp_path), budget=Budget(trials=3), seed=0)
    tune(study, Marked(epochs=(2, 2)), tiny_backbone, tiny_task, budget=Budget(trials=3), suite_seed=0,
         runtime=cell_runtime)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    assert all(t.value == 0.875 and list(t.intermediate_values.values()) == [0.25, 0.5] for t in done)
    assert all(t.user_attrs["chosen"] == {"temperature": 1.5} for t in done)


def test_a_choice_is_recorded_with_each_run_and_shown_beside_the_tuned_hyperparameters(
        tmp_path, tiny_task, tiny_backbone, cell_runtime) -> None:
    from helpers import run_context

    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s::tiny::tiny-backbone::wise_ft::eval", storage=storage,
                                direction="maximize")
    strategy = WiseFT(epochs=(2, 2), batch_size=8)
    params = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "warmup_fraction": 0.0, "epochs": 2}
    records = evaluate(study, strategy, tiny_backbone, tiny_task, params, seeds=[1, 2], runtime=cell_runtime,
                       context=run_context(strategy="wise_ft"))
    assert all(set(r.chosen) == {"alpha"} and r.chosen["alpha"] in (0.0, 0.5, 1.0) for r in records)
    runs = load_runs(storage)
    assert runs["chosen"].tolist() == [r.chosen for r in records]
    [table] = hyperparameter_tables(runs)
    text = to_markdown(table)
    assert "alpha (after fit)" in text and "chosen by the strategy after training, on validation data" in text
    assert table.header[-1] == "alpha (after fit)"  # after the tuned ones


def test_a_strategy_that_chooses_after_fit_keeps_the_contract() -> None:
    check_strategy(WiseFT).assert_ok()


def test_report_final_takes_an_accuracy_and_reporters_that_cannot_hold_it() -> None:
    with pytest.raises(ValueError, match=r"report_final: a validation accuracy in \[0, 1\], got 1.5"):
        report_final(NullReporter(), 1.5)
    null = NullReporter()
    report_final(null, 0.5)
    assert null.final == 0.5

    class Plain:  # a plugin's reporter with report and spend only
        def report(self, epoch, value):
            pass

        def spend(self, flops):
            pass

    report_final(Plain(), 0.5)  # nothing to tell: no error
    report_final(SpendOnly(null), 0.75)  # a stage of a strategy (LP-FT's probe): not the trial's choice
    assert null.final == 0.5
