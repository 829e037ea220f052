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

import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats


def natural_key(text: str) -> list:
    """Sorts ``digits.shots2`` before ``digits.shots10`` (numbers in names compare as numbers)."""
    return [(0, float(part), "") if re.fullmatch(r"\d+(\.\d+)?", part) else (1, 0.0, part)
            for part in re.split(r"(\d+(?:\.\d+)?)", str(text)) if part]


CONFIDENCE = 0.95
ALPHA = 0.05
RESAMPLES = 10_000
#: Below this many evaluation seeds per cell, bootstrap intervals are too narrow and paired
#: tests have little power: the report calls what it computes from them descriptive.
MIN_SEEDS = 5


def fewest_seeds(runs: pd.DataFrame, metric: str, strategies: Sequence[str] | None = None) -> int:
    """The smallest number of runs with ``metric`` in any (strategy, column) cell (of
    ``strategies`` when given); 0 without runs."""
    data = runs.dropna(subset=[metric])
    if strategies is not None:
        data = data[data["strategy"].isin(list(strategies))]
    counts = data.groupby(["strategy", "column"]).size()
    return int(counts.min()) if len(counts) else 0


def expanded_confidence(n: int, confidence: float = CONFIDENCE) -> float:
    """Hesterberg's (2015) small-sample correction of the percentile bootstrap: the nominal
    level is widened to Φ(√(n/(n−1))·t_{n−1}) on each side, so that the interval covers
    about as often as a t-interval would (the plain percentile interval of the mean covers
    ~48% at n = 2 and ~90% at n = 10 for a nominal 95%)."""
    if n < 2:
        return confidence
    t = stats.t.ppf(1 - (1 - confidence) / 2, n - 1)
    tail = stats.norm.cdf(-math.sqrt(n / (n - 1)) * t)
    return float(min(1 - 2 * tail, 1 - 1e-12))


def bootstrap_ci(values: Sequence[float], *, seed: int = 0, confidence: float = CONFIDENCE,
                 resamples: int = RESAMPLES) -> tuple[float, float]:
    """Expanded-percentile bootstrap interval of the mean (scipy's percentile bootstrap at
    :func:`expanded_confidence`); (nan, nan) with fewer than two values, the point itself
    when all values are equal."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    if np.all(x == x[0]):
        return float(x[0]), float(x[0])
    return _bootstrap(x.tobytes(), seed, confidence, resamples)


@functools.lru_cache(maxsize=65536)
def _bootstrap(data: bytes, seed: int, confidence: float, resamples: int) -> tuple[float, float]:
    """The interval of these exact values, computed once per process: the tables, the figures
    and the studies of one report ask for the same cells' intervals several times."""
    x = np.frombuffer(data, dtype=float)
    res = stats.bootstrap((x,), np.mean, confidence_level=expanded_confidence(len(x), confidence),
                          n_resamples=resamples, method="percentile", rng=np.random.default_rng(seed))
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
    """Holm–Bonferroni adjusted p-values: the i-th smallest of n times (n − i + 1), made non-decreasing and
    capped at 1; NaNs stay NaN. (statsmodels' ``multipletests(method="holm")`` gives the same numbers, the
    tests check, but runs a full garbage collection on every call: about 0.1 s each with a store's
    trials in memory, a second per report.)"""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        q = p[ok]
        order = np.argsort(q, kind="stable")
        adjusted = np.empty_like(q)
        adjusted[order] = np.minimum(1.0, np.maximum.accumulate(q[order] * np.arange(len(q), 0, -1)))
        out[ok] = adjusted
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
        wide = col_runs.pivot(index="seed", columns="strategy", values=metric)  # a seed twice is an error
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
            elif len(pair) >= 2:  # the same difference on every seed: none at all, or a sure one
                p = 1.0 if diff.abs().max() == 0 else 0.0
            tests.append((strategy, len(pair), p))
        adjusted = holm([p for _, _, p in tests])
        for (strategy, n, p), p_adj in zip(tests, adjusted):
            tied = None if math.isnan(p_adj) else bool(p_adj >= alpha)
            rows.append({"strategy": strategy, "column": column, "best": best, "n_pairs": n, "p": p,
                         "p_holm": p_adj, "tied": tied})
    return pd.DataFrame(rows, columns=["strategy", "column", "best", "n_pairs", "p", "p_holm", "tied"])


