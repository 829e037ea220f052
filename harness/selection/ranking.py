"""How well a transferability score ranks backbones by their fine-tuned accuracy, and how sure we are.

Per task and ground-truth strategy, a scorer's values over the backbones are compared with the
backbones' mean fine-tuned accuracies: weighted Kendall τ (``scipy.stats.weightedtau`` with its
defaults, as the literature reports it), Kendall τ_b, Pearson's r, the top-1 regret in accuracy
points, relative top-1 accuracy and whether the best backbone is among the score's top 3.

Intervals come from a bootstrap over the fine-tuning seeds (each backbone's seeds resampled on
their own) and over a randomised scorer's own seeds (one scorer seed scores every backbone, so
those are resampled jointly); a paired bootstrap on the same resamples says how often scorer A
ranks better than B. Rankings of estimators are known to be unstable across set-ups
(Agostinelli et al., 2022), so :func:`leave_one_out` reports how much τ_w moves when one backbone
is left out.

Ties: a score tied at the top is broken at random in expectation (regret, relative top-1 and
top-3 are averaged over the tied backbones' orders); τ_w and τ_b treat ties as scipy does.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

#: the agreement measures, in report order: name → (header, higher is better)
MEASURES: dict[str, tuple[str, bool]] = {
    "weighted_tau": ("τ_w", True),
    "kendall_tau": ("τ_b", True),
    "pearson": ("Pearson r", True),
    "regret": ("top-1 regret (points)", False),
    "relative_top1": ("relative top-1", True),
    "top3": ("best in top 3", True),
}


def _top_choice(scores: np.ndarray, accuracies: np.ndarray) -> tuple[float, float, float]:
    """(regret in points, relative top-1, best-in-top-3) with ties in the score broken at random
    in expectation."""
    best = float(np.max(accuracies))
    top = np.flatnonzero(scores == np.max(scores))
    chosen = float(np.mean(accuracies[top]))
    regret = 100.0 * (best - chosen)
    relative = chosen / best if best > 0 else float("nan")
    # P(a best backbone is among the first 3 by score), ties in score ordered at random
    winners = accuracies == best
    order = np.argsort(-scores, kind="stable")
    cut = scores[order[min(2, len(scores) - 1)]]
    sure = np.sum(winners & (scores > cut))
    if sure:
        top3 = 1.0
    else:
        at_cut = scores == cut
        slots = 3 - int(np.sum(scores > cut))
        tied, tied_winners = int(np.sum(at_cut)), int(np.sum(winners & at_cut))
        # probability at least one tied winner lands in the `slots` positions drawn from `tied`
        top3 = 1.0 - (math.comb(tied - tied_winners, slots) / math.comb(tied, slots) if slots <= tied else 0.0)
    return regret, relative, top3


def agreement(scores: np.ndarray, accuracies: np.ndarray) -> dict[str, float]:
    """The agreement measures of one scorer's values (already oriented so that higher predicts
    better) with the backbones' fine-tuned accuracies. NaN where a measure is undefined (fewer
    than 2 backbones, a constant column)."""
    return {m: float(v[0]) for m, v in agreements(np.asarray(scores, dtype=np.float64)[None, :],
                                                  np.asarray(accuracies, dtype=np.float64)[None, :]).items()}


def _ranked_weighted_tau(x: np.ndarray, y: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Vigna's weighted τ of each row of ``x`` and ``y`` (R, B) with the hyperbolic weigher
    1/(r + 1), additive, the importance rank r taken from ``x`` (decreasing, ties by decreasing
    ``y``, then by later position first): ``scipy.stats._stats._weightedrankedtau(x, y, None)``,
    vectorised over rows. A pair's weight is the sum of its two elements' weights; τ is
    Σ w·sgn(Δx)·sgn(Δy) / √(Σ w·[Δx ≠ 0] · Σ w·[Δy ≠ 0])."""
    rows, b = x.shape
    order = np.lexsort((y, x), axis=-1)[:, ::-1]  # most important first
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(b), (rows, b)), axis=1)
    w = 1.0 / (rank + 1.0)
    pair = w[:, i] + w[:, j]
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    denominator = np.sqrt(np.sum(pair * sx**2, axis=1) * np.sum(pair * sy**2, axis=1))
    return np.divide(np.sum(pair * sx * sy, axis=1), denominator, out=np.full(rows, np.nan), where=denominator > 0)


