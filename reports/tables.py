"""Tables from the tidy runs frame: rows strategies, columns tasks, mean ± std over seeds."""

from __future__ import annotations

import math

import pandas as pd

def column_labels(runs: pd.DataFrame) -> pd.Series:
    """A task's column is its name, or ``task / backbone`` when it has several backbones."""
    n_backbones = runs.groupby("task")["backbone"].transform("nunique")
    return runs["task"].where(n_backbones == 1, runs["task"] + " / " + runs["backbone"])


def summary(runs: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Long frame of (strategy, column) → mean, std, n over evaluation seeds of ``metric``."""
    frame = runs.assign(column=column_labels(runs)).dropna(subset=[metric])
    stats = frame.groupby(["strategy", "column"])[metric].agg(["mean", "std", "count"])
    return stats.rename(columns={"count": "n"}).reset_index()


def _cell(mean: float, std: float, n: int, scale: float, digits: int) -> str:
    if n < 2 or math.isnan(std):
        return f"{mean * scale:.{digits}f} (n={n})"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def markdown_table(runs: pd.DataFrame, metric: str = "test_accuracy", *, scale: float = 100.0,
                   digits: int = 1) -> str:
    """A Markdown table with the best mean per column in bold (ties all bold)."""
    stats = summary(runs, metric)
    if stats.empty:
        return "_no runs with this metric_\n"
    columns = sorted(stats["column"].unique())
    strategies = sorted(stats["strategy"].unique())
    best = stats.groupby("column")["mean"].max()
    lines = ["| strategy | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    indexed = stats.set_index(["strategy", "column"])
    for strategy in strategies:
        cells = []
        for column in columns:
            if (strategy, column) not in indexed.index:
                cells.append("–")
                continue
            row = indexed.loc[(strategy, column)]
            text = _cell(row["mean"], row["std"], int(row["n"]), scale, digits)
            cells.append(f"**{text}**" if math.isclose(row["mean"], best[column]) else text)
        lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def cost_table(runs: pd.DataFrame) -> str:
    """Mean training seconds and trainable parameters per strategy and column."""
    frame = runs.assign(column=column_labels(runs))
    stats = frame.groupby(["column", "strategy"]).agg(
        train_seconds=("train_seconds", "mean"), trainable_parameters=("trainable_parameters", "mean"),
        runs=("seed", "count")).reset_index()
    lines = ["| task | strategy | train s (mean) | trainable params | runs |", "|---|---|---:|---:|---:|"]
    for row in stats.itertuples():
        lines.append(f"| {row.column} | {row.strategy} | {row.train_seconds:.2f} | "
                     f"{int(row.trainable_parameters):,} | {row.runs} |")
    return "\n".join(lines) + "\n"


def report_markdown(runs: pd.DataFrame, *, title: str) -> str:
    """The run's ``table.md``: test accuracy, shifted-test accuracy when any, and cost."""
    parts = [f"# {title}\n",
             "Test accuracy (%), mean ± std over evaluation seeds; best mean per column in bold.\n",
             markdown_table(runs, "test_accuracy")]
    if "shifted_test_accuracy" in runs and runs["shifted_test_accuracy"].notna().any():
        parts += ["\n## Shifted test (out-of-distribution) accuracy (%)\n",
                  markdown_table(runs, "shifted_test_accuracy")]
    parts += ["\n## Cost\n", cost_table(runs)]
    return "\n".join(parts)


def flat_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs frame with ``params`` as a JSON string, ready for CSV and Parquet."""
    import json

    out = runs.copy()
    if "params" in out:
        out["params"] = out["params"].map(lambda p: json.dumps(p, sort_keys=True))
    return out
