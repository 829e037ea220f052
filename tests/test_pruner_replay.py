"""benchmarks/pruner_replay.py: replaying unpruned learning curves under a pruner."""

from __future__ import annotations

import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def replay_module():
    spec = importlib.util.spec_from_file_location("pruner_replay", ROOT / "benchmarks" / "pruner_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["pruner_replay"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("pruner_replay", None)


def test_the_expected_best_of_a_subset_is_the_mean_over_every_subset(replay_module) -> None:
    values = [0.2, 0.9, 0.5, 0.9, 0.1, 0.7]
    for k in range(1, len(values) + 1):
        brute = np.mean([max(c) for c in itertools.combinations(values, k)])
        assert replay_module.expected_best_of_subset(values, k) == pytest.approx(brute)
    with pytest.raises(ValueError):
        replay_module.expected_best_of_subset(values, 0)


def _cell(replay_module, curves: list[tuple[list[float], float]]) -> dict:
    return {"cell": [replay_module.Curve(tuple(h), v, float(len(h))) for h, v in curves]}


def test_no_pruner_saves_nothing_and_loses_nothing(replay_module) -> None:
    cells = _cell(replay_module, [([0.1 * i] * 10, 0.1 * i) for i in range(8)])
    r = replay_module.replay(cells, optuna.pruners.NopPruner)
    assert (r.ratio, r.lost, r.worst, r.finished, r.random_lost) == (1.0, 0.0, 0.0, 8.0, 0.0)


def test_a_median_pruner_is_replayed_as_optuna_decides(replay_module) -> None:
    """Three start-up trials train their ten epochs; the fourth is below their median after its
    first epoch (warm-up 0) and stops there; the fifth is above and finishes, and is the best."""
    good, bad, best = [0.5] * 10, [0.1] * 10, [0.6] * 10
    cells = _cell(replay_module, [(good, 0.5), (good, 0.5), (good, 0.5), (bad, 0.1), (best, 0.6)])
    r = replay_module.replay(cells, lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    assert r.ratio == pytest.approx(50 / 41)  # 4 × 10 epochs + 1
    assert (r.lost, r.finished) == (0.0, 4.0)
    # the best final trial pruned early: its 0.6 is lost against the 0.5 kept
    late = [0.05] * 9 + [0.6]
    cells = _cell(replay_module, [(good, 0.5), (good, 0.5), (good, 0.5), (late, 0.6)])
    r = replay_module.replay(cells, lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0))
    assert r.lost == pytest.approx(10.0) and r.finished == 3.0
    assert r.random_lost == pytest.approx((0.6 - (0.6 * 3 + 0.5) / 4) * 100)  # 3 of the 4 triples hold the 0.6


def test_curves_are_read_from_a_store_in_slot_order(replay_module, tmp_path: Path) -> None:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    study = optuna.create_study(study_name="suite::task::bb::full_finetune::tune", storage=storage,
                                direction="maximize")
    for slot in (1, 0):  # run out of order: slots, not trial numbers, order the replay
        trial = study.ask()
        trial.set_user_attr("slot", slot)
        trial.set_user_attr("compute", 3.0 + slot)
        for epoch in range(3):
            trial.report(0.1 * (slot + 1) * (epoch + 1), epoch)
        study.tell(trial, 0.5 + slot)
    optuna.create_study(study_name="suite::task::bb::full_finetune::eval", storage=storage)
    silent = optuna.create_study(study_name="suite::task::bb::own_loop::tune", storage=storage, direction="maximize")
    for slot in (0, 1):  # a strategy whose loop reports no accuracy per epoch: nothing to replay
        trial = silent.ask()
        trial.set_user_attr("slot", slot)
        silent.tell(trial, 0.5)
    cells = replay_module.curves(str(tmp_path / "s.journal"), trials=2)
    assert list(cells) == ["suite::task::bb::full_finetune::tune"]
    first, second = cells["suite::task::bb::full_finetune::tune"]
    assert first.value == 0.5 and first.compute == 3.0 and first.history == pytest.approx((0.1, 0.2, 0.3))
    assert second.value == 1.5 and second.compute == 4.0
    assert replay_module.curves(str(tmp_path / "s.journal"), trials=3) == {}  # a slot missing: not replayable
    rho, hit = replay_module.rank_agreement(cells, 0.5)
    assert rho == pytest.approx(1.0) and hit == 1.0
    assert replay_module.curves(str(tmp_path / "s.journal"), trials=2, signal="loss") == {}  # no losses kept


def test_the_loss_signal_replays_the_negative_validation_losses(replay_module, tmp_path: Path) -> None:
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    losses = {"kept": [[2.0, 1.5, 1.2], [2.2, None, 0.4]], "short": [[2.0, 1.5], [2.2, 1.0, 0.4]]}
    for name, kept in losses.items():  # "short": one trial's losses miss an epoch (not the same curve)
        study = optuna.create_study(study_name=f"s::t::bb::{name}::tune", storage=storage, direction="maximize")
        for slot in (0, 1):
            trial = study.ask()
            trial.set_user_attr("slot", slot)
            trial.set_user_attr("val_loss", kept[slot])
            for epoch in range(3):
                trial.report(0.2 * (epoch + 1), epoch)
            study.tell(trial, 0.6 + 0.1 * slot)
    skipped: list[str] = []
    cells = replay_module.curves(str(tmp_path / "s.journal"), trials=2, skipped=skipped, signal="loss")
    assert list(cells) == ["s::t::bb::kept::tune"] and skipped == ["s::t::bb::short::tune"]
    first, second = cells["s::t::bb::kept::tune"]
    assert first.history == (-2.0, -1.5, -1.2) and second.history == (-2.2, -math.inf, -0.4)  # None: not finite
    assert (first.value, second.value) == pytest.approx((0.6, 0.7))  # the objective stays the accuracy
    assert len(replay_module.curves(str(tmp_path / "s.journal"), trials=2)) == 2  # accuracy needs no losses
    rho, _ = replay_module.rank_agreement(cells, 1 / 3)  # after one epoch the loss ranks them the wrong way
    assert rho == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="signal: 'acc'; one of accuracy, loss"):
        replay_module.curves(str(tmp_path / "s.journal"), signal="acc")


