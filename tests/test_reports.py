"""Reports: statistics against hand computations and libraries, tables against pandas,
edge cases, LaTeX through pdflatex and the HTML page in a real browser."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from html import escape

import numpy as np
import pandas as pd
import pytest
from helpers import compile_tables, require
from scipy import stats as sps

from tlbench.reports import stats
from tlbench.reports.build import tuning_curves, write_report
from tlbench.reports.results import Results
from tlbench.reports.tables import accuracy_table, cost_table, to_markdown, with_columns
from tlbench.store.records import Protocol
from tlbench.store.space import Param, SearchSpace

STRATEGIES = ("linear_probe", "full_finetune", "scratch")


def runs_frame(*, strategies=STRATEGIES, tasks=("t1", "t2", "t3"), seeds=6, shift=True, rng_seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    rows = []
    for i, strategy in enumerate(strategies):
        for j, task in enumerate(tasks):
            for seed in range(seeds):
                acc = float(np.clip(0.5 + 0.1 * i - 0.05 * j + rng.normal(0, 0.03), 0, 1))
                rows.append({
                    "suite": "s", "task": task, "backbone": "bb", "strategy": strategy, "seed": 500000 + seed,
                    "params": {"lr": 0.1 * (i + 1)}, "test_accuracy": acc, "val_accuracy": acc,
                    "shifted_test_accuracy": acc - 0.1 if shift else None,
                    "train_seconds": 1.0 + i + rng.random(), "own_train_seconds": 1.0 + i,
                    "trainable_parameters": 1000 * (i + 1), "inference_parameters": 2000 * (i + 1),
                    "inference_ms_per_example": 0.01 * (i + 1), "peak_memory_mb": 100.0 + i,
                    "peak_memory_kind": "process_rss", "tlbench_version": "0.1", "torch_version": "2",
                    "git_commit": "abc", "device": "cpu", "host": "h", "started_at": "2026-11-27T00:00:00",
                })
    return pd.DataFrame(rows)


def trials_frame(runs: pd.DataFrame, budget: int = 6) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    rows = []
    for (task, strategy), _ in runs.groupby(["task", "strategy"]):
        for n in range(budget):
            rows.append({"suite": "s", "task": task, "backbone": "bb", "strategy": strategy, "number": n,
                         "state": "PRUNED" if n % 3 == 2 else "COMPLETE", "value": float(rng.uniform(0.3, 0.9)),
                         "epochs_reported": 5, "seconds": float(rng.uniform(0.1, 1.0)), "seed": n,
                         "params": "{}", "reason": None, "retry_of": None, "started": None, "completed": None})
    return pd.DataFrame(rows)


def results_for(runs: pd.DataFrame, *, trials: pd.DataFrame | None = None) -> Results:
    trials = trials_frame(runs) if trials is None else trials
    importances = pd.DataFrame([{"strategy": s, "task": "t1", "backbone": "bb", "param": p, "importance": v}
                                for s in runs["strategy"].unique() for p, v in (("lr", 0.7), ("epochs", 0.3))])
    protocol = Protocol(budget=6, sampler="TPESampler", n_startup_trials=3, pruner="MedianPruner",
                        pruner_startup_trials=3, pruner_warmup_epochs=3, objective="val accuracy")
    return Results(runs, trials, importances, protocol,
                   {"full_finetune": SearchSpace(params={"lr": Param(kind="float", low=1e-3, high=0.1, log=True)})})


# ------------------------------------------------------------------ statistics

def test_bootstrap_interval_is_reproducible_and_matches_scipy() -> None:
    x = np.array([0.81, 0.84, 0.79, 0.88, 0.83, 0.80])
    a, b = stats.bootstrap_ci(x, seed=3), stats.bootstrap_ci(x, seed=3)
    assert a == b and a[0] < x.mean() < a[1]
    # Hesterberg's expanded percentile: n = 6 → Φ(−√(6/5)·t₀.₉₇₅,₅) = Φ(−2.8163) on each side
    assert stats.expanded_confidence(6) == pytest.approx(1 - 2 * sps.norm.cdf(-math.sqrt(6 / 5) * 2.570582), abs=1e-6)
    ref = sps.bootstrap((x,), np.mean, n_resamples=stats.RESAMPLES, method="percentile",
                        confidence_level=stats.expanded_confidence(6), rng=np.random.default_rng(3)).confidence_interval
    assert a == (ref.low, ref.high)
    assert stats.bootstrap_ci(x, seed=4) != a
    assert all(math.isnan(v) for v in stats.bootstrap_ci([0.5]))
    assert stats.bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_average_ranks_and_critical_difference_equal_a_hand_computed_example() -> None:
    # 3 strategies on 4 tasks; ranks per task (1 = best): A 1,1,2,1  B 2,3,1,2.5  C 3,2,3,2.5
    means = pd.DataFrame({"d1": [0.9, 0.8, 0.7], "d2": [0.9, 0.7, 0.8], "d3": [0.8, 0.9, 0.7],
                          "d4": [0.9, 0.6, 0.6]}, index=["A", "B", "C"])
    ranks = stats.average_ranks(means)
    assert ranks.to_dict() == {"A": 1.25, "B": 2.125, "C": 2.625}
    # Demšar (2006), Table 5(a): q_0.05 = 2.343 for k = 3; CD = q·sqrt(k(k+1)/6N)
    assert stats.nemenyi_cd(3, 4) == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 4)), abs=1e-3)
    assert stats.nemenyi_cd(10, 14) == pytest.approx(3.164 * math.sqrt(10 * 11 / (6 * 14)), abs=1e-3)
    test = stats.rank_test(means)
    chi2, _ = sps.friedmanchisquare(*means.to_numpy())
    # Demšar eq. 3 with the ranks above: 12N/(k(k+1))·(ΣR² − k(k+1)²/4)
    assert chi2 == pytest.approx(12 * 4 / 12 * (1.25 ** 2 + 2.125 ** 2 + 2.625 ** 2 - 3 * 16 / 4), rel=0.1)
    f = (4 - 1) * chi2 / (4 * 2 - chi2)  # Iman–Davenport, eq. 4
    assert test.statistic == pytest.approx(chi2) and test.p == pytest.approx(sps.f.sf(f, 2, 6))
    # each statistic with its own p: χ² against χ²(k − 1), F against F(k − 1, (k − 1)(N − 1))
    assert test.chi2_p == pytest.approx(sps.chi2.sf(chi2, 2)) and test.f == pytest.approx(f)
    assert test.cd == pytest.approx(stats.nemenyi_cd(3, 4))


def test_cliques_join_strategies_within_the_critical_difference() -> None:
    ranks = pd.Series({"A": 1.0, "B": 1.5, "C": 2.6, "D": 4.0})
    assert stats.cliques(ranks, 1.2) == [["A", "B"], ["B", "C"]]
    assert stats.cliques(ranks, 5.0) == [["A", "B", "C", "D"]]
    assert stats.cliques(ranks, 0.4) == []


def test_pareto_front() -> None:
    from tlbench.reports.figures import pareto_front

    points = pd.DataFrame({"strategy": list("abcd"), "cost": [1.0, 2.0, 3.0, 0.5], "acc": [0.5, 0.7, 0.6, 0.4]})
    assert pareto_front(points, "cost", "acc")["strategy"].tolist() == ["d", "a", "b"]


def test_rank_test_says_why_it_cannot_run() -> None:
    two = pd.DataFrame({"d1": [0.9, 0.8], "d2": [0.7, 0.8]}, index=["A", "B"])
    assert "at least 3 strategies" in stats.rank_test(two).reason
    one_task = pd.DataFrame({"d1": [0.9, 0.8, 0.7]}, index=["A", "B", "C"])
    result = stats.rank_test(one_task)
    assert "at least 2 tasks" in result.reason and result.ranks.to_dict() == {"A": 1.0, "B": 2.0, "C": 3.0}


def test_paired_tests_are_holm_corrected_and_mark_ties() -> None:
    from statsmodels.stats.multitest import multipletests

    runs = with_columns(runs_frame())
    rng = np.random.default_rng(5)
    close = runs[runs["strategy"] == "scratch"].copy()  # within noise of the best, 0.001 lower
    close["test_accuracy"] = close["test_accuracy"] - 0.001 + rng.normal(0, 0.002, len(close))
    runs = pd.concat([runs, close.assign(strategy="scratch_close")], ignore_index=True)
    summary = stats.summarize(runs, "test_accuracy")
    compare = stats.compare_to_best(runs, "test_accuracy", summary).set_index(["strategy", "column"])
    for column in ("t1", "t2", "t3"):
        assert compare.loc[("scratch", column), "tied"]  # the best
        assert compare.loc[("scratch_close", column), "tied"]  # indistinguishable
        assert not compare.loc[("linear_probe", column), "tied"]  # 0.2 below, noise 0.03
        assert not compare.loc[("full_finetune", column), "tied"]
        wide = runs[runs["column"] == column].pivot(index="seed", columns="strategy", values="test_accuracy")
        others = ["full_finetune", "linear_probe", "scratch_close"]
        raw = [sps.ttest_rel(wide["scratch"], wide[o]).pvalue for o in others]
        adjusted = multipletests(raw, method="holm")[1]
        for other, p, p_adj in zip(others, raw, adjusted):
            assert compare.loc[(other, column), "p"] == pytest.approx(p)
            assert compare.loc[(other, column), "p_holm"] == pytest.approx(p_adj)


@pytest.mark.parametrize("pvalues", [[0.01, 0.04, 0.03, 0.2], [0.5, 0.5, 0.01, 0.5], [0.9, 0.8, 0.7], [0.02],
                                     [0.01, float("nan"), 0.04, 0.001, float("nan")], [float("nan")], []])
def test_holm_agrees_with_statsmodels(pvalues: list[float]) -> None:
    """Ties, values capped at 1, NaNs kept in place; statsmodels is the independent reference."""
    from statsmodels.stats.multitest import multipletests

    got = stats.holm(pvalues)
    p = np.asarray(pvalues, dtype=float)
    ok = ~np.isnan(p)
    assert np.isnan(got[~ok]).all() and len(got) == len(p)
    if ok.any():
        assert np.allclose(got[ok], multipletests(p[ok], method="holm")[1], rtol=0, atol=1e-15)


def test_a_constant_paired_difference_is_significant_not_untestable() -> None:
    runs = with_columns(runs_frame(strategies=("scratch",), tasks=("t1",)))
    runs = pd.concat([runs, runs.assign(strategy="worse", test_accuracy=runs["test_accuracy"] - 0.05)])
    compare = stats.compare_to_best(runs, "test_accuracy", stats.summarize(runs, "test_accuracy"))
    row = compare.set_index("strategy").loc["worse"]
    assert row["p"] < 1e-6 and not row["tied"] and row["tied"] is not None


def test_several_suites_are_never_pooled() -> None:
    runs = pd.concat([runs_frame(), runs_frame(rng_seed=1).assign(suite="other")], ignore_index=True)
    labelled = with_columns(runs)
    assert set(labelled["column"]) == {f"{s}: {t}" for s in ("s", "other") for t in ("t1", "t2", "t3")}
    assert stats.summarize(labelled, "test_accuracy")["n"].max() == 6  # not 12


def test_missing_cells_are_said_not_silently_dropped() -> None:
    runs = runs_frame()
    runs = runs[~((runs["strategy"] == "scratch") & (runs["task"] != "t1"))]  # scratch ran on t1 only
    table, test = __import__("tlbench.reports.tables", fromlist=["x"]).across_tasks_table(runs, "test_accuracy")
    assert "only 1 of 3 tasks" in test.reason
    assert "on the 1 task(s) all strategies have" in " ".join(table.notes)
    iqm = stats.iqm_by_strategy(with_columns(runs), "test_accuracy")
    assert (iqm["tasks"] == 1).all()


def test_scores_are_chance_normalised_when_classes_are_known() -> None:
    runs = with_columns(runs_frame()).assign(num_classes=4)
    scores, scale = stats.normalized(runs, "test_accuracy")
    assert scores.iloc[0] == pytest.approx((runs["test_accuracy"].iloc[0] - 0.25) / 0.75)
    assert "chance-normalised" in scale
    assert "raw" in stats.normalized(runs.drop(columns="num_classes"), "test_accuracy")[1]


def test_iqm_and_probability_of_improvement() -> None:
    iqm = stats._iqm_rows([np.array([[1.0, 2, 3, 4]]), np.array([[5.0, 6, 7, 100]])])
    assert iqm == pytest.approx([np.mean([3, 4, 5, 6])])
    x, y = np.array([0.5, 0.7, 0.9]), np.array([0.6, 0.7])
    # pairs (x, y): (.5,.6) 0, (.5,.7) 0, (.7,.6) 1, (.7,.7) ½, (.9,.6) 1, (.9,.7) 1
    assert stats.prob_greater(x, y) == pytest.approx(3.5 / 6)
    rows = stats._prob_greater_rows(np.tile(x, (2, 1)), np.tile(y, (2, 1)))
    assert rows == pytest.approx([stats.prob_greater(x, y)] * 2)
    runs = with_columns(runs_frame())
    point, low, high = stats.probability_of_improvement(runs, "test_accuracy", "scratch", "linear_probe")
    assert point == 1.0 and low <= point <= high
    assert stats.probability_of_improvement(runs, "test_accuracy", "scratch", "nope") is None
    iqm = stats.iqm_by_strategy(runs, "test_accuracy").set_index("strategy")
    direct = runs.groupby("strategy")["test_accuracy"].apply(lambda v: sps.trim_mean(v, 0.25))
    assert iqm["iqm"].to_dict() == pytest.approx(direct.to_dict())
    assert (iqm["low"] <= iqm["iqm"]).all() and (iqm["iqm"] <= iqm["high"]).all()
    again = stats.iqm_by_strategy(runs, "test_accuracy").set_index("strategy")
    assert again.equals(iqm)  # seeded


def test_expected_maximum_follows_dodge_et_al() -> None:
    values = [0.2, 0.5, 0.9]
    assert stats.expected_max(values, 1)[0] == pytest.approx(np.mean(values))
    # n = 2: P(max = v(i)) = (i/3)^2 − ((i−1)/3)^2 = 1/9, 3/9, 5/9
    assert stats.expected_max(values, 2)[0] == pytest.approx((0.2 * 1 + 0.5 * 3 + 0.9 * 5) / 9)
    assert stats.expected_max(values, 200)[0] == pytest.approx(0.9, abs=1e-9)
    curve = stats.tuning_curve(values, 2.0, 4)  # 2 s of compute per completed trial
    assert curve["trials"].tolist() == [1, 2, 3, 4] and curve["seconds"].tolist() == [2.0, 4.0, 6.0, 8.0]
    assert curve["expected_max"].is_monotonic_increasing


# ------------------------------------------------------------------ tables

def parse_cells(markdown: str) -> dict[tuple[str, str], str]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    out = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        for name, cell in zip(header[1:], cells[1:]):
            out[(cells[0], name)] = cell
    return out


def test_main_table_numbers_equal_a_pandas_recomputation(tmp_path) -> None:
    write_report(results_for(runs_frame()), tmp_path, title="t", figures_too=False)  # the numbers only
    runs = pd.read_parquet(tmp_path / "runs.parquet")  # what a reader of the paper would have
    table = parse_cells((tmp_path / "table.md").read_text().split("**Shifted")[0])
    for (strategy, task), group in runs.groupby(["strategy", "task"]):
        values = group["test_accuracy"].to_numpy()
        ci = sps.bootstrap((values,), np.mean, n_resamples=10_000, method="percentile",
                           confidence_level=stats.expanded_confidence(len(values)),
                           rng=np.random.default_rng(0)).confidence_interval
        expected = f"{values.mean() * 100:.1f} ± {(ci.high - ci.low) / 2 * 100:.1f}"
        assert table[(strategy, task)].strip("*†") == expected
    means = runs.groupby(["task", "strategy"])["test_accuracy"].mean().unstack("task")
    ranks = means.rank(ascending=False).mean(axis=1)
    for strategy, rank in ranks.items():
        assert table[(strategy, "avg. rank")] == f"{rank:.2f}"
    best = means.idxmax()
    for task, strategy in best.items():
        assert table[(strategy, task)].startswith("**")


def _section(markdown: str, caption: str) -> str:
    return markdown.split(f"**{caption}**")[1].split("\n**")[0]


def test_stats_parquet_holds_every_number_the_tables_show(tmp_path) -> None:
    """stats.parquet, read back, gives the main and shifted tables' means, half-widths, † marks and ranks, the
    across-tasks IQM intervals and Friedman numbers, and the probability-of-improvement intervals, as printed;
    ``load_results(...).stats`` is the same frame."""
    results = results_for(runs_frame(seeds=6, tasks=("t1", "t2", "t3", "t4")))
    write_report(results, tmp_path, title="t", figures_too=False)
    frame = pd.read_parquet(tmp_path / "stats.parquet")
    pd.testing.assert_frame_equal(frame, results.stats.reset_index(drop=True), check_dtype=False)
    markdown = (tmp_path / "table.md").read_text()
    for caption, metric in (("Test accuracy (%)", "test_accuracy"),
                            ("Shifted-test (out-of-distribution) accuracy (%)", "shifted_test_accuracy")):
        table = parse_cells(_section(markdown, caption))
        means = frame[(frame["statistic"] == "mean") & (frame["metric"] == metric)]
        assert len(means) == 12
        vs_best = frame[(frame["statistic"] == "vs_best") & (frame["metric"] == metric)].set_index(
            ["strategy", "column"])
        for r in means.to_dict("records"):
            cell = table[(r["strategy"], r["column"])]
            text = f"{r['value'] * 100:.1f} ± {(r['high'] - r['low']) / 2 * 100:.1f}"
            assert cell.strip("*†") == text
            key = (r["strategy"], r["column"])
            if key in vs_best.index:  # not the best: † exactly where the test cannot tell it from the best
                assert cell.endswith("†") == (vs_best.loc[key, "significant"] == False)  # noqa: E712
                assert vs_best.loc[key, "correction"].startswith("holm")
            else:
                assert cell.startswith("**")
    table = parse_cells(_section(markdown, "Test accuracy (%)"))
    ranks = frame[frame["statistic"] == "average_rank"]
    for r in ranks.to_dict("records"):
        assert table[(r["strategy"], "avg. rank")] == f"{r['value']:.2f}"
    across = parse_cells(_section(markdown, "Across tasks"))
    for r in frame[frame["statistic"] == "iqm"].to_dict("records"):
        assert across[(r["strategy"], "IQM (95% CI)")].strip("*") == f"{r['value']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
    (chi2,) = frame.loc[frame["statistic"] == "friedman_chi2"].to_dict("records")
    (f,) = frame.loc[frame["statistic"] == "iman_davenport_f"].to_dict("records")
    assert f"χ² = {chi2['value']:.2f} (p = {chi2['p']:.3g})" in markdown
    assert f"F = {f['value']:.2f} (p = {f['p']:.3g})" in markdown
    improvement = _section(markdown, "Probability of improvement")
    top = improvement.split("| ")[1].split(" vs")[0]
    shown = parse_cells(improvement)
    rows = frame[(frame["statistic"] == "p_improvement") & (frame["strategy"] == top)]
    assert len(rows) == 2 and rows["low"].notna().all()
    for r in rows.to_dict("records"):
        assert shown[(r["other"], "P(improvement) (95% CI)")].strip("*") == (
            f"{r['value']:.2f} [{r['low']:.2f}, {r['high']:.2f}]")
    pairs = frame[frame["statistic"] == "p_improvement"]
    assert len(pairs) == 6  # every ordered pair, the figure's matrix
    assert set(frame["statistic"]) <= set(__import__("tlbench.reports.statsframe", fromlist=["x"]).STATISTICS)


def test_stats_of_a_store_without_runs_is_an_empty_frame_with_the_columns() -> None:
    from tlbench.reports.statsframe import COLUMNS, statistics_frame

    assert list(statistics_frame(pd.DataFrame()).columns) == COLUMNS


def test_cost_table_numbers_equal_a_pandas_recomputation() -> None:
    runs = runs_frame()
    md = to_markdown(cost_table(runs))
    lines = [line for line in md.splitlines() if line.startswith("|")][2:]
    direct = runs.groupby(["task", "strategy"]).agg(
        train=("train_seconds", "mean"), own=("own_train_seconds", "mean"), train_sd=("train_seconds", "std"),
        own_sd=("own_train_seconds", "std"),
        trainable=("trainable_parameters", "mean"), peak=("peak_memory_mb", "mean"),
        inference=("inference_parameters", "mean"), ms=("inference_ms_per_example", "mean"), n=("seed", "count"))
    assert len(lines) == len(direct)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = direct.loc[(cells[0], cells[1])]
        assert cells[2:] == [f"{row['train']:.2f} ± {row['train_sd']:.2f}", f"{row['own']:.2f} ± {row['own_sd']:.2f}",
                             f"{row['trainable']:,.0f}",
                             f"{row['peak']:.0f}", f"{row['inference']:,.0f}", f"{row['ms']:.3f}", str(int(row["n"]))]


def test_several_backbones_get_separate_columns() -> None:
    runs = pd.concat([runs_frame(), runs_frame().assign(backbone="other")])
    header = to_markdown(accuracy_table(runs, "test_accuracy", caption="x")).splitlines()[2]
    assert "t1 / bb" in header and "t1 / other" in header


# ------------------------------------------------------------------ whole report, edge cases

FILES = ["runs.parquet", "runs.csv", "trials.parquet", "table.md", "table.tex", "report.html",
         "figures/accuracy.png", "figures/accuracy.pdf", "figures/cost_accuracy.png", "figures/tuning_curves.png"]


@pytest.mark.parametrize("case,needle", [
    ("one-seed", "single seed"),
    ("one-task", "at least 2 tasks"),
    ("one-strategy", "at least 3 strategies"),
    ("two-strategies", "at least 3 strategies"),
])
def test_small_stores_still_report_and_say_what_they_cannot_compute(tmp_path, case: str, needle: str) -> None:
    runs = {"one-seed": runs_frame(seeds=1), "one-task": runs_frame(tasks=("t1",)),
            "one-strategy": runs_frame(strategies=("full_finetune",)),
            "two-strategies": runs_frame(strategies=("full_finetune", "scratch"))}[case]
    draw = case == "one-seed"  # figures of the smallest store; the others' tables (a figure takes a second)
    report = write_report(results_for(runs), tmp_path, title=case, figures_too=draw)
    for name in FILES:
        assert (tmp_path / name).is_file() == (draw or not name.startswith("figures/")), name
    text = (tmp_path / "table.md").read_text()
    assert needle in text and needle in (tmp_path / "report.html").read_text()
    if case == "one-seed":
        rows = [line for line in text.split("**Across")[0].splitlines() if line.startswith("|")]
        assert rows and not any(" ± " in line for line in rows)
    if case == "one-strategy":
        assert any("two strategies" in n for n in report.notes)


def test_no_shifted_split_no_shifted_table(tmp_path) -> None:
    write_report(results_for(runs_frame(shift=False)), tmp_path, title="x")
    assert "Shifted" not in (tmp_path / "table.md").read_text()
    assert not (tmp_path / "figures" / "accuracy_shifted.png").exists()


def test_tuning_curves_use_the_completed_trials_among_the_first_budget() -> None:
    trials = trials_frame(runs_frame(), budget=8)
    curves = tuning_curves(trials, 6)
    one = curves[(curves["column"] == "t1") & (curves["strategy"] == "scratch")]
    first = trials[(trials["task"] == "t1") & (trials["strategy"] == "scratch")].sort_values("number").head(6)
    complete = first[first["state"] == "COMPLETE"]
    assert one["trials"].max() == len(complete) == 4  # numbers 2 and 5 were pruned
    assert one["expected_max"].iloc[-1] == pytest.approx(stats.expected_max(complete["value"], 4)[0])
    per_complete = first["seconds"].sum() / len(complete)  # pruned trials' compute counts too
    assert one["seconds"].iloc[0] == pytest.approx(per_complete)


def test_latex_tables_compile(tmp_path) -> None:
    runs = runs_frame(strategies=("linear_probe", "lp_ft", "l2_sp"), seeds=3)
    runs["params"] = [{"lr_sgd": 10 ** -int(task[1]) / 3, "momentum": 0.9, "optimizer": "sgd", "epochs": 12,
                       "probe_weight_decay": 1e-5, "reuses": "0123abcd"} for task in runs["task"]]
    write_report(results_for(runs), tmp_path, title="x")
    log = compile_tables(tmp_path / "table.tex", tmp_path, ("booktabs", "graphicx"))
    assert "Overfull \\hbox" not in log  # every table fits the page
    text = (tmp_path / "table.tex").read_text()
    assert "lp\\_ft" in text and "\\textgreater{}" in text  # "P(a > b)" would print as "P(a ¿ b)"
    assert "Selected hyperparameters: lp\\_ft" in text and "3.33e-03" in text and "0123abcd" not in text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_report_html_renders_every_image_in_a_real_browser(tmp_path) -> None:
    browser = require(chromium(), "chromium")
    runs = runs_frame()
    trials = trials_frame(runs)
    trials["params"] = [json.dumps({"lr": 10 ** -(1 + n % 3), "optimizer": ["sgd", "adamw"][n % 2]})
                        for n in trials["number"]]
    write_report(results_for(runs, trials=trials), tmp_path, title="x")
    page = (tmp_path / "report.html").read_text()
    assert "src=\"data:image/png;base64," in page
    assert not re.search(r'(src|href)="(https?:|//|figures/)', page)  # self-contained: nothing fetched
    probe = tmp_path / "probe.html"  # the page plus a script that reports what loaded
    probe.write_text(page.replace("</body>", """<script>
