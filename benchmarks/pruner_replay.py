"""What any pruner could save on a store's unpruned tuning studies, and what bounds it.

Replays the learning curves of tuning studies run without pruning (``search.pruner=none``): every
trial's validation accuracy after each epoch and its final value are in the store, so a pruner's
decisions can be replayed trial by trial, in slot order, exactly as Optuna's pruner would make them
against the trials before. For each candidate (Optuna's median, percentile, patient, successive
halving and Hyperband pruners at several settings; the median pruner and successive halving also
comparing trials at the same share of their own schedules) it reports how many fewer backbone epochs the
cells would train and how much lower their best validation accuracy would be, beside what a
*random* choice of as many finished trials would lose (the best of fewer noisy draws), and how well
a trial's early validation accuracy ranks its final one. ``--signal loss`` replays the pruners on
the per-epoch validation *loss* instead (tuning trials keep it as ``val_loss``; the pruners see its
negative, as they maximise): a continuous signal where accuracy on a small validation set moves in
steps.

A replay keeps the sampler's proposals as they were (a model-based sampler would propose differently
after pruned trials), so it estimates the frontier; ``test_bench_pruners.py`` measures pruners for
real, side by side.

``python benchmarks/pruner_replay.py STORE [STORE ...]`` (the stores of unpruned runs; each tuning
study needs at least ``--trials`` finished trials).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import TrialState
from scipy.stats import spearmanr

from tlbench.core.errors import ConfigError
from tlbench.store.opening import open_existing_storage
from tlbench.store.progress import slot_of, trial_compute

P = optuna.pruners


@dataclass(frozen=True)
class Curve:
    """One finished trial: what the pruner sees after each epoch (validation accuracy, or the negative
    validation loss), its objective (validation accuracy), its backbone epochs."""

    history: tuple[float, ...]
    value: float
    compute: float


@dataclass(frozen=True)
class Replay:
    ratio: float  # backbone epochs without pruning / with it
    lost: float  # mean best validation accuracy lost per cell, points
    worst: float  # the largest loss of one cell, points
    finished: float  # mean trials per cell the pruner lets finish
    random_lost: float  # what the best of as many randomly chosen finished trials loses, points


#: Separates a cell's key in a replay from its study's own name: ``"0|quick::digits-2shot::…::tune"``
#: (the replay runs each cell under its study's own name, which Hyperband's brackets hash).
SEP = "|"


SIGNALS = ("accuracy", "loss")


def curves(storage: str | optuna.storages.BaseStorage, trials: int = 20,
           skipped: list[str] | None = None, signal: str = "accuracy") -> dict[str, list[Curve]]:
    """The first ``trials`` slots of each tuning study in ``storage`` (a store as ``--storage`` names
    one: a journal file or a database URL, opened read-only; or an Optuna storage), for studies whose
    slots all completed unpruned with per-epoch accuracies, and with ``signal="loss"`` the per-epoch
    validation losses too (each curve is then the losses' negatives); the names of the other tuning
    studies are appended to ``skipped``."""
    if signal not in SIGNALS:
        raise ValueError(f"signal: {signal!r}; one of {', '.join(SIGNALS)}")
    if isinstance(storage, str):
        storage = open_existing_storage(storage)  # a missing one is a ConfigError, not a new empty store
    cells: dict[str, list[Curve]] = {}
    for name in optuna.get_all_study_names(storage):
        if not name.endswith("::tune"):
            continue
        study = optuna.load_study(study_name=name, storage=storage)
        by_slot = {slot_of(t): t for t in study.get_trials(deepcopy=False)
                   if t.state == TrialState.COMPLETE and slot_of(t) is not None}
        histories = [_history(by_slot[s], signal) if s in by_slot else None for s in range(trials)]
        if None in histories:
            if skipped is not None:
                skipped.append(name)
            continue
        cells[name] = [Curve(h, float(by_slot[s].value), trial_compute(by_slot[s])) for s, h in enumerate(histories)]
    return cells


def _history(trial: optuna.trial.FrozenTrial, signal: str) -> tuple[float, ...] | None:
    """What the pruner sees after each of ``trial``'s epochs; None when the trial does not have it (a
    loop that reports no per-epoch accuracy; with ``"loss"``, a trial stored before losses were kept)."""
    accuracies = tuple(trial.intermediate_values[k] for k in sorted(trial.intermediate_values))
    if signal == "accuracy" or not accuracies:
        return accuracies or None
    losses = trial.user_attrs.get("val_loss") or ()
    if len(losses) != len(accuracies):
        return None
    return tuple(-math.inf if v is None else -float(v) for v in losses)  # None: a loss that was not finite


def expected_best_of_subset(values: Sequence[float], k: int) -> float:
    """The mean of the best of ``k`` values drawn without replacement from ``values``."""
    v, n = sorted(values), len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k must be 1..{n}, got {k}")
    return sum(math.comb(i, k - 1) * v[i] for i in range(k - 1, n)) / math.comb(n, k)


def replay(cells: dict[str, list[Curve]], make: Callable[[], optuna.pruners.BasePruner],
           progress: int | None = None) -> Replay:
    """Each cell's trials, in slot order, under a fresh pruner from ``make``: a pruned trial trains
    its epochs up to the one it was pruned after (each epoch costing its share of the trial's
    compute) and does not count for the best.

    Each cell is replayed in a study of its own name (the part of its key after :data:`SEP`), so
    Hyperband puts each slot in the bracket the harness's ``SlotHyperbandPruner`` would.

    ``progress``: the pruner compares trials at the same share of *their own* schedules instead of
    the same epoch: a trial of E epochs reports at each of ``progress`` points the accuracy after the
    first epoch that reaches it (point k: k/progress of E; steps 0 … progress−1, as epochs count from
    0), several points after one epoch when E < progress; so a 60-epoch trial is judged after 6 epochs
    where a 10-epoch one is after 1. Warm-up and rungs then count points, not epochs."""
    full = spent = 0.0
    lost, random_lost, finished = [], [], []
    for key, trials in cells.items():
        study = optuna.create_study(study_name=key.split(SEP, 1)[-1], direction="maximize", pruner=make(),
                                    sampler=optuna.samplers.RandomSampler(0))
        best, done = -math.inf, 0
        for c in trials:
            trial, epochs, pruned = study.ask(), len(c.history), False
            reported = 0  # points reported so far
            for epoch, acc in enumerate(c.history):
                if progress is None:
                    steps = [epoch]
                else:
                    reached = progress * (epoch + 1) // len(c.history)
                    steps, reported = list(range(reported, reached)), max(reported, reached)
                for step in steps:
                    trial.report(acc, step)
                    if trial.should_prune():
                        pruned = True
                        break
                if pruned:
                    epochs = epoch + 1
                    break
            full += c.compute
            spent += c.compute * epochs / max(1, len(c.history))
            if pruned:
                study.tell(trial, state=TrialState.PRUNED)
            else:
                study.tell(trial, c.value)
                best, done = max(best, c.value), done + 1
        values = [c.value for c in trials]
        lost.append((max(values) - max(best, 0.0)) * 100)  # every trial pruned: nothing found
        random_lost.append((max(values) - (expected_best_of_subset(values, done) if done else 0.0)) * 100)
        finished.append(done)
    return Replay(full / spent, float(np.mean(lost)), float(np.max(lost)), float(np.mean(finished)),
                  float(np.mean(random_lost)))


def unpruned_within(cells: dict[str, list[Curve]], budget: Callable[[str], float]) -> Replay:
    """No pruning under an epochs budget, as the harness runs one: each cell's trials in slot order,
    each started while the cell has spent less than ``budget(key)`` backbone epochs and run to its
    end. Without pruning a slot's proposal does not depend on the later ones, so these are the trials
    such a run trains (up to the float rounding of trials grouped side by side)."""
    full = spent = 0.0
    lost, random_lost, finished = [], [], []
    for key, trials in cells.items():
        used, kept = 0.0, []
        for c in trials:
            if used >= budget(key):
                break
            used += c.compute
            kept.append(c.value)
        values = [c.value for c in trials]
        full, spent = full + sum(c.compute for c in trials), spent + used
        lost.append((max(values) - max(kept)) * 100)
        random_lost.append((max(values) - expected_best_of_subset(values, len(kept))) * 100)
        finished.append(len(kept))
    return Replay(full / spent, float(np.mean(lost)), float(np.max(lost)), float(np.mean(finished)),
                  float(np.mean(random_lost)))


def rank_agreement(cells: dict[str, list[Curve]], fraction: float, keep: float = 1 / 3) -> tuple[float, float]:
    """How well the signal (validation accuracy or negative loss) after ``fraction`` of a trial's
    epochs predicts its final value: the mean Spearman correlation over cells (those where neither is
    constant), and the share of cells where a best final trial (any, when several tie) is among the
    best ``keep`` of the trials at that point."""
    rhos, hits = [], []
    for trials in cells.values():
        early = [c.history[max(1, round(fraction * len(c.history))) - 1] for c in trials]
        final = np.asarray([c.value for c in trials])
        if len(set(early)) > 1 and len(set(final.tolist())) > 1:
            rhos.append(spearmanr(early, final).statistic)
        top = set(np.argsort(-np.asarray(early), kind="stable")[:max(1, round(keep * len(trials)))].tolist())
        hits.append(bool(top & set(np.flatnonzero(final == final.max()).tolist())))
    return float(np.mean(rhos)) if rhos else math.nan, float(np.mean(hits))


Candidate = tuple[Callable[[], optuna.pruners.BasePruner], int | None]


def candidates() -> dict[str, Candidate]:
    """Optuna's pruners over the settings a user would try (warm-up and first rung in epochs), and
    the median pruner and successive halving comparing trials at the same share of their schedules
    (``progress``; warm-up and rungs in points)."""
    grid: dict[str, Callable[[], optuna.pruners.BasePruner]] = {}
    for w in (3, 5, 10):
        for s in (3, 5):
            grid[f"median, {s} start-up, warm-up {w}"] = lambda s=s, w=w: P.MedianPruner(s, w)
        for pct in (33, 67):
            grid[f"percentile {pct}, warm-up {w}"] = lambda p=pct, w=w: P.PercentilePruner(p, n_startup_trials=3,
                                                                                         n_warmup_steps=w)
        grid[f"patient (2) median, warm-up {w}"] = lambda w=w: P.PatientPruner(P.MedianPruner(3, w), patience=2)
    for m in (1, 3, 5, 10):
        for r in (2, 3, 4):
            grid[f"successive halving, rung {m}, r {r}"] = lambda m=m, r=r: P.SuccessiveHalvingPruner(
                min_resource=m, reduction_factor=r)
        grid[f"hyperband, rung {m}, r 3"] = lambda m=m: P.HyperbandPruner(min_resource=m, reduction_factor=3)
    out: dict[str, Candidate] = {name: (make, None) for name, make in grid.items()}
    for k in (10, 20):
        for w in (1, 3):
            out[f"median at {k} points, warm-up {w}"] = (lambda w=w: P.MedianPruner(3, w), k)
        for m, r in ((1, 3), (1, 4), (2, 3)):
            out[f"successive halving at {k} points, rung {m}, r {r}"] = (
                lambda m=m, r=r: P.SuccessiveHalvingPruner(min_resource=m, reduction_factor=r), k)
    return out


def frontier(cells: dict[str, list[Curve]], grid: dict[str, Candidate] | None = None) -> list[tuple[str, Replay]]:
    """Every candidate's replay, the most saving first."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rows = [(name, replay(cells, make, progress)) for name, (make, progress) in (grid or candidates()).items()]
    return sorted(rows, key=lambda r: -r[1].ratio)


