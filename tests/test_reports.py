"""Reports: statistics against hand computations and libraries, tables against pandas,
edge cases, LaTeX through pdflatex and the HTML page in a real browser."""

from __future__ import annotations

import math
import re
import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tlbench.records import Protocol
from tlbench.reports import stats
from tlbench.reports.build import tuning_curves, write_report
from tlbench.reports.data import Results
from tlbench.reports.tables import accuracy_table, cost_table, to_markdown, with_columns

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
    return Results(runs, trials, importances, protocol, {"full_finetune": {"lr": "[0.001, 0.1] (log)"}})


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
    write_report(results_for(runs_frame()), tmp_path, title="t")
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


def test_cost_table_numbers_equal_a_pandas_recomputation() -> None:
    runs = runs_frame()
    md = to_markdown(cost_table(runs))
    lines = [line for line in md.splitlines() if line.startswith("|")][2:]
    direct = runs.groupby(["task", "strategy"]).agg(
        train=("train_seconds", "mean"), own=("own_train_seconds", "mean"),
        trainable=("trainable_parameters", "mean"), peak=("peak_memory_mb", "mean"),
        inference=("inference_parameters", "mean"), ms=("inference_ms_per_example", "mean"), n=("seed", "count"))
    assert len(lines) == len(direct)
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        row = direct.loc[(cells[0], cells[1])]
        assert cells[2:] == [f"{row['train']:.2f}", f"{row['own']:.2f}", f"{row['trainable']:,.0f}",
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
    report = write_report(results_for(runs), tmp_path, title=case)
    for name in FILES:
        assert (tmp_path / name).is_file(), name
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


@pytest.mark.skipif(shutil.which("pdflatex") is None,
                    reason="pdflatex not installed (apt-get install texlive-latex-recommended)")
def test_latex_tables_compile(tmp_path) -> None:
    runs = runs_frame(strategies=("linear_probe", "lp_ft", "l2_sp"))
    write_report(results_for(runs), tmp_path, title="x")
    tex = tmp_path / "paper.tex"
    tex.write_text("\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
                   f"\\input{{{tmp_path / 'table.tex'}}}\n\\end{{document}}\n")
    proc = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", tex.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert (tmp_path / "paper.pdf").stat().st_size > 1000
    log = (tmp_path / "paper.log").read_text(errors="replace")
    assert "Overfull \\hbox" not in log  # every table fits the page
    text = (tmp_path / "table.tex").read_text()
    assert "lp\\_ft" in text and "\\textgreater{}" in text  # "P(a > b)" would print as "P(a ¿ b)"


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(chromium() is None, reason="no Chromium (apt-get install chromium) for the browser test")
def test_report_html_renders_every_image_in_a_real_browser(tmp_path) -> None:
    write_report(results_for(runs_frame()), tmp_path, title="x")
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
    proc = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
                           "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    match = re.search(r'data-images="(\d+)/(\d+)"', proc.stdout)
    assert match, proc.stderr[-2000:]
    loaded, total = map(int, match.groups())
    assert total >= 5 and loaded == total
    assert int(re.search(r'data-tables="(\d+)"', proc.stdout).group(1)) >= 4