window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-tables', document.querySelectorAll('table').length);
});
</script></body>"""))
    proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+)/(\d+)"', proc.stdout)
    assert match, proc.stderr[-2000:]
    loaded, total = map(int, match.groups())
    assert total >= 5 + 3 and loaded == total  # the slice figure of each of the 3 strategies too
    assert int(re.search(r'data-tables="(\d+)"', proc.stdout).group(1)) >= 4 + 3  # + one hyperparameter table each


# ------------------------------------------------------------------ low seed counts: caveats, no false bold

def sections(markdown: str) -> dict[str, str]:
    """A report's table.md cut into its tables, by caption."""
    parts = re.split(r"^\*\*(.+?)\*\*$", markdown, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts) - 1, 2)}


def two_seed_results():
    """2 seeds, strategies 10 points apart with noise 3 (every run of the best beats every run of
    the others), a configuration per strategy and tuning trials whose learning rate and optimizer
    vary."""
    runs = runs_frame(strategies=("linear_probe", "full_finetune", "ensemble"), seeds=2)
    by_strategy = {"linear_probe": {"lr": 0.0031622, "weight_decay": 1e-6, "epochs": 12},
                   "full_finetune": {"optimizer": "sgd", "lr_sgd": 0.05, "epochs": 7},
                   "ensemble": {"members": ["full_finetune"], "size": 3, "reuses": "feedbeef"}}
    runs["params"] = [by_strategy[s] for s in runs["strategy"]]
    trials = trials_frame(runs[runs["strategy"] != "ensemble"])  # an ensemble has nothing to tune
    trials["params"] = [json.dumps({"lr": 10 ** -(1 + n % 3), "optimizer": ["sgd", "adamw"][n % 2]})
                        for n in trials["number"]]
    results = results_for(runs, trials=trials)
    results.spaces = {"linear_probe": SearchSpace(params={"lr": Param(kind="float", low=1e-4, high=0.1, log=True),
                                                          "epochs": Param.fixed(12)})}
    return results