def summary(cells: dict[str, list[Curve]], *, goal: tuple[float, float] = (3.0, 0.5),
            signal: str = "accuracy") -> str:
    """The frontier table, the settings meeting ``goal`` (fewer epochs, points lost) and the rank
    agreement of the early signal and the final validation accuracy."""
    seen = "validation accuracy" if signal == "accuracy" else "validation loss (its negative)"
    out = []
    out.append(f"{len(cells)} cells, their first {len(next(iter(cells.values())))} trials each, replayed without "
               "their sampler's reaction to pruning (warm-ups and rungs in epochs, or in points of each trial's "
               f"schedule); the pruners see the {seen} after each epoch")
    out.append(f"{'pruner':48s} {'fewer epochs':>12s} {'lost':>6s} {'worst':>6s} {'finished':>8s} {'random':>7s}")
    met = []
    for name, r in frontier(cells):
        out.append(f"{name:48s} {r.ratio:11.2f}x {r.lost:6.2f} {r.worst:6.1f} {r.finished:8.1f} {r.random_lost:7.2f}")
        if r.ratio >= goal[0] and r.lost <= goal[1]:
            met.append(name)
    out.append(f"meeting >= {goal[0]:g}x for <= {goal[1]:g} points: {', '.join(met) or 'none'}")
    early = "accuracy" if signal == "accuracy" else "−loss"
    for f in (0.1, 0.25, 0.5):
        rho, hit = rank_agreement(cells, f)
        out.append(f"after {f:.0%} of its epochs: Spearman(early {early}, final accuracy) {rho:.2f}; the best final "
                   f"trial among the best third then in {hit:.0%} of cells")
    return "\n".join(out)