def test_a_replay_is_the_same_every_time(replay_module) -> None:
    """Hyperband assigns a trial's bracket from a hash of its study's name: each cell is replayed
    in a study named after it, not a fresh random name."""
    rng = np.random.default_rng(0)
    cells = {f"cell{c}": [replay_module.Curve(tuple(np.cumsum(rng.uniform(0, 0.05, 30)).tolist()),
                                              float(rng.uniform(0.5, 1)), 30.0) for _ in range(20)]
             for c in range(6)}

    def hyperband():
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)

    assert len({replay_module.replay(cells, hyperband) for _ in range(4)}) == 1


def test_progress_compares_trials_at_the_same_share_of_their_schedules(replay_module) -> None:
    """A 20-epoch trial that starts slowly is below a 10-epoch one after 5 epochs (pruned there
    when epochs are compared) but above it halfway through both schedules (kept when progress is)."""
    short = [0.0] * 4 + [0.5] * 6
    slow = [0.1] * 9 + [0.6] * 10 + [0.7]
    cells = {"cell": [replay_module.Curve(tuple(short), 0.5, 10.0), replay_module.Curve(tuple(slow), 0.7, 20.0)]}

    def median():
        return optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)

    by_epoch = replay_module.replay(cells, median)
    assert (by_epoch.ratio, by_epoch.lost, by_epoch.finished) == (pytest.approx(30 / 15), pytest.approx(20.0), 1.0)
    by_progress = replay_module.replay(cells, median, progress=2)
    assert (by_progress.ratio, by_progress.lost, by_progress.finished) == (1.0, 0.0, 2.0)


def test_a_cell_whose_every_trial_is_pruned_has_found_nothing(replay_module) -> None:
    class PruneAll(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    cells = _cell(replay_module, [([0.5] * 4, 0.5), ([0.7] * 4, 0.7)])
    r = replay_module.replay(cells, PruneAll)
    assert (r.ratio, r.lost, r.finished, r.random_lost) == (4.0, pytest.approx(70.0), 0.0, pytest.approx(70.0))


class Recorder(optuna.pruners.BasePruner):
    """Prunes nothing; keeps what each trial had reported whenever it was asked."""

    def __init__(self) -> None:
        self.seen: list[dict[int, float]] = []

    def prune(self, study, trial) -> bool:
        self.seen.append(dict(trial.intermediate_values))
        return False


def test_epochs_are_steps_from_0_as_the_harness_reports_them(replay_module) -> None:
    """Epochs count from 0 (as TrialReporter reports them), so a warm-up of w epochs first prunes
    after epoch w + 1; a rung at w likewise."""
    cells = _cell(replay_module, [([0.5] * 10, 0.5), ([0.1] * 10, 0.1)])
    r = replay_module.replay(cells, lambda: optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=2))
    assert r.ratio == pytest.approx(20 / 13)
    recorder = Recorder()
    replay_module.replay(_cell(replay_module, [([0.1, 0.2, 0.3], 0.3)]), lambda: recorder)
    assert recorder.seen[-1] == {0: 0.1, 1: 0.2, 2: 0.3}