@pytest.fixture(scope="module")
def two_seed_report(tmp_path_factory):
    """One report of :func:`two_seed_results` shared by the tests below (a report takes seconds)."""
    out = tmp_path_factory.mktemp("two-seeds")
    return out, write_report(two_seed_results(), out, title="x")


def test_two_seeds_every_statistic_says_it_is_descriptive_and_nothing_is_bold_as_significant(two_seed_report) -> None:
    out, report = two_seed_report
    tables = sections((out / "table.md").read_text())
    for caption in ("Test accuracy (%)", "Shifted-test (out-of-distribution) accuracy (%)", "Across tasks",
                    "Probability of improvement"):
        assert "Few seeds: 2 evaluation seeds per task and strategy" in tables[caption], caption
    improvement = tables["Probability of improvement"]
    rows = [line for line in improvement.splitlines() if line.startswith("| ") and "vs |" not in line]
    assert any("1.00 [1.00, 1.00]" in row for row in rows)  # what the 2-seed run printed in bold
    assert not any("**" in row for row in rows) and "none is bold" in improvement
    html = (out / "report.html").read_text()
    for figure in ("accuracy", "accuracy_shifted", "improvement"):
        caption = report.captions[figure]
        assert "Few seeds" in caption and f">{escape(caption)}</figcaption>" in html, figure
    assert (out / "table.tex").read_text().count("Few seeds") >= 4
    assert any("Few seeds" in n for n in report.notes)