def agreements(scores: np.ndarray, accuracies: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`agreement` for R rows at once: ``scores`` and ``accuracies`` are (R, B) (one row per
    bootstrap resample, one column per backbone), every measure computed over all rows at once:
    the weighted τ as ``scipy.stats.weightedtau``'s defaults compute it (the mean of the τ ranked
    by each variable), Kendall's τ_b as (n_c − n_d)/√((n₀ − n₁)(n₀ − n₂)) from the pairs' signs
    (scipy's), Pearson's r; the test suite checks all three against scipy on tie-heavy data."""
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    a = np.atleast_2d(np.asarray(accuracies, dtype=np.float64))
    rows, b = s.shape
    out = {m: np.full(rows, np.nan) for m in MEASURES}
    if b < 2:
        return out
    i, j = np.triu_indices(b, k=1)
    out["weighted_tau"] = (_ranked_weighted_tau(s, a, i, j) + _ranked_weighted_tau(a, s, i, j)) / 2
    sx, sy = np.sign(s[:, i] - s[:, j]), np.sign(a[:, i] - a[:, j])
    denominator = np.sqrt(np.sum(sx**2, axis=1) * np.sum(sy**2, axis=1))
    out["kendall_tau"] = np.divide(np.sum(sx * sy, axis=1), denominator, out=np.full(rows, np.nan),
                                   where=denominator > 0)
    cs, ca = s - s.mean(axis=1, keepdims=True), a - a.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.sum(cs**2, axis=1) * np.sum(ca**2, axis=1))
    constant = (np.ptp(s, axis=1) == 0) | (np.ptp(a, axis=1) == 0)
    out["pearson"] = np.where(constant, np.nan, np.sum(cs * ca, axis=1) / np.where(norms > 0, norms, 1.0))
    for r in range(rows):
        out["regret"][r], out["relative_top1"][r], out["top3"][r] = _top_choice(s[r], a[r])
    return out


@dataclass(frozen=True)
class Estimate:
    """A measure's point value and its bootstrap interval."""

    value: float
    low: float
    high: float


@dataclass(frozen=True)
class ScorerAgreement:
    """One scorer against one ground truth on one task."""

    scorer: str
    backbones: tuple[str, ...]
    measures: dict[str, Estimate]
    resampled_tau: np.ndarray = field(repr=False)  # τ_w per bootstrap resample, for paired comparisons


def _oriented(values: np.ndarray, higher_is_better: bool) -> np.ndarray:
    return values if higher_is_better else -values


def evaluate(scorer: str, scores: dict[str, np.ndarray], accuracies: dict[str, np.ndarray], *,
             higher_is_better: bool = True, resamples: int = 1000, seed: int = 0,
             level: float = 0.95) -> ScorerAgreement:
    """Agreement of ``scores`` (backbone → the scorer's value per scorer seed, one or more) with
    ``accuracies`` (backbone → fine-tuned accuracy per evaluation seed), on the backbones both
    have, with percentile intervals from ``resamples`` bootstrap draws (the same draws for every
    scorer evaluated with the same ``seed`` and backbones, so differences are paired)."""
    names = tuple(sorted(set(scores) & set(accuracies)))
    score_rows = [np.atleast_1d(np.asarray(scores[b], dtype=np.float64)) for b in names]
    acc_rows = [np.atleast_1d(np.asarray(accuracies[b], dtype=np.float64)) for b in names]
    n_score = {len(r) for r in score_rows}
    if len(n_score) > 1:
        raise ValueError(f"scorer {scorer!r}: every backbone needs the same number of scorer seeds, got {sorted(n_score)}")
    s_mat = np.stack(score_rows) if names else np.zeros((0, 1))  # (B, S)
    point = agreement(_oriented(s_mat.mean(axis=1), higher_is_better), np.array([r.mean() for r in acc_rows]))
    acc_draws, score_draws = bootstrap_draws([len(r) for r in acc_rows], s_mat.shape[1], resamples=resamples,
                                             seed=seed)
    acc = np.stack([row[idx].mean(axis=1) for row, idx in zip(acc_rows, acc_draws)], axis=1) if names \
        else np.zeros((resamples, 0))  # (R, B)
    sc = _oriented(s_mat[:, score_draws].mean(axis=2).T, higher_is_better)  # (R, B)
    resampled = agreements(sc, acc)
    tail = (1 - level) / 2
    measures = {}
    for m, v in point.items():
        finite = resampled[m][np.isfinite(resampled[m])]
        if math.isnan(v) or finite.size == 0:
            measures[m] = Estimate(v, float("nan"), float("nan"))
        else:
            measures[m] = Estimate(v, float(np.quantile(finite, tail)), float(np.quantile(finite, 1 - tail)))
    return ScorerAgreement(scorer, names, measures, resampled["weighted_tau"])


def bootstrap_draws(seed_counts: list[int], score_seeds: int, *, resamples: int,
                    seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Per backbone, its evaluation seeds drawn with replacement for each resample (an
    (R, K_b) index array each); and the scorer seeds drawn with replacement, shared by every
    backbone ((R, S)). Deterministic in ``seed`` and the seed counts, so two scorers evaluated
    on the same backbones share their draws for the accuracies (paired comparisons)."""
    rng = np.random.default_rng(seed)
    acc = [rng.integers(0, k, size=(resamples, k)) for k in seed_counts]
    score = np.random.default_rng([seed, 1]).integers(0, score_seeds, size=(resamples, score_seeds))
    return acc, score


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap of τ_w: how often scorer ``a`` ranks better than ``b``."""

    a: str
    b: str
    difference: Estimate  # τ_w(a) − τ_w(b)
    probability: float  # P(τ_w(a) > τ_w(b)) over resamples (ties count half)


def compare(a: ScorerAgreement, b: ScorerAgreement, *, level: float = 0.95) -> Comparison:
    """Paired comparison of two scorers evaluated on the same backbones with the same seed."""
    if a.backbones != b.backbones or len(a.resampled_tau) != len(b.resampled_tau):
        raise ValueError(f"{a.scorer} and {b.scorer} were not evaluated on the same backbones and resamples")
    diff = a.resampled_tau - b.resampled_tau
    ok = np.isfinite(diff)
    point = a.measures["weighted_tau"].value - b.measures["weighted_tau"].value
    if not ok.any():
        return Comparison(a.scorer, b.scorer, Estimate(point, float("nan"), float("nan")), float("nan"))
    tail = (1 - level) / 2
    d = diff[ok]
    probability = float(np.mean((d > 0) + 0.5 * (d == 0)))
    return Comparison(a.scorer, b.scorer, Estimate(point, float(np.quantile(d, tail)), float(np.quantile(d, 1 - tail))),
                      probability)


@dataclass(frozen=True)
class Stability:
    """τ_w of one scorer with each backbone left out in turn."""

    scorer: str
    low: float
    high: float
    left_out: dict[str, float]


def leave_one_out(scorer: str, scores: dict[str, np.ndarray], accuracies: dict[str, np.ndarray], *,
                  higher_is_better: bool = True) -> Stability:
    names = sorted(set(scores) & set(accuracies))
    mean_s = {b: float(np.mean(scores[b])) for b in names}
    mean_a = {b: float(np.mean(accuracies[b])) for b in names}
    taus = {}
    for out in names:
        kept = [b for b in names if b != out]
        s = _oriented(np.array([mean_s[b] for b in kept]), higher_is_better)
        taus[out] = agreement(s, np.array([mean_a[b] for b in kept]))["weighted_tau"]
    finite = [t for t in taus.values() if math.isfinite(t)]
    return Stability(scorer, min(finite) if finite else float("nan"), max(finite) if finite else float("nan"), taus)


def order_stability(taus: dict[str, float], left_out: dict[str, dict[str, float]]) -> float:
    """Mean Kendall τ_b between the scorers' order by τ_w on all backbones and their order with
    each backbone left out (1: leaving out any one backbone never reorders the scorers)."""
    scorers = sorted(taus)
    if len(scorers) < 2:
        return float("nan")
    full = np.array([taus[s] for s in scorers])
    backbones = sorted({b for taus in left_out.values() for b in taus})
    values = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b in backbones:
            partial = np.array([left_out[s].get(b, float("nan")) for s in scorers])
            ok = np.isfinite(full) & np.isfinite(partial)
            if ok.sum() >= 2:
                tau = stats.kendalltau(full[ok], partial[ok]).statistic
                if math.isfinite(tau):
                    values.append(float(tau))
    return float(np.mean(values)) if values else float("nan")
