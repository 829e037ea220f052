from __future__ import annotations

import pandas as pd
import pytest

from reports.tables import markdown_table, report_markdown, summary


def runs_frame() -> pd.DataFrame:
    rows = []
    acc = {("a", "t1"): [0.9, 0.8, 0.85], ("b", "t1"): [0.5, 0.6, 0.7],
           ("a", "t2"): [0.1, 0.2, 0.3], ("b", "t2"): [0.4, 0.4, 0.4]}
    for (strategy, task), values in acc.items():
        for seed, v in enumerate(values):
            rows.append({"suite": "s", "task": task, "backbone": "bb", "strategy": strategy,
                         "seed": seed, "test_accuracy": v, "shifted_test_accuracy": None,
                         "train_seconds": 1.0 + seed, "trainable_parameters": 10})
    return pd.DataFrame(rows)


def test_summary_equals_pandas_recomputation() -> None:
    runs = runs_frame()
    stats = summary(runs, "test_accuracy").set_index(["strategy", "column"])
    direct = runs.groupby(["strategy", "task"])["test_accuracy"].agg(["mean", "std"])
    for (strategy, task), row in direct.iterrows():
        assert stats.loc[(strategy, task), "mean"] == pytest.approx(row["mean"])
        assert stats.loc[(strategy, task), "std"] == pytest.approx(row["std"])


def test_markdown_bolds_best_per_column() -> None:
    table = markdown_table(runs_frame())
    lines = table.strip().splitlines()
    assert lines[0] == "| strategy | t1 | t2 |"
    assert lines[2] == "| a | **85.0 ± 5.0** | 20.0 ± 10.0 |"
    assert lines[3] == "| b | 60.0 ± 10.0 | **40.0 ± 0.0** |"


def test_single_seed_and_missing_metric() -> None:
    runs = runs_frame().query("seed == 0")
    assert "(n=1)" in markdown_table(runs)
    page = report_markdown(runs, title="x")
    assert "Shifted test" not in page  # no task has a shifted split here
    assert "## Cost" in page


def test_several_backbones_get_separate_columns() -> None:
    runs = pd.concat([runs_frame(), runs_frame().assign(backbone="other")])
    header = markdown_table(runs).splitlines()[0]
    assert "t1 / bb" in header and "t1 / other" in header