def test_enough_seeds_no_caveat_and_significant_intervals_are_bold() -> None:
    from tlbench.reports.tables import across_tasks_table, improvement_table

    runs = runs_frame(seeds=6)
    tables = [accuracy_table(runs, "test_accuracy", caption="x"), across_tasks_table(runs, "test_accuracy")[0],
              improvement_table(runs, "test_accuracy")]
    assert not any("Few seeds" in note for table in tables for note in table.notes)
    assert any(row[1].bold and row[1].text == "1.00 [1.00, 1.00]" for row in tables[2].rows)


def test_a_bold_probability_beside_a_dagger_is_explained() -> None:
    from tlbench.reports.tables import improvement_table

    rows = []  # "top" beats "other" on every run, by 0.1 point on 4 seeds and by 30 on one: the paired
    for task in ("t1", "t2", "t3"):  # t-test cannot tell them apart, P(improvement) is 1
        for seed, gap in enumerate((0.001, 0.001, 0.001, 0.001, 0.3)):
            base = 0.5 + seed * 1e-4
            for strategy, acc in (("top", base + gap), ("other", base), ("far", 0.2 + seed * 1e-3)):
                rows.append({"suite": "s", "task": task, "backbone": "bb", "strategy": strategy, "seed": seed,
                             "test_accuracy": acc})
    runs = with_columns(pd.DataFrame(rows))
    compare = stats.compare_to_best(runs, "test_accuracy", stats.summarize(runs, "test_accuracy"))
    assert compare.set_index(["strategy", "column"]).loc[("other", "t1"), "tied"]  # † in the main table
    table = improvement_table(runs, "test_accuracy")
    cells = {row[0].text: row[1] for row in table.rows}
    assert cells["other"].bold and cells["other"].text.startswith("1.00")
    note = " ".join(table.notes)
    assert "other (t1, t2, t3)" in note and "answer different questions" in note