def mean_matrix(summary: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Strategies × columns of mean scores over the columns every strategy has (the complete
    blocks rank-based tests need), and how many columns there were in all."""
    wide = summary.pivot(index="strategy", columns="column", values="mean")
    return wide.dropna(axis=1), wide.shape[1]


def average_ranks(means: pd.DataFrame) -> pd.Series:
    """Rank of each strategy (rows) within each column (1 = best, ties share the average
    rank), averaged over columns (Demšar 2006)."""
    return means.rank(axis=0, ascending=False, method="average").mean(axis=1).sort_values()


@dataclass(frozen=True)
class RankTest:
    """Friedman test (with Iman & Davenport's F form) and the Nemenyi critical difference
    over tasks, or why they were not computed."""

    ranks: pd.Series
    n_tasks: int
    statistic: float | None = None  # Friedman's χ²
    p: float | None = None  # of the Iman–Davenport F statistic (Demšar's recommendation): what decides
    cd: float | None = None
    reason: str | None = None  # set when the test could not be computed
    chi2_p: float | None = None  # of Friedman's χ² itself (k − 1 degrees of freedom), more conservative
    f: float | None = None  # the Iman–Davenport F statistic

    @property
    def rejects(self) -> bool:
        """Whether the Friedman test rejects "all strategies are equivalent" at ALPHA; the
        Nemenyi post-hoc comparison is only read when it does (Demšar 2006, §3.2.2)."""
        return self.p is not None and self.p < ALPHA


def nemenyi_cd(k: int, n: int, *, alpha: float = ALPHA) -> float:
    """The Nemenyi critical difference for ``k`` methods over ``n`` datasets (Demšar 2006,
    eq. 5): ``q_α · sqrt(k(k+1) / 6n)`` with ``q_α`` the studentized range quantile / √2."""
    q = stats.studentized_range.ppf(1 - alpha, k, np.inf) / math.sqrt(2)
    return float(q * math.sqrt(k * (k + 1) / (6 * n)))


def iman_davenport(chi2: float, k: int, n: int) -> tuple[float, float]:
    """Iman & Davenport's F form of Friedman's statistic and its p-value, with (k−1) and
    (k−1)(n−1) degrees of freedom (Demšar 2006, eq. 4): less conservative than χ²."""
    denominator = n * (k - 1) - chi2
    if denominator <= 0:  # identical ranks on every task: F is infinite
        return math.inf, 0.0
    f = (n - 1) * chi2 / denominator
    return float(f), float(stats.f.sf(f, k - 1, (k - 1) * (n - 1)))


def rank_test(means: pd.DataFrame, n_columns: int | None = None, *, alpha: float = ALPHA) -> RankTest:
    """Average ranks; the Friedman test and the Nemenyi CD when there are at least three
    strategies and two tasks with results for all of them."""
    k, n = means.shape
    total = n if n_columns is None else n_columns
    incomplete = f" (only {n} of {total} tasks have results for every strategy)" if n < total else ""
    if k == 0 or n == 0:
        return RankTest(pd.Series(dtype=float), n, reason=f"no task has results for every strategy{incomplete}")
    ranks = average_ranks(means)
    if k < 3:
        return RankTest(ranks, n, reason=f"the Friedman test needs at least 3 strategies (got {k})")
    if n < 2:
        return RankTest(ranks, n, reason=f"the Friedman test needs at least 2 tasks (got {n}){incomplete}")
    chi2, chi2_p = stats.friedmanchisquare(*[means.loc[s].to_numpy() for s in means.index])
    f, p = iman_davenport(float(chi2), k, n)
    return RankTest(ranks, n, float(chi2), p, nemenyi_cd(k, n, alpha=alpha), chi2_p=float(chi2_p), f=f)


def cliques(ranks: pd.Series, cd: float) -> list[list[str]]:
    """Maximal groups of strategies (consecutive in rank order) whose average ranks differ by
    less than ``cd``: the bars of a critical-difference diagram."""
    ordered = ranks.sort_values()
    values, names = ordered.to_numpy(), list(ordered.index)
    spans: list[tuple[int, int]] = []
    for i in range(len(values)):
        j = max(j for j in range(i, len(values)) if values[j] - values[i] < cd)
        if j > i and not any(a <= i and j <= b for a, b in spans):
            spans.append((i, j))
    return [names[a:b + 1] for a, b in spans]


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
    """Interquartile mean (the mean of the middle 50%: scipy's 25% trimmed mean) of each
    row of the groups side by side."""
    return stats.trim_mean(np.concatenate(groups, axis=1), 0.25, axis=1)


def normalized(runs: pd.DataFrame, metric: str) -> tuple[pd.Series, str]:
    """Scores comparable across tasks: ``(acc − chance) / (1 − chance)`` with chance =
    1 / number of classes when the runs record it (0 = chance, 1 = perfect), else raw."""
    if "num_classes" in runs and runs["num_classes"].notna().all():
        chance = 1.0 / runs["num_classes"].astype(float)
        return (runs[metric] - chance) / (1 - chance), "chance-normalised accuracy (0 = chance, 1 = perfect)"
    return runs[metric], "raw accuracy (these runs do not record their number of classes)"


def common_columns(runs: pd.DataFrame, metric: str) -> list[str]:
    """Columns (tasks) in which every strategy has a result."""
    data = runs.dropna(subset=[metric])
    per_column = data.groupby("column")["strategy"].nunique()
    return sorted(per_column[per_column == data["strategy"].nunique()].index)


def iqm_by_strategy(runs: pd.DataFrame, metric: str, *, seed: int = 0) -> pd.DataFrame:
    """IQM of each strategy over all its task × seed runs on the tasks every strategy has,
    on normalised scores (:func:`normalized`), with a stratified bootstrap interval (tasks
    as strata). ``runs.attrs["scale"]`` of the result says which scores were used."""
    data = runs.dropna(subset=[metric])
    data = data[data["column"].isin(common_columns(data, metric))]
    scores, scale = normalized(data, metric)
    data = data.assign(score=scores)
    rows = []
    for strategy, group in data.groupby("strategy"):
        strata = [g["score"].to_numpy(float) for _, g in group.groupby("column")]
        point, low, high = stratified_bootstrap(strata, _iqm_rows, seed=seed)
        rows.append({"strategy": strategy, "iqm": point, "low": low, "high": high,
                     "runs": sum(len(s) for s in strata), "tasks": len(strata)})
    out = pd.DataFrame(rows, columns=["strategy", "iqm", "low", "high", "runs", "tasks"])
    out.attrs["scale"] = scale
    return out


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


def improvement_matrix(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """P(row strategy beats column strategy) for every pair, averaged over shared tasks."""
    data = runs.dropna(subset=[metric])
    names = sorted(data["strategy"].unique())
    by = {(c, s): g[metric].to_numpy(float) for (c, s), g in data.groupby(["column", "strategy"])}
    columns = sorted(data["column"].unique())
    out = pd.DataFrame(np.nan, index=names, columns=names)
    for a in names:
        for b in names:
            shared = [c for c in columns if (c, a) in by and (c, b) in by]
            if a != b and shared:
                out.loc[a, b] = float(np.mean([_prob_greater_rows(by[(c, a)][None], by[(c, b)][None])[0]
                                               for c in shared]))
    return out


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


def tuning_curve(values: Sequence[float], seconds_per_value: float, budget: int) -> pd.DataFrame:
    """Expected best validation score after n = 1 … budget completed configurations, and the
    compute that takes (n × ``seconds_per_value``: the seconds of every finished trial,
    pruned ones included, per completed one)."""
    if len(values) == 0:
        return pd.DataFrame(columns=["trials", "expected_max", "std", "seconds"])
    rows = []
    for n in range(1, budget + 1):
        mean, std = expected_max(values, n)
        rows.append({"trials": n, "expected_max": mean, "std": std, "seconds": n * seconds_per_value})
    return pd.DataFrame(rows)
