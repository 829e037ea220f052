"""Statistics for the report: intervals, paired tests, ranks, critical differences, IQM,
probability of improvement, expected maximum performance.

Everything takes the tidy runs frame (one row per evaluation run) or plain arrays and is
deterministic for a seed. Library routines are used where they exist (scipy's bootstrap,
paired t-test, Friedman test, studentized range and Mann–Whitney U; statsmodels' Holm
correction); what no library offers — the Nemenyi critical difference, the stratified
bootstrap of Agarwal et al. (2021) and the expected maximum of Dodge et al. (2019) — is
written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
RESAMPLES = 10_000


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, confidence: float = CONFIDENCE,
                 resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean; (nan, nan) with fewer than two values,
    the point itself when all values are equal."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    res = stats.bootstrap((x,), np.mean, confidence_level=confidence, n_resamples=resamples,
                          method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def summarize(runs: pd.DataFrame, metric: str, *, seed: int = 0) -> pd.DataFrame:
    """(strategy, column) → mean, CI low/high, half-width and n over evaluation seeds."""
    rows = []
    for (strategy, column), group in runs.dropna(subset=[metric]).groupby(["strategy", "column"]):
        values = group[metric].to_numpy(float)
        low, high = bootstrap_ci(values, seed=seed)
        rows.append({"strategy": strategy, "column": column, "mean": values.mean(), "low": low,
                     "high": high, "half_width": (high - low) / 2, "n": len(values)})
    return pd.DataFrame(rows, columns=["strategy", "column", "mean", "low", "high", "half_width", "n"])


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (statsmodels); NaNs stay NaN."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def compare_to_best(runs: pd.DataFrame, metric: str, summary: pd.DataFrame, *,
                    alpha: float = ALPHA) -> pd.DataFrame:
    """Per column, each strategy against the best mean: a paired t-test over the evaluation
    seeds both share (same seeds, same splits), Holm-corrected over the column's comparisons.

    Returns (strategy, column, best, n_pairs, p, p_holm, tied): ``tied`` is True for the best
    itself and for strategies the test cannot tell from it at ``alpha``; None when it could not
    test (fewer than two shared seeds, or identical paired differences)."""
    rows = []
    for column, col_summary in summary.groupby("column"):
        best = col_summary.loc[col_summary["mean"].idxmax(), "strategy"]
        col_runs = runs[runs["column"] == column].dropna(subset=[metric])
        wide = col_runs.pivot_table(index="seed", columns="strategy", values=metric)
        tests = []
        for strategy in col_summary["strategy"]:
            if strategy == best:
                rows.append({"strategy": strategy, "column": column, "best": best, "n_pairs": len(wide),
                             "p": math.nan, "p_holm": math.nan, "tied": True})
                continue
            pair = wide[[best, strategy]].dropna()
            diff = pair[best] - pair[strategy]
            p = math.nan
            if len(pair) >= 2 and diff.std() > 0:
                p = float(stats.ttest_rel(pair[best], pair[strategy]).pvalue)
            elif len(pair) >= 2 and diff.abs().max() == 0:
                p = 1.0  # identical on every seed
            tests.append((strategy, len(pair), p))
        adjusted = holm([p for _, _, p in tests])
        for (strategy, n, p), p_adj in zip(tests, adjusted):
            tied = None if math.isnan(p_adj) else bool(p_adj >= alpha)
            rows.append({"strategy": strategy, "column": column, "best": best, "n_pairs": n, "p": p,
                         "p_holm": p_adj, "tied": tied})
    return pd.DataFrame(rows, columns=["strategy", "column", "best", "n_pairs", "p", "p_holm", "tied"])


def mean_matrix(summary: pd.DataFrame) -> pd.DataFrame:
    """Strategies × columns of mean scores, keeping only columns every strategy has (the
    complete blocks rank-based tests need)."""
    wide = summary.pivot(index="strategy", columns="column", values="mean")
    return wide.dropna(axis=1)


def average_ranks(means: pd.DataFrame) -> pd.Series:
    """Rank of each strategy (rows) within each column (1 = best, ties share the average
    rank), averaged over columns (Demšar 2006)."""
    return means.rank(axis=0, ascending=False, method="average").mean(axis=1).sort_values()


@dataclass(frozen=True)
class RankTest:
    """Friedman test and Nemenyi critical difference over tasks, or why they were not run."""

    ranks: pd.Series
    n_tasks: int
    statistic: float | None = None
    p: float | None = None
    cd: float | None = None
    reason: str | None = None  # set when the test could not be computed


def nemenyi_cd(k: int, n: int, *, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference for ``k`` methods over ``n`` datasets (Demšar 2006,
    eq. 5): ``q_α · sqrt(k(k+1) / 6n)`` with ``q_α`` the studentized range quantile / √2."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def rank_test(means: pd.DataFrame, *, alpha: float = ALPHA) -> RankTest:
    """Average ranks; Friedman's test and the Nemenyi CD when there are at least three
    strategies and two tasks."""
    k, n = means.shape
    if k == 0 or n == 0:
        return RankTest(pd.Series(dtype=float), n, reason="no task has results for every strategy")
    ranks = average_ranks(means)
    if k < 3:
        return RankTest(ranks, n, reason=f"the Friedman test needs at least 3 strategies (got {k})")
    if n < 2:
        return RankTest(ranks, n, reason=f"the Friedman test needs at least 2 tasks (got {n})")
    statistic, p = stats.friedmanchisquare(*[means.loc[s].to_numpy() for s in means.index])
    return RankTest(ranks, n, float(statistic), float(p), nemenyi_cd(k, n, alpha=alpha))


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the middle 50% (scipy's 25% trimmed mean)."""
    return float(stats.trim_mean(np.asarray(values, dtype=float), 0.25))