# ------------------------------------------------------------------ selected hyperparameters

def test_parameters_print_as_a_paper_would() -> None:
    from tlbench.reports.tables import fmt_param

    values = (0.0031622, 0.25, 12, 12.0, 1e-4, 0.0, 123.456, 12345.6, 2.5e5, True, "sgd", [1, 2])
    assert [fmt_param(v) for v in values] == ["3.16e-03", "0.25", "12", "12", "1.00e-04", "0", "123", "1.23e+04",
                                              "250000", "yes", "sgd", "1, 2"]


def test_selected_hyperparameters_section_in_markdown_latex_and_html(two_seed_report) -> None:
    out, _ = two_seed_report
    md = (out / "table.md").read_text()
    appendix = md.split("## Selected hyperparameters", 1)[1]
    probe = parse_cells(sections(appendix)["Selected hyperparameters: linear_probe"])
    assert probe[("t1", "lr")] == "3.16e-03" and probe[("t1", "weight_decay")] == "1.00e-06"
    assert probe[("t2", "epochs")] == "12" and probe[("t3", "backbone")] == "bb"
    assert "Searched: epochs fixed: 12; lr [0.0001, 0.1] (log)." in appendix
    assert parse_cells(sections(appendix)["Selected hyperparameters: ensemble"])[("t1", "members")] == "full_finetune"
    assert "feedbeef" not in md and "reuses" not in appendix  # bookkeeping, not a hyperparameter
    tex = (out / "table.tex").read_text()
    assert tex.count("Selected hyperparameters: ") == 3 and "3.16e-03" in tex
    html = (out / "report.html").read_text()
    assert "<h2>Selected hyperparameters</h2>" in html and html.count("Selected hyperparameters: ") == 3
    assert "<td class=\"num\">3.16e-03</td>" in html


