from __future__ import annotations

import optuna
import pytest
from helpers import run_context
from optuna.trial import TrialState

from tlbench.core.budget import Budget
from tlbench.core.errors import NonFiniteLoss
from tlbench.run.tuning import make_study, tune
from tlbench.store.claims import recover_orphans, worker_id
from tlbench.store.opening import open_storage
from tlbench.store.progress import evaluation_seed, tuning_seed
from tlbench.strategies.base import ModelPredictor, Strategy


class FlakyStrategy(Strategy):
    """Diverges (NaN loss) when x > 0.5, else reports x as validation accuracy."""

    name = "flaky"
    description = "test double"

    def search_space(self, trial, backbone):
        return {"x": trial.suggest_float("x", 0.0, 1.0)}

    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        if params["x"] > 0.5:
            raise NonFiniteLoss(0, float("nan"))
        for epoch in range(3):
            reporter.report(epoch, params["x"])
        return ModelPredictor(backbone, device=runtime.device, trainable=1)


def test_nan_trials_are_pruned_with_reason_and_budget_is_exact(tmp_path, runtime) -> None:
    storage = open_storage(None, tmp_path)
    study = make_study("s::t::b::flaky::tune", storage, budget=Budget(trials=8), seed=0)
    result = tune(study, FlakyStrategy(), None, None, budget=Budget(trials=8), suite_seed=0, runtime=runtime)
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 8 == result.n_complete + result.n_pruned
    nan_trials = [t for t in trials if t.params["x"] > 0.5]
    assert nan_trials, "the seeded sampler should propose some diverging configurations"
    for t in nan_trials:
        assert t.state == TrialState.PRUNED and "non-finite" in t.user_attrs["prune_reason"]
    assert result.best_value == max(t.value for t in trials if t.state == TrialState.COMPLETE)
    assert {t.user_attrs["seed"] for t in trials} == {tuning_seed(0, t.number) for t in trials}
    # A second call with the same budget runs nothing.
    tune(study, FlakyStrategy(), None, None, budget=Budget(trials=8), suite_seed=0, runtime=runtime)
    assert len(study.get_trials()) == len(trials)


def forged_claim(study, attrs, *, worker=None):
    """A claim as another worker makes it (by default a dead process on this host)."""
    import tlbench.store.claims as store
    from tlbench.store.claims import claim
    real = store.worker_id
    store.worker_id = lambda: worker or (real().rsplit(":", 2)[0] + ":999999999:1")
    try:
        return claim(study, attrs, lambda t: False)
    finally:
        store.worker_id = real


def test_dead_workers_claims_are_failed_and_their_slots_retried(tmp_path, runtime) -> None:
    from tlbench.run.tuning import tune_step

    clean = make_study("s::t::b::flaky::tune", open_storage(None, tmp_path / "clean"), budget=Budget(trials=4), seed=0)
    tune(clean, FlakyStrategy(), None, None, budget=Budget(trials=4), suite_seed=0, runtime=runtime)
    study = make_study("s::t::b::flaky::tune", open_storage(None, tmp_path), budget=Budget(trials=4), seed=0)
    dead = forged_claim(study, {"slot": 1, "seed": tuning_seed(0, 1), "params": {"x": 0.3}})
    foreign = study.ask()  # a trial no tlbench worker made: ignored by the slots
    foreign.set_user_attr("worker", "no-such-host-is-this:1:1")
    mine = study.ask()  # stamped by this process, which does not hold it: left over from an earlier run
    mine.set_user_attr("worker", worker_id())
    tune(study, FlakyStrategy(), None, None, budget=Budget(trials=4), suite_seed=0, runtime=runtime)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[dead.number] == TrialState.FAIL == states[mine.number]
    assert "orphaned" in study.trials[dead.number].user_attrs["failed_reason"]
    assert states[foreign.number] == TrialState.RUNNING
    assert recover_orphans(study) == []
    retried = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == dead.number]
    assert len(retried) == 1 and retried[0].user_attrs["slot"] == 1
    # every slot trained what an uninterrupted worker trained there
    assert _by_slot(study) == _by_slot(clean)
    assert tune_step(study, FlakyStrategy(), None, None, budget=Budget(trials=4), suite_seed=0,
                     runtime=runtime) == "done"


