"""The suite's sampler, made resumable: every random state re-derived from (seed, slot).

A trial's *slot* is its place in the budget (0 … trials−1), claimed with the trial
(:func:`slot_of`; :mod:`tlbench.run.tuning`), never counted: a slot retried after a crash keeps
it. Re-seeding a sampler's random state from the slot before each trial makes a resumed study
propose exactly what an uninterrupted one would have, for every sampler whose proposal depends only on the finished
trials and its random state: TPE, random, QMC (whose position in the sequence is the slot,
not a counter that a killed trial has already advanced) and the grid. Two are not exact
after a crash (the crashed configuration itself is still retried first, with its seed):
CMA-ES, seeded the same way, also mixes in the trial number, which a killed trial shifts;
the Gaussian process starts each model fit from the previous trial's fit, which a restarted
process does not have, so its later proposals differ slightly.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from tlbench.store import optuna_internals
from tlbench.store.progress import SEED_STRIDE, slot_of

#: Optuna's class per sampler name of the suite (``search.sampler``).
SAMPLER_CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "qmc": "QMCSampler", "grid": "grid (tlbench)",
                   "cmaes": "CmaEsSampler", "gp": "GPSampler"}
#: Samplers whose resume after ``kill -9`` proposes exactly what an uninterrupted run would.
EXACT_RESUME = ("tpe", "random", "qmc", "grid")


def trial_slot(study: optuna.Study, number: int) -> int:
    """The slot of trial ``number`` (see :func:`slot_of`); a trial without one takes the next
    slot after the study's non-failed trials (for a trial made outside tlbench's tuner)."""
    trial = optuna_internals.trial_by_number(study, number)
    slot = slot_of(trial)
    if slot is not None:
        return slot
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return sum(t.number != number and (t.state != TrialState.RUNNING or "worker" in t.user_attrs) for t in trials)


class SlotView(optuna_internals.StudyView):
    """The study as the trial in ``slot`` sees it: only the trials of lower slots (not failed
    ones), numbered by their slots and in slot order, which is the study a single worker has at that point. The
    sampler and the pruner are handed this view (the trial is built on it), so a proposal and a
    pruning decision depend on (seed, slot, the results of lower slots) only — never on which
    other trials happen to be running or finished when several workers share the study — and a
    slot retried after a crash is proposed the same configuration again."""

    def __init__(self, study: optuna.Study, slot: int) -> None:
        super().__init__(study)
        self.slot = slot

    def visible(self, trials: list[FrozenTrial], *, deepcopy: bool) -> list[FrozenTrial]:
        below = []
        for t in trials:
            slot = slot_of(t)
            # a failed trial (a killed worker's, a lost claim) is no trial of a single worker's study: it is
            # hidden, or its partial results (a rung value under successive halving) would count
            if slot is not None and slot < self.slot and t.state != TrialState.FAIL:
                view = copy.deepcopy(t) if deepcopy else copy.copy(t)
                view.number = slot  # TPE orders by number: slot order is the single worker's order
                below.append(view)
        return sorted(below, key=lambda t: t.number)


def _slot(study: Any, trial: FrozenTrial) -> int:
    slot = slot_of(trial)
    return slot if slot is not None else trial_slot(study.study if isinstance(study, SlotView) else study,
                                                    trial.number)


class SlotSeeded:
    """Mixin: before each trial, every random state of the sampler is re-seeded from
    (seed, slot); the slot is kept in ``self.slot`` for samplers that index by it."""

    _base_seed: int
    slot: int = 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.slot = _slot(study, trial)
        state = (self._base_seed * SEED_STRIDE + self.slot) % 2**32
        for rng in optuna_internals.random_states(self):
            rng.seed(state)
        super().before_trial(study, trial)  # type: ignore[misc]


class SlotSeededTPESampler(SlotSeeded, optuna.samplers.TPESampler):
    def __init__(self, *, seed: int, **kwargs: Any) -> None:
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed


class SlotRandomSampler(SlotSeeded, optuna.samplers.RandomSampler):
    def __init__(self, *, seed: int) -> None:
        super().__init__(seed=seed)
        self._base_seed = seed


class SlotQMCSampler(SlotSeeded, optuna_internals.QMCAtIndex, optuna.samplers.QMCSampler):
    """Scrambled Sobol points; point ``slot`` of the sequence for the trial in that slot (Optuna
    counts points in a study attribute that a killed trial has already advanced)."""

    def __init__(self, *, seed: int) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(seed=seed, scramble=True, warn_independent_sampling=False)
        self._base_seed = seed

    def qmc_index(self) -> int:
        return self.slot


class SlotGPSampler(SlotSeeded, optuna.samplers.GPSampler):
    def __init__(self, *, seed: int, n_startup_trials: int) -> None:
        super().__init__(seed=seed, n_startup_trials=n_startup_trials)
        self._base_seed = seed


def _cmaes_sampler(seed: int, n_startup_trials: int) -> optuna.samplers.BaseSampler:
    try:
        import cmaes  # noqa: F401  (Optuna's CMA-ES needs it)
    except ImportError:
        from tlbench.core.errors import ConfigError

        raise ConfigError("search.sampler: cmaes needs the cmaes package (pip install cmaes)") from None

    class SlotCmaEsSampler(SlotSeeded, optuna.samplers.CmaEsSampler):
        pass

    sampler = SlotCmaEsSampler(seed=seed, n_startup_trials=n_startup_trials, warn_independent_sampling=False)
    sampler._base_seed = seed
    return sampler


class GridSampler(optuna.samplers.BaseSampler):
    """Slot ``i`` trains configuration ``i`` of a fixed list, so each is trained once and a
    resumed grid search continues where it stopped. (Optuna's GridSampler picks an unvisited
    point at random and crosses conditional hyperparameters with branches that never use
    them; this grid is built per branch, see :func:`tlbench.run.spaces.grid`.)"""

    def __init__(self, points: list[dict[str, Any]]) -> None:
        self.points = points
        self.slot = 0

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.slot = _slot(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        point = self.points[self.slot % len(self.points)]
        if param_name not in point:
            raise RuntimeError(f"grid point {self.slot} has no value for {param_name!r}; the strategy's search "
                               f"space changed since the grid was built")
        return point[param_name]


def make_sampler(name: str, *, seed: int, n_startup_trials: int,
                 grid: list[dict[str, Any]] | None = None) -> optuna.samplers.BaseSampler:
    """The sampler ``name`` of :data:`SAMPLER_CLASSES`, seeded per slot."""
    if name == "tpe":
        return SlotSeededTPESampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "random":
        return SlotRandomSampler(seed=seed)
    if name == "qmc":
        return SlotQMCSampler(seed=seed)
    if name == "gp":
        return SlotGPSampler(seed=seed, n_startup_trials=n_startup_trials)
    if name == "cmaes":
        return _cmaes_sampler(seed, n_startup_trials)
    if name == "grid":
        if not grid:
            raise ValueError("a grid sampler needs its grid points")
        return GridSampler(grid)
    raise ValueError(f"unknown sampler {name!r}; known: {', '.join(SAMPLER_CLASSES)}")