def test_slice_figure_draws_log_ranges_on_a_log_axis_and_categories_as_categories(tmp_path, monkeypatch) -> None:
    from tlbench.reports import figures

    runs = runs_frame(seeds=2)
    trials = trials_frame(runs)
    trials["params"] = [json.dumps({"lr": 10 ** -(1 + n % 3), "optimizer": ["sgd", "adamw"][n % 2], "epochs": 5,
                                    "reuses": "x"}) for n in trials["number"]]
    drawn = {}

    def keep(fig, out, name):
        drawn[name] = fig
        return [out / f"{name}.png"]

    monkeypatch.setattr(figures, "save_figure", keep)
    assert figures.slice_figure(trials, "scratch", tmp_path, scales={"lr": "log"})
    axes = [ax for ax in drawn["slice_scratch"].axes if ax.get_visible() and ax.get_xlabel()]
    by_label = {ax.get_xlabel(): ax for ax in axes}
    assert set(by_label) == {"lr (log)", "optimizer"}  # epochs never varied, reuses is bookkeeping
    assert by_label["lr (log)"].get_xscale() == "log"
    assert [t.get_text() for t in by_label["optimizer"].get_xticklabels()] == ["adamw", "sgd"]
    points = sum(len(c.get_offsets()) for c in by_label["lr (log)"].collections)
    assert points == len(trials[trials["strategy"] == "scratch"])  # completed and pruned (faded) alike
    assert figures.slice_figure(trials.assign(params="{}"), "scratch", tmp_path) == []  # nothing varied


def test_report_writes_a_slice_figure_per_tuned_strategy(two_seed_report) -> None:
    out, report = two_seed_report
    for strategy in ("linear_probe", "full_finetune"):
        for ext in ("png", "pdf"):
            assert out / "figures" / f"slice_{strategy}.{ext}" in report.files
        assert f"slice_{strategy}" in report.captions
    assert not (out / "figures" / "slice_ensemble.png").exists()  # no trials
    pngs = [f for f in report.files if f.suffix == ".png"]
    assert (out / "report.html").read_text().count("data:image/png;base64") == len(pngs) == len(report.captions)


def test_the_search_space_a_run_stored_wins_over_the_sampled_distributions() -> None:
    import optuna

    from tlbench.reports.results import load_results
    from tlbench.store.records import StudyName

    storage = optuna.storages.InMemoryStorage()
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "optimizer": optuna.distributions.CategoricalDistribution(["sgd"]),
             "momentum": optuna.distributions.FloatDistribution(0.8, 0.99)}
    for strategy, declared in (("full_finetune", {"lr": "[0.001, 0.1] (log)", "optimizer": "fixed: sgd",
                                                  "decay": "[1e-06, 0.01] (log)"}), ("scratch", None)):
        study = optuna.create_study(study_name=str(StudyName("s", "t", "b", strategy, "tune")), storage=storage,
                                    direction="maximize")
        if declared:
            study.set_user_attr("search_space", declared)
        study.add_trial(optuna.trial.create_trial(params={"lr": 0.01, "optimizer": "sgd", "momentum": 0.9},
                                                  distributions=dists, value=0.5))
    results = load_results(storage, importances=False)
    assert results.search_spaces["full_finetune"] == {"decay": "[1e-06, 0.01] (log)", "lr": "[0.001, 0.1] (log)",
                                                      "optimizer": "fixed: sgd"}
    assert results.search_spaces["scratch"] == {"lr": "[0.0001, 0.1] (log)", "momentum": "[0.8, 0.99]",
                                                "optimizer": "{sgd}"}  # nothing stored: as before
    assert results.scales["full_finetune"] == {"decay": "log", "lr": "log", "momentum": "linear",
                                               "optimizer": "categorical"}