def stratified_bootstrap(groups: Sequence[np.ndarray], statistic: Callable[[list[np.ndarray]], np.ndarray], *,
                         seed: int = 0, resamples: int = 2000,
                         confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Agarwal et al. (2021): resample runs with replacement *within* each group (task), so
    every task keeps its weight; returns (point estimate, CI low, CI high), percentile.

    ``statistic`` is vectorised: it gets each group as an array of shape (resamples, n_g) and
    returns one value per resample."""
    groups = [np.asarray(g, dtype=float) for g in groups]
    point = float(statistic([g[None, :] for g in groups])[0])
    if all(len(g) < 2 for g in groups):
        return point, math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = statistic([g[rng.integers(0, len(g), (resamples, len(g)))] for g in groups])
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return point, float(low), float(high)


def _iqm_rows(groups: list[np.ndarray]) -> np.ndarray:
    return stats.trim_mean(np.concatenate(groups, axis=1), 0.25, axis=1)


def iqm_by_strategy(runs: pd.DataFrame, metric: str, *, seed: int = 0) -> pd.DataFrame:
    """IQM of ``metric`` over all task × seed runs of each strategy, with a stratified
    bootstrap interval (tasks as strata)."""
    rows = []
    for strategy, group in runs.dropna(subset=[metric]).groupby("strategy"):
        strata = [g[metric].to_numpy(float) for _, g in group.groupby("column")]
        point, low, high = stratified_bootstrap(strata, _iqm_rows, seed=seed)
        rows.append({"strategy": strategy, "iqm": point, "low": low, "high": high,
                     "runs": sum(len(s) for s in strata), "tasks": len(strata)})
    return pd.DataFrame(rows, columns=["strategy", "iqm", "low", "high", "runs", "tasks"])


def prob_greater(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + ½·P(X = Y) for one run of each, from the Mann–Whitney U statistic."""
    return float(stats.mannwhitneyu(x, y).statistic / (len(x) * len(y)))


def _prob_greater_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`prob_greater` for each row of x (R, n) against the same row of y (R, m)."""
    diff = x[:, :, None] - y[:, None, :]
    return (diff > 0).mean(axis=(1, 2)) + 0.5 * (diff == 0).mean(axis=(1, 2))


def probability_of_improvement(runs: pd.DataFrame, metric: str, x: str, y: str, *,
                               seed: int = 0) -> tuple[float, float, float] | None:
    """Agarwal et al. (2021): the probability that a run of strategy ``x`` scores above a run
    of ``y`` on a task, averaged over the tasks both have, with a stratified bootstrap
    interval. None when they share no task."""
    data = runs.dropna(subset=[metric])
    pairs = []
    for _, group in data.groupby("column"):
        a = group.loc[group["strategy"] == x, metric].to_numpy(float)
        b = group.loc[group["strategy"] == y, metric].to_numpy(float)
        if len(a) and len(b):
            pairs.append((a, b))
    if not pairs:
        return None

    def statistic(groups: list[np.ndarray]) -> np.ndarray:
        return np.mean([_prob_greater_rows(groups[2 * i], groups[2 * i + 1]) for i in range(len(pairs))], axis=0)

    return stratified_bootstrap([arr for pair in pairs for arr in pair], statistic, seed=seed)


def expected_max(values: Sequence[float], n: int) -> tuple[float, float]:
    """Dodge et al. (2019), "Show Your Work": the expected maximum validation score of ``n``
    configurations drawn with replacement from the observed ones, and its standard
    deviation. With sorted values v₍ᵢ₎ of N, P(max = v₍ᵢ₎) = (i/N)ⁿ − ((i−1)/N)ⁿ."""
    v = np.sort(np.asarray(values, dtype=float))
    big_n = len(v)
    i = np.arange(1, big_n + 1)
    weights = (i / big_n) ** n - ((i - 1) / big_n) ** n
    mean = float((weights * v).sum())
    var = float((weights * (v - mean) ** 2).sum())
    return mean, math.sqrt(max(var, 0.0))


def tuning_curve(values: Sequence[float], seconds: Sequence[float], budget: int) -> pd.DataFrame:
    """Expected best validation score after n = 1 … budget trials, and the compute that
    many trials cost on average (n × mean trial seconds)."""
    rows = []
    if len(values) == 0:
        return pd.DataFrame(columns=["trials", "expected_max", "std", "seconds"])
    mean_seconds = float(np.mean(seconds)) if len(seconds) else math.nan
    for n in range(1, budget + 1):
        mean, std = expected_max(values, n)
        rows.append({"trials": n, "expected_max": mean, "std": std, "seconds": n * mean_seconds})
    return pd.DataFrame(rows)