def cells_of(stores: list[str], trials: int = 20, skipped: list[str] | None = None,
             signal: str = "accuracy") -> dict[str, list[Curve]]:
    """The replayable cells of several stores, keyed ``"<store's index>|<study name>"``."""
    return {f"{i}{SEP}{name}": c for i, store in enumerate(stores)
            for name, c in curves(store, trials, skipped, signal).items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pruner_replay.py", description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+", help="stores (journal files or database URLs) of runs with "
                                                  "search.pruner=none")
    parser.add_argument("--trials", type=int, default=20,
                        help="the first N trials of each cell are replayed (the suite's trials per cell; at least 2)")
    parser.add_argument("--signal", choices=SIGNALS, default="accuracy",
                        help="what the pruners see after each epoch: the validation accuracy (as the harness prunes) "
                             "or the validation loss")
    args = parser.parse_args(argv)
    if args.trials < 2:
        parser.error(f"--trials: {args.trials}; a replay needs at least 2 trials per cell")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    skipped: list[str] = []
    try:
        cells = cells_of(args.stores, args.trials, skipped, args.signal)
    except ConfigError as err:
        parser.error(str(err).replace("--storage ", "store ", 1))  # a positional argument here
    kept = "per-epoch accuracies" + (" and losses" if args.signal == "loss" else "")
    if not cells:
        later = "; a store written before tuning trials kept their val_loss has none" if args.signal == "loss" else ""
        parser.error(f"no tuning study in {', '.join(args.stores)} whose first {args.trials} trials all completed "
                     f"with {kept} (run the suite with --set search.pruner=none; --trials N for N trials per "
                     f"cell{later})")
    if skipped:
        print(f"left out {len(skipped)} tuning studies whose first {args.trials} trials did not all complete with "
              f"{kept}: {', '.join(skipped)}")
    print(summary(cells, signal=args.signal))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