def _by_slot(study):
    from tlbench.store.progress import slot_of

    return sorted((slot_of(t), t.params["x"], t.user_attrs["seed"], t.state) for t in study.trials
                  if t.state in (TrialState.COMPLETE, TrialState.PRUNED))


def test_a_slot_a_live_worker_holds_elsewhere_is_waited_for(tmp_path, runtime) -> None:
    from tlbench.run.tuning import tune_step
    from tlbench.store.progress import summarize

    study = make_study("s::t::b::flaky::tune", open_storage(None, tmp_path), budget=Budget(trials=5), seed=0)
    held = forged_claim(study, {"slot": 0, "seed": tuning_seed(0, 0)}, worker="another-host:12:34")
    steps = [tune_step(study, FlakyStrategy(), None, None, budget=Budget(trials=5), suite_seed=0, runtime=runtime)
             for _ in range(4)]
    # slots 1 and 2 are random start-up trials (free to run); slot 3 waits for slot 0's result
    assert steps == ["ran", "ran", "wait", "wait"]
    assert sorted(t.user_attrs["slot"] for t in study.trials if t.state != TrialState.RUNNING) == [1, 2]
    study.tell(held.number, 0.25)  # the other host finishes its slot
    tune(study, FlakyStrategy(), None, None, budget=Budget(trials=5), suite_seed=0, runtime=runtime)
    assert summarize(study, Budget(trials=5)).done and len(study.trials) == 5


def test_two_claims_of_one_unit_leave_one(tmp_path) -> None:
    from tlbench.store.claims import claim, lost_claim

    study = make_study("s::t::b::flaky::tune", open_storage(None, tmp_path), budget=Budget(trials=5), seed=0)
    same = lambda t: t.user_attrs.get("slot") == 3  # noqa: E731
    first = claim(study, {"slot": 3}, same)
    assert first is not None and claim(study, {"slot": 3}, same) is None
    loser = study.trials[-1]
    assert loser.state == TrialState.FAIL and lost_claim(loser) and loser.user_attrs["claim_lost"] == first.number
    study.tell(first.number, state=TrialState.FAIL)  # the holder fails: the unit is free again
    assert claim(study, {"slot": 3}, same) is not None


def test_tuning_and_evaluation_seeds_are_distinct() -> None:
    tuning = {tuning_seed(s, n) for s in range(3) for n in range(1000)}
    evaluation = {evaluation_seed(s, k) for s in range(3) for k in range(100)}
    assert not tuning & evaluation


def test_open_storage_variants(tmp_path) -> None:
    from tlbench.core.errors import ConfigError

    open_storage(f"journal:{tmp_path / 'a.journal'}", tmp_path)
    open_storage(str(tmp_path / "b.journal"), tmp_path)
    rdb = open_storage(f"sqlite:///{tmp_path / 'c.db'}", tmp_path)
    optuna.create_study(study_name="x", storage=rdb)
    with pytest.raises(ConfigError, match="--storage"):
        open_storage("nosuchdb://user@host/db", tmp_path)


class InterruptedStrategy(FlakyStrategy):
    def fit(self, backbone, task, params, *, seed, reporter, runtime):
        raise KeyboardInterrupt


def test_ctrl_c_fails_the_trial_and_queues_its_configuration(tmp_path, runtime) -> None:
    storage = open_storage(None, tmp_path)
    study = make_study("s::t::b::flaky::tune", storage, budget=Budget(trials=2), seed=0)
    with pytest.raises(KeyboardInterrupt):
        tune(study, InterruptedStrategy(), None, None, budget=Budget(trials=2), suite_seed=0, runtime=runtime)
    first = study.trials[0]
    assert first.state == TrialState.FAIL and first.user_attrs["failed_reason"] == "interrupted"
    tune(study, FlakyStrategy(), None, None, budget=Budget(trials=2), suite_seed=0, runtime=runtime)
    retry = study.trials[1]
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params and retry.user_attrs["slot"] == 0


