"""Each private name of Optuna's that tlbench uses (all in tlbench.store.optuna_internals), exercised
against the installed Optuna: an upgrade that moves or changes one fails here, by name, instead of
changing which trials a sampler sees or which worker is judged dead."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path

import optuna
import pytest
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from tlbench.store import optuna_internals as oi
from tlbench.store.opening import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)


def template(**attrs) -> FrozenTrial:
    return FrozenTrial(number=-1, state=TrialState.RUNNING, value=None, datetime_start=dt.datetime.now(),
                       datetime_complete=None, params={}, distributions={}, user_attrs=dict(attrs), system_attrs={},
                       intermediate_values={}, trial_id=-1)


@pytest.fixture(params=["journal", "sqlite", "memory"])
def study(request, tmp_path: Path) -> optuna.Study:
    storage = {"journal": lambda: open_storage(f"journal:{tmp_path / 's.journal'}", tmp_path),
               "sqlite": lambda: open_storage(f"sqlite:///{tmp_path / 's.db'}", tmp_path),
               "memory": lambda: optuna.storages.InMemoryStorage()}[request.param]()
    return optuna.create_study(study_name="s", storage=storage)


def test_a_trial_is_created_stamped_in_one_write_and_found_by_id_and_number(study) -> None:
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    made = oi.create_trial(study, template(worker="w", slot=7))
    frozen = oi.storage_of(study).get_trial(made)
    assert frozen.state == TrialState.RUNNING and frozen.user_attrs == {"worker": "w", "slot": 7}
    assert frozen.number == 2 and oi.trial_id(frozen) == made and oi.study_id(study) == study._study_id
    assert oi.trial_by_number(study, 2).user_attrs["slot"] == 7
    assert oi.trial_id(oi.trial_by_number(study, 0)) != made


def test_forgetting_the_cached_trials_shows_a_trial_made_without_ask(study) -> None:
    study.sampler = optuna.samplers.TPESampler(seed=0)
    study.ask()  # fills the study's cache of trials
    assert hasattr(study._thread_local, "cached_all_trials")
    oi.create_trial(study, template())
    oi.forget_cached_trials(study)
    assert study._thread_local.cached_all_trials is None
    assert len(study._get_trials(deepcopy=False, use_cache=True)) == 2


class FirstThree(oi.StudyView):
    """A view showing a sampler the first three trials only."""

    calls = 0

    def visible(self, trials, *, deepcopy):
        FirstThree.calls += 1
        return [t for t in trials if t.number < 3]


def test_a_sampler_on_a_view_proposes_what_it_would_on_the_trials_the_view_shows(tmp_path: Path) -> None:
    values = [0.1, 0.9, 0.5, 0.2, 0.8, 0.3]
    full = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for x in values:
        full.enqueue_trial({"x": x})
        full.optimize(lambda t: -abs(t.suggest_float("x", 0, 1) - 0.4), n_trials=1)
    few = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    for x in values[:3]:
        few.enqueue_trial({"x": x})
        few.optimize(lambda t: -abs(t.suggest_float("x", 0, 1) - 0.4), n_trials=1)
    full.sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=2)
    few.sampler = optuna.samplers.TPESampler(seed=3, n_startup_trials=2)
    made = oi.create_trial(full, template())
    on_view = oi.trial_on(FirstThree(full), made)
    proposed = on_view.suggest_float("x", 0, 1)
    assert FirstThree.calls > 0
    assert proposed == few.ask().suggest_float("x", 0, 1)
    assert on_view.number == 6  # the trial itself is the study's


@pytest.mark.parametrize("sampler", ["TPESampler", "RandomSampler", "QMCSampler", "CmaEsSampler", "GPSampler",
                                     "NSGAIISampler"])
def test_every_random_state_of_a_sampler_is_found_and_reseeding_repeats_a_draw(sampler) -> None:
    instance = getattr(optuna.samplers, sampler)(seed=1)
    states = list(oi.random_states(instance))
    assert states and all(hasattr(s, "seed") and hasattr(s, "uniform") for s in states)

    def draw() -> list[float]:
        for s in oi.random_states(instance):
            s.seed(12345)
        return [s.uniform() for s in oi.random_states(instance)]

    assert draw() == draw()


class AtIndex(oi.QMCAtIndex, optuna.samplers.QMCSampler):
    def __init__(self, index: int) -> None:
        super().__init__(seed=0, scramble=True)
        self.index = index

    def qmc_index(self) -> int:
        return self.index


def test_a_qmc_trial_gets_the_point_of_the_sequence_it_is_given() -> None:
    def point(index: int, earlier: int) -> float:
        study = optuna.create_study(sampler=AtIndex(index))
        for _ in range(earlier):  # trials before it advance Optuna's own count, not the point given
            study.sampler.index = 0
            study.optimize(lambda t: t.suggest_float("x", 0, 1) + t.suggest_float("y", 0, 1), n_trials=1)
        study.sampler.index = index
        trial = study.ask()
        return (trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1))

    assert point(3, earlier=1) == point(3, earlier=4) != point(4, earlier=1)


def test_heartbeats_stale_trials_and_trials_that_never_beat(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 'h.db'}", tmp_path, heartbeat=1, grace=2)
    study = optuna.create_study(study_name="h", storage=storage)
    assert oi.heartbeat_enabled(storage) and oi.heartbeat_grace(storage) == 2
    assert not oi.heartbeat_enabled(open_storage(f"journal:{tmp_path / 'j.journal'}", tmp_path))
    beating, silent = oi.create_trial(study, template()), oi.create_trial(study, template())
    storage.record_heartbeat(beating)
    assert oi.trials_that_beat(storage, [beating, silent]) == {beating}
    assert oi.trials_that_beat(storage, []) is None
    assert oi.stale_trial_ids(study) == set()
    time.sleep(3.2)  # SQLite keeps whole seconds: a heartbeat seen 2.5 s later may be 2 s old
    assert beating in oi.stale_trial_ids(study)  # its heartbeat is older than the grace period


def test_every_operation_a_journal_line_carries_is_known(tmp_path: Path) -> None:
    journal = tmp_path / "o.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    study = optuna.create_study(study_name="o", storage=storage)
    study.set_user_attr("a", 1)
    trial = study.ask()
    trial.set_user_attr("b", 2)
    trial.report(0.5, 0)
    study.tell(trial, 1.0)
    ops = {json.loads(line)["op_code"] for line in journal.read_text().splitlines()}
    assert len(ops) >= 5 and ops <= oi.JOURNAL_OPS


def test_a_trial_another_worker_finished_is_told_apart_from_other_errors(study) -> None:
    trial = study.ask()
    running = study.ask()
    oi.storage_of(study).set_trial_state_values(oi.trial_id(trial), TrialState.FAIL)  # "judged dead" elsewhere
    with pytest.raises((ValueError, UpdateFinishedTrialError)) as raised:
        study.tell(trial, 1.0)
    assert oi.finished_elsewhere(study, trial, raised.value)
    assert oi.finished_elsewhere(study, trial, UpdateFinishedTrialError("x"))
    assert not oi.finished_elsewhere(study, running, ValueError("a bug in a strategy"))
    assert not oi.finished_elsewhere(study, running, RuntimeError("other"))
