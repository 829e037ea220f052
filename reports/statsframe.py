"""Every statistic a report shows, as one tidy frame: what ``stats.parquet`` holds and
``tlbench.load_results(...).stats`` returns, so a paper's own plotting script reads the numbers
instead of parsing the tables.

One row per number, with the same routines the tables and figures call (and the same seed), so
the frame and the rendered text cannot disagree; the test suite checks them against each other.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from tlbench.reports import stats
from tlbench.reports.tables import with_columns

#: The frame's columns. ``statistic`` says what a row is (see :data:`STATISTICS`); the others are
#: filled where they apply (NaN / None elsewhere).
COLUMNS = ["statistic", "metric", "suite", "column", "task", "backbone", "strategy", "other", "value", "low",
           "high", "n", "p", "p_adjusted", "correction", "significant", "method"]

#: statistic → what its row holds.
STATISTICS = {
    "mean": "a cell's mean over evaluation seeds; low/high: 95% expanded-percentile bootstrap interval; n: seeds",
    "vs_best": "a strategy against the best mean of its column: value = mean paired difference (strategy − best) "
               "over the n seeds both share; p: paired t-test; p_adjusted: Holm within the column; significant: "
               "different from the best at α (None: untestable)",
    "average_rank": "mean rank over the columns every strategy has (1 = best); n: those columns",
    "friedman_chi2": "Friedman's χ² over the complete columns, with its own p (k − 1 degrees of freedom)",
    "iman_davenport_f": "the Iman–Davenport F form of Friedman's statistic and its p, which decides (significant: "
                        "rejects that all strategies are equivalent)",
    "nemenyi_cd": "the Nemenyi critical difference in average ranks",
    "iqm": "interquartile mean over a strategy's task × seed runs on the common tasks (normalised scores; method "
           "says which), low/high: 95% stratified-bootstrap interval; n: runs",
    "p_improvement": "P(a run of strategy beats a run of other), averaged over shared tasks; low/high: 95% "
                     "stratified-bootstrap interval where the report's table shows one; significant: the table's "
                     "bold rule (interval above 0.5 with at least MIN_SEEDS seeds)",
    "crossover_gap": "a swept value (column: family, task: the swept field = value): best transfer strategy "
                     "(strategy) − scratch (other), mean paired difference with the paired t-test's 95% interval; "
                     "significant: scratch significantly worse (the one criterion the table uses)",
}

METRICS = ("test_accuracy", "shifted_test_accuracy")


def _row(statistic: str, metric: str, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(statistic=statistic, metric=metric, **values)
    return row


def _nan_to_none(value: Any) -> Any:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def statistics_frame(runs: pd.DataFrame, *, seed: int = 0) -> pd.DataFrame:
    """The statistics of a runs frame (:func:`tlbench.store.records.load_runs`), one row per number
    (:data:`COLUMNS`, :data:`STATISTICS`); empty with the same columns when there are no runs."""
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    runs = with_columns(runs)
    cells = runs.drop_duplicates("column").set_index("column")[["suite", "task", "backbone"]]
    where = {column: dict(suite=r["suite"], task=r["task"], backbone=r["backbone"])
             for column, r in cells.iterrows()}
    suites = runs["suite"].dropna().unique() if "suite" in runs else []
    suite = str(suites[0]) if len(suites) == 1 else None  # the across-task rows' suite (a report of one suite)
    rows: list[dict[str, Any]] = []
    boot = f"expanded percentile bootstrap (Hesterberg 2015), {stats.RESAMPLES} resamples, 95%"
    for metric in METRICS:
        if metric not in runs or runs[metric].isna().all():
            continue
        summary = stats.summarize(runs, metric, seed=seed)
        for r in summary.to_dict("records"):
            rows.append(_row("mean", metric, column=r["column"], **where[r["column"]], strategy=r["strategy"],
                             value=r["mean"], low=_nan_to_none(r["low"]), high=_nan_to_none(r["high"]), n=r["n"],
                             method=boot))
        wides: dict[str, pd.DataFrame] = {}
        for r in stats.compare_to_best(runs, metric, summary).to_dict("records"):
            if r["strategy"] == r["best"]:
                continue
            if r["column"] not in wides:  # one seed × strategy table per column, not one per row
                wides[r["column"]] = runs[runs["column"] == r["column"]].pivot(index="seed", columns="strategy",
                                                                               values=metric)
            wide = wides[r["column"]]
            pair = wide[[r["strategy"], r["best"]]].dropna()
            diff = float((pair[r["strategy"]] - pair[r["best"]]).mean()) if len(pair) else math.nan
            tied = r["tied"]
            rows.append(_row("vs_best", metric, column=r["column"], **where[r["column"]], strategy=r["strategy"],
                             other=r["best"], value=_nan_to_none(diff), n=r["n_pairs"], p=_nan_to_none(r["p"]),
                             p_adjusted=_nan_to_none(r["p_holm"]), correction="holm (within the column)",
                             significant=None if tied is None or pd.isna(tied) else not bool(tied),
                             method=f"paired t-test, α = {stats.ALPHA}"))
        if metric != "test_accuracy":  # ranks, IQM and P(improvement) are reported on test accuracy
            continue
        matrix, n_columns = stats.mean_matrix(summary)
        test = stats.rank_test(matrix, n_columns)
        for strategy, rank in test.ranks.items():
            rows.append(_row("average_rank", metric, suite=suite, strategy=strategy, value=float(rank), n=test.n_tasks,
                             method="mean rank over the columns every strategy has (1 = best; ties share the average)"))
        if test.reason is None:
            rows.append(_row("friedman_chi2", metric, suite=suite, value=test.statistic, p=test.chi2_p, n=test.n_tasks,
                             method="Friedman test, k − 1 degrees of freedom"))
            rows.append(_row("iman_davenport_f", metric, suite=suite, value=test.f, p=test.p, n=test.n_tasks,
                             significant=test.rejects, method=f"Iman–Davenport F (Demšar 2006), α = {stats.ALPHA}"))
            rows.append(_row("nemenyi_cd", metric, suite=suite, value=test.cd, n=test.n_tasks,
                             method=f"Nemenyi critical difference, α = {stats.ALPHA}"))
        iqm = stats.iqm_by_strategy(runs, metric, seed=seed)
        for r in iqm.to_dict("records"):
            rows.append(_row("iqm", metric, suite=suite, strategy=r["strategy"], value=r["iqm"], low=_nan_to_none(r["low"]),
                             high=_nan_to_none(r["high"]), n=r["runs"],
                             method=f"stratified bootstrap (Agarwal et al. 2021) on {iqm.attrs.get('scale', '')}"))
        # stats.fewest_seeds of each pair, from one count of the runs per cell (there are k² pairs)
        per_cell = runs.dropna(subset=[metric]).groupby(["strategy", "column"]).size()
        least = per_cell.groupby(level="strategy").min()

        def fewest(a: str, b: str) -> int:
            return int(min(least.get(a, 0), least.get(b, 0)))

        if len(iqm) >= 2:
            top = iqm.loc[iqm["iqm"].idxmax(), "strategy"]
            improvement = stats.improvement_matrix(runs, metric)
            for a in improvement.index:
                for b in improvement.columns:
                    if a == b or math.isnan(improvement.loc[a, b]):
                        continue
                    row = _row("p_improvement", metric, suite=suite, strategy=a, other=b,
                               value=float(improvement.loc[a, b]), n=fewest(a, b),
                               method="Mann–Whitney probability averaged over shared tasks (the figure's matrix; "
                                      "no interval)")
                    if a == top:  # the table's pairs, with their intervals
                        found = stats.probability_of_improvement(runs, metric, a, b, seed=seed)
                        if found is not None:
                            point, low, high = found
                            n = fewest(a, b)
                            row.update(value=point, low=_nan_to_none(low), high=_nan_to_none(high), n=n,
                                       significant=bool(not math.isnan(low) and low > 0.5
                                                        and n >= stats.MIN_SEEDS),
                                       method="stratified bootstrap (Agarwal et al. 2021), 95%")
                    rows.append(row)
        from tlbench.reports.studies import crossover_frame  # (imports matplotlib: only when needed)

        for r in crossover_frame(runs, metric).to_dict("records"):
            rows.append(_row("crossover_gap", metric, suite=suite, column=r["family"], backbone=r["backbone"],
                             task=f"{r['field']} = {r['value']:g}", strategy=r["best"], other="scratch",
                             value=r["gap"], low=_nan_to_none(r["low"]), high=_nan_to_none(r["high"]), n=r["n"],
                             p=_nan_to_none(r["p"]), significant=r["worse"],
                             method=f"paired t-test and its interval, α = {stats.ALPHA}"))
    frame = pd.DataFrame(rows, columns=COLUMNS)
    for name in ("value", "low", "high", "p", "p_adjusted"):
        frame[name] = frame[name].astype(float)
    frame["n"] = frame["n"].astype("Int64")
    frame["significant"] = frame["significant"].astype("boolean")
    return frame