def test_best_is_chosen_within_the_budget(tmp_path, runtime) -> None:
    from tlbench.store.progress import summarize

    study = make_study("s::t::b::flaky::tune", open_storage(None, tmp_path), budget=Budget(trials=12), seed=0)
    tune(study, FlakyStrategy(), None, None, budget=Budget(trials=12), suite_seed=0, runtime=runtime)
    first4 = [t for t in study.trials if t.number < 4 and t.state == TrialState.COMPLETE]
    small = summarize(study, Budget(trials=4))
    assert small.n_complete + small.n_pruned == 4
    assert small.best_value == max(t.value for t in first4)
    assert summarize(study, Budget(trials=12)).best_value >= small.best_value


@pytest.mark.parametrize("complete", [True, False, None],
                         ids=["killed-in-fit", "killed-while-suggesting", "a-foreign-running-trial"])
def test_resumed_sampling_equals_uninterrupted(tmp_path, runtime, complete: bool | None) -> None:
    clean = make_study("c::t::b::flaky::tune", open_storage(None, tmp_path / "a"), budget=Budget(trials=8), seed=3)
    tune(clean, FlakyStrategy(), None, None, budget=Budget(trials=8), suite_seed=0, runtime=runtime)
    resumed_storage = open_storage(None, tmp_path / "b")
    part = make_study("c::t::b::flaky::tune", resumed_storage, budget=Budget(trials=8), seed=3)
    tune(part, FlakyStrategy(), None, None, budget=Budget(trials=3), suite_seed=0, runtime=runtime)
    if complete is None:  # a RUNNING trial tlbench did not make takes no slot
        dead = part.ask()
        dead.suggest_float("x", 0.0, 1.0)
    else:  # a worker dies in slot 3: in fit, or before its configuration was whole
        dead = forged_claim(part, {"slot": 3, "seed": tuning_seed(0, 3)})
        part._storage.set_trial_param(dead._trial_id, "x", 0.123,
                                      optuna.distributions.FloatDistribution(0.0, 1.0))
        if complete:
            part._storage.set_trial_user_attr(dead._trial_id, "params", {"x": 0.123})
    again = make_study("c::t::b::flaky::tune", resumed_storage, budget=Budget(trials=8), seed=3)
    tune(again, FlakyStrategy(), None, None, budget=Budget(trials=8), suite_seed=0, runtime=runtime)

    def finished(study):
        return [(t.params["x"], t.user_attrs["seed"], t.state) for t in study.trials
                if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]

    assert finished(again) == finished(clean)
    assert any(t.user_attrs.get("retry_of") == dead.number for t in again.trials) == (complete is not None)


def test_evaluation_waits_for_seeds_a_live_worker_holds(tmp_path, tiny_backbone, tiny_task, runtime) -> None:
    import subprocess
    import sys

    from tlbench.core.processes import proc_start
    from tlbench.run.evaluation import evaluate, evaluate_step
    from tlbench.strategies import STRATEGIES

    storage = open_storage(None, tmp_path)
    study = optuna.create_study(study_name="s::t::b::linear_probe::eval", storage=storage)
    probe = STRATEGIES.get("linear_probe")(epochs=(2, 2), batch_size=8)
    params = {"lr": 0.01, "weight_decay": 1e-4, "epochs": 2}
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    kwargs = dict(seeds=[10, 11, 12], context=run_context(suite="s"), runtime=runtime)
    try:
        held = forged_claim(study, {"seed": 11, "params": params},
                            worker=f"{worker_id().rsplit(':', 2)[0]}:{other.pid}:{proc_start(other.pid)}")
        steps = [evaluate_step(study, probe, tiny_backbone, tiny_task, params, **kwargs) for _ in range(3)]
        assert steps == ["ran", "ran", "wait"]
        assert sorted(t.user_attrs["seed"] for t in study.trials if t.state == TrialState.COMPLETE) == [10, 12]
    finally:
        other.kill()
        other.wait()
    records = evaluate(study, probe, tiny_backbone, tiny_task, params, **kwargs)  # its holder died: run here
    assert [r.seed for r in records] == [11]
    assert study.trials[held.number].state == TrialState.FAIL