def test_progress_reports_every_point_a_short_schedule_passes_in_one_epoch(replay_module) -> None:
    """Four points of a three-epoch schedule: points 1 and 2 after epochs 1 and 2, points 3 and 4
    both after epoch 3 (each reported with the accuracy after the first epoch that reaches it)."""
    recorder = Recorder()
    replay_module.replay(_cell(replay_module, [([0.1, 0.2, 0.3], 0.3)]), lambda: recorder, progress=4)
    assert recorder.seen == [{0: 0.1}, {0: 0.1, 1: 0.2}, {0: 0.1, 1: 0.2, 2: 0.3}, {0: 0.1, 1: 0.2, 2: 0.3, 3: 0.3}]
    recorder = Recorder()  # more epochs than points, not a multiple: the first epoch at or past each point
    replay_module.replay(_cell(replay_module, [([0.1 * i for i in range(1, 8)], 0.7)]), lambda: recorder, progress=3)
    assert recorder.seen[-1] == pytest.approx({0: 0.3, 1: 0.5, 2: 0.7})  # epochs 3, 5, 7 reach 7/3, 14/3, 7


def test_hyperband_brackets_are_the_harness_s(replay_module) -> None:
    """A cell is replayed under its study's own name, whatever its key's prefix: Optuna's Hyperband
    puts a trial in a bracket by a hash of the study's name and the trial's number (its slot)."""
    rng = np.random.default_rng(1)
    trials = [replay_module.Curve(tuple(np.cumsum(rng.uniform(0, 0.05, 30)).tolist()), float(rng.uniform(0.5, 1)), 30.0)
              for _ in range(20)]

    def hyperband():
        return optuna.pruners.HyperbandPruner(min_resource=1, reduction_factor=3)

    names = [f"quick::t{c}::bb::full_finetune::tune" for c in range(6)]
    as_named = replay_module.replay({n: trials for n in names}, hyperband)
    assert replay_module.replay({f"7|{n}": trials for n in names}, hyperband) == as_named
    assert replay_module.replay({f"{n}-renamed": trials for n in names}, hyperband) != as_named


def test_no_pruning_within_an_epochs_budget_starts_trials_while_it_is_not_spent(replay_module) -> None:
    cells = _cell(replay_module, [([0.5] * 10, 0.5), ([0.6] * 10, 0.6), ([0.9] * 10, 0.9)])
    r = replay_module.unpruned_within(cells, lambda key: 15.0)  # the second trial starts at 10 < 15, runs to 20
    assert (r.ratio, r.finished, r.lost) == (pytest.approx(30 / 20), 2.0, pytest.approx(30.0))
    assert replay_module.unpruned_within(cells, lambda key: 10.0).finished == 1.0


def test_rank_agreement_credits_any_of_tied_best_trials(replay_module) -> None:
    # final values tie at the top (slots 0 and 2); early, slot 2 is the best and slot 0 the worst
    cells = _cell(replay_module, [([0.1, 0.9], 0.9), ([0.5, 0.5], 0.5), ([0.8, 0.9], 0.9)])
    rho, hit = replay_module.rank_agreement(cells, 0.5, keep=1 / 3)
    assert hit == 1.0
    rho, hit = replay_module.rank_agreement(_cell(replay_module, [([0.5], 0.5), ([0.5], 0.5)]), 1.0)
    assert np.isnan(rho) and hit == 1.0  # constant: no correlation, no warning


def test_bad_command_lines_are_one_line_naming_what_is_wrong(replay_module, tmp_path: Path, capsys) -> None:
    cases = [
        ([str(tmp_path / "nope.journal")], ("error: store '", "nope.journal': no such journal file")),
        ([str(tmp_path / "typo")], ("error: store '", "typo': not a store; accepted:")),
        ([str(tmp_path / "s.journal"), "--trials", "1"], ("--trials: 1; a replay needs at least 2 trials per cell",)),
        ([str(tmp_path / "s.journal")], ("whose first 20 trials all completed with per-epoch accuracies",)),
        ([str(tmp_path / "s.journal"), "--signal", "loss"], ("with per-epoch accuracies and losses",
                                                            "written before tuning trials kept their val_loss")),
        ([str(tmp_path / "s.journal"), "--signal", "los"], ("argument --signal: invalid choice: 'los'",)),
    ]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "s.journal")))
    optuna.create_study(study_name="suite::task::bb::full_finetune::tune", storage=storage)  # no trials: nothing
    for argv, messages in cases:
        with pytest.raises(SystemExit) as exit_:
            replay_module.main(argv)
        assert exit_.value.code == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("pruner_replay.py: error: ") and all(m in error for m in messages), error
    assert not (tmp_path / "nope.journal").exists()  # reading never creates a store