# ------------------------------------------------------------------ costs

def test_cost_table_shows_the_feature_pass_as_its_own_column() -> None:
    runs = runs_frame()
    runs["feature_seconds"] = [0.75 if s == "linear_probe" else 0.0 for s in runs["strategy"]]
    table = cost_table(runs)
    lines = [line.split("|") for line in to_markdown(table).splitlines() if line.startswith("| t1 |")]
    column = table.header.index("feature pass s") + 1
    assert {cells[2].strip(): cells[column].strip() for cells in lines} == {
        "linear_probe": "0.75", "full_finetune": "–", "scratch": "–"}
    notes = " ".join(table.notes)
    assert "whether it computed the features or found them cached" in notes
    assert "median of up to 3 timed passes" in notes


def test_the_report_line_lists_every_file_written(two_seed_report) -> None:
    from tlbench.cli.worker import written

    out, report = two_seed_report
    line = written(report.files, out)
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    figures = [name.removeprefix("figures/") for name in on_disk if name.startswith("figures/")]
    assert f"figures/ ({len(figures)} files: " in line and len(figures) > 10
    for name in on_disk:
        assert (name if "/" not in name else name.split("/", 1)[1]) in line, name
    assert line.startswith("runs.parquet, runs.csv, trials.parquet, stats.parquet, stats.csv, table.md, table.tex, "
                           "report.html")


def test_figures_drawn_in_parallel_are_the_files_a_sequential_report_writes(two_seed_report, tmp_path,
                                                                             monkeypatch) -> None:
    """Figures are drawn in forked processes when there are cores for it; the files (PNG and PDF,
    byte for byte: no creation date in the PDFs) and the report's captions are those of one process."""
    parallel_out, parallel = two_seed_report
    monkeypatch.setattr("tlbench.reports.parallel.core_count", lambda: 1)
    sequential = write_report(two_seed_results(), tmp_path, title="x")
    assert sequential.captions == parallel.captions
    mine = sorted(p.relative_to(tmp_path) for p in sequential.files if p.parent.name == "figures")
    theirs = sorted(p.relative_to(parallel_out) for p in parallel.files if p.parent.name == "figures")
    assert mine == theirs and len(mine) >= 10
    for name in mine:
        assert (tmp_path / name).read_bytes() == (parallel_out / name).read_bytes(), name


def _no_figure(out):
    return []


def _broken_figure(out):
    raise ValueError(f"cannot draw {out}")


def test_a_figure_that_fails_in_a_worker_fails_the_report() -> None:
    from tlbench.reports.parallel import run_jobs

    assert run_jobs([(_no_figure, ("y",), {}), (_no_figure, ("x",), {})], processes=2) == [[], []]
    with pytest.raises(ValueError, match="cannot draw x"):
        run_jobs([(_no_figure, ("y",), {}), (_broken_figure, ("x",), {})], processes=2)


def test_an_interval_asked_for_again_is_computed_once_and_is_the_same() -> None:
    from tlbench.reports import stats as report_stats

    report_stats._bootstrap.cache_clear()
    values = [0.81, 0.84, 0.79, 0.88, 0.83]
    first = report_stats.bootstrap_ci(values, seed=3)
    again = report_stats.bootstrap_ci(np.array(values), seed=3)
    assert first == again and report_stats._bootstrap.cache_info().hits == 1
    report_stats.bootstrap_ci(values, seed=4)  # another seed is computed, not served from the cache
    assert report_stats._bootstrap.cache_info().misses == 2


def test_swept_tasks_sort_numerically_and_the_learning_rate_keeps_its_searched_name() -> None:
    """From a new user's trial of a shots sweep: the cost table and the selected hyperparameters listed
    shots10 before shots2, and showed ``lr`` for what the search space and the trials call ``lr_adamw``."""
    from tlbench.reports.tables import hyperparameter_tables

    runs = runs_frame(strategies=("scratch",), tasks=("d.shots10", "d.shots2", "d.shots5"), seeds=2)
    runs["params"] = [{"optimizer": "adamw", "lr": 0.001, "epochs": 3}] * len(runs)
    cost = to_markdown(cost_table(runs))
    assert [line.split("|")[1].strip() for line in cost.splitlines() if line.startswith("| d.")] == [
        "d.shots2", "d.shots5", "d.shots10"]
    spaces = {"scratch": {"epochs": "[2, 4]", "lr_adamw": "[1e-05, 0.01] (log)", "lr_sgd": "[0.001, 0.1] (log)",
                          "optimizer": "{sgd, adamw}"}}
    [table] = hyperparameter_tables(runs, spaces)
    assert table.header == ["task", "backbone", "epochs", "lr_adamw", "optimizer"]
    assert [row[0].text for row in table.rows] == ["d.shots2", "d.shots5", "d.shots10"]
    [plain] = hyperparameter_tables(runs, {"scratch": {"lr": "[1e-05, 0.01] (log)"}})
    assert "lr" in plain.header  # searched as lr: stays lr


def test_the_protocol_describes_studies_options_and_overrides(tmp_path) -> None:
    """The report's protocol names the sweeps and sensitivity studies, the strategy options of the strategies
    shown (not of others) and the command line's --set overrides, as the store recorded them."""
    runs = runs_frame(seeds=2)
    runs["task_info"] = [{"sweep": {"family": "d", "field": "shots", "value": {"t1": 2, "t2": 10, "t3": 5}[t]}}
                         for t in runs["task"]]
    sensitivity = pd.DataFrame([{"task": "t1", "backbone": "bb", "strategy": "full_finetune", "seed": seed,
                                 "test_accuracy": 0.5, "varied:lr": lr, "tuned:lr": 0.01}
                                for lr in (0.001, 0.01) for seed in range(2)])
    results = results_for(runs)
    results.sensitivity = sensitivity
    results.settings = {"strategy_options": {"full_finetune": {"freeze": 1}, "distillation": {"teacher": "x"}}}
    results.overrides = ["training.epochs=[3, 5]"]
    write_report(results, tmp_path, title="t", figures_too=False)
    page = (tmp_path / "report.html").read_text()
    protocol = page[page.index("<h2>Protocol"):page.index("<h2>Search spaces")]
    assert "<dt>sweeps</dt><dd>d: shots = 2, 5, 10</dd>" in protocol
    assert "full_finetune: lr ∈ {0.001, 0.01} (2 seeds, around the tuned configuration)" in protocol
    assert "full_finetune: {&quot;freeze&quot;: 1}" in protocol and "distillation" not in protocol
    assert "--set training.epochs=[3, 5]" in protocol


@pytest.mark.parametrize("low, high", [(0.15, 0.6), (0.04, 2.5), (1.0, 700.0), (0.01, 5000.0)])
def test_log_axes_label_without_overlap(low, high) -> None:
    """The cost/accuracy and tuning-compute axes: a range under a decade used to get Matplotlib's minor labels
    (2×10⁻¹ 3×10⁻¹ 4×10⁻¹ …), which overlapped."""
    from tlbench.reports.figures import plt, readable_log_axis

    fig, ax = plt.subplots(figsize=(3.2, 2.4))
    ax.scatter(np.geomspace(low, high, 7), np.linspace(0, 1, 7))
    readable_log_axis(ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    shown = [t for t in ax.get_xticklabels(which="both") if t.get_text() and t.get_visible()
             and low / 1.5 <= t.get_position()[0] <= high * 1.5]
    assert len(shown) >= 2, [t.get_text() for t in shown]
    boxes = sorted((t.get_window_extent(renderer) for t in shown), key=lambda b: b.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:])), [t.get_text() for t in shown]
    plt.close(fig)


def test_every_stats_row_says_its_suite_and_method() -> None:
    results = results_for(runs_frame(seeds=6))
    frame = results.stats
    assert frame["method"].notna().all() and (frame["suite"] == "s").all()
    pairs = frame[frame["statistic"] == "p_improvement"]
    assert pairs["n"].notna().all()  # the seeds behind every pair, with or without its interval


def _importances_of_cell(values: dict[str, float]) -> dict[str, float]:
    return values


def test_importances_left_for_the_report_are_computed_beside_the_figures_with_the_same_files(
        two_seed_report, tmp_path) -> None:
    """``load_results(importances="later")`` (what ``tlbench report`` and a run's report use) hands the
    fANOVA work to the report, which runs it in its workers while the figures are drawn and the tables
    computed: the files are those of a report whose importances were computed first."""
    done_out, done = two_seed_report
    pending = two_seed_results()
    cells = list(pending.importances.groupby(["strategy", "task", "backbone"], sort=False))
    pending.importance_jobs = [(key, (_importances_of_cell, (dict(zip(part["param"], part["importance"])),), {}))
                               for key, part in cells]
    expected = pending.importances
    pending.importances = expected.iloc[:0]
    report = write_report(pending, tmp_path, title="x")
    assert pending.importance_jobs == [] and pending.importances.reset_index(drop=True).equals(
        expected.reset_index(drop=True))
    assert report.captions == done.captions and report.notes == done.notes
    assert [p.relative_to(tmp_path) for p in report.files] == [p.relative_to(done_out) for p in done.files]
    for path in report.files:
        if path.suffix in (".png", ".pdf", ".md", ".tex", ".parquet"):
            assert path.read_bytes() == (done_out / path.relative_to(tmp_path)).read_bytes(), path.name
    # a report without figures leaves the work undone (nothing there needs it)
    tables_only = two_seed_results()
    tables_only.importance_jobs = [(("x", "t1", "bb"), (_broken_figure, ("never run",), {}))]
    write_report(tables_only, tmp_path / "tables", title="x", figures_too=False)
    assert len(tables_only.importance_jobs) == 1


def test_fanova_later_or_at_once_gives_the_same_importances() -> None:
    import optuna

    from tlbench.reports.results import load_results
    from tlbench.store.records import StudyName

    storage = optuna.storages.InMemoryStorage()
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True),
             "epochs": optuna.distributions.IntDistribution(1, 20)}
    rng = np.random.default_rng(0)
    for strategy in ("full_finetune", "scratch"):
        study = optuna.create_study(study_name=str(StudyName("s", "t1", "bb", strategy, "tune")), storage=storage,
                                    direction="maximize")
        for _ in range(8):
            lr, epochs = float(10 ** rng.uniform(-4, -1)), int(rng.integers(1, 21))
            study.add_trial(optuna.trial.create_trial(params={"lr": lr, "epochs": epochs}, distributions=dists,
                                                      value=0.5 + 0.1 * np.log10(lr) / 4 + 0.001 * epochs))
    now = load_results(storage)
    later = load_results(storage, importances="later")
    assert len(now.importances) == 4 and later.importances.empty and len(later.importance_jobs) == 2
    assert later.compute_importances().equals(now.importances) and later.importance_jobs == []
    assert later.compute_importances().equals(now.importances)  # once done, done
    with pytest.raises(ValueError, match="importances='soon'; allowed: True, False or 'later'"):
        load_results(storage, importances="soon")


def test_a_job_pool_runs_jobs_handed_over_at_any_time() -> None:
    from tlbench.reports.parallel import JobPool

    for processes in (1, 2):
        with JobPool(processes) as pool:
            first = pool.submit((_importances_of_cell, ({"a": 1.0},), {}))
            broken = pool.submit((_broken_figure, ("x",), {}))
            later = pool.submit((_importances_of_cell, ({"b": 2.0},), {}))
            assert first.result() == {"a": 1.0} and later.result() == {"b": 2.0}
            with pytest.raises(ValueError, match="cannot draw x"):
                broken.result()
