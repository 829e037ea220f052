"""A benchmark's summary as the papers print it — per-group means, the mean over tasks and the mean of
the group means — with published results beside tlbench's own (their citation, the difference, and
whether the published value lies inside tlbench's interval).

Tasks say their group (``group:``) and published results (``reference:``) in the suite; both travel
in the task's facts (``task_info``) of every run record, so this reads nothing but the runs.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from tlbench.reports import stats
from tlbench.reports.tables import Table, TableCell

#: VTAB's group names in the order its papers print them; other groups follow in order of appearance.
KNOWN_ORDER = ("natural", "specialized", "structured")


def _facts(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return value if isinstance(value, dict) else {}


def task_facts(runs: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """task → its facts (the first run's ``task_info``)."""
    if "task_info" not in runs:
        return {}
    return {task: _facts(info) for task, info in runs.groupby("task", sort=False)["task_info"].first().items()}


def _groups(facts: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """group → its tasks, VTAB's groups first in VTAB's order; {} when no task has a group."""
    order: dict[str, list[str]] = {}
    for task, info in facts.items():
        if info.get("group") is not None:
            order.setdefault(str(info["group"]), []).append(task)
    if not order:
        return {}
    known = [g for g in KNOWN_ORDER if g in {k.lower() for k in order}]
    ranked = sorted(order, key=lambda g: (KNOWN_ORDER.index(g.lower()) if g.lower() in known else len(KNOWN_ORDER),
                                          list(order).index(g)))
    return {g: order[g] for g in ranked}


def _aggregates(per_task: dict[str, float], groups: dict[str, list[str]], tasks: list[str]) -> list[float]:
    """Each group's mean, the mean over ``tasks``, the mean of the group means (nan where a task is missing)."""
    def mean(names: list[str]) -> float:
        return float(np.mean([per_task[t] for t in names])) if all(t in per_task for t in names) else math.nan

    group_means = [mean(names) for names in groups.values()]
    out = [*group_means, mean(tasks)]
    if groups:
        out.append(float(np.mean(group_means)) if not any(math.isnan(g) for g in group_means) else math.nan)
    return out


def _interval(accuracy: dict[str, np.ndarray], groups: dict[str, list[str]], tasks: list[str],
              seed: int) -> list[tuple[float, float]]:
    """A 95% stratified-bootstrap interval of each aggregate (seeds resampled within each task)."""
    if not all(t in accuracy for t in tasks):
        return [(math.nan, math.nan)] * (len(groups) + 1 + bool(groups))
    index = {t: i for i, t in enumerate(tasks)}

    def statistic(draws: list[np.ndarray]) -> np.ndarray:
        means = np.stack([d.mean(axis=1) for d in draws], axis=1)  # (resamples, tasks)
        group_means = [means[:, [index[t] for t in names]].mean(axis=1) for names in groups.values()]
        out = [*group_means, means.mean(axis=1)]
        if groups:
            out.append(np.mean(group_means, axis=0))
        return np.stack(out, axis=1)

    samples = [accuracy[t] for t in tasks]
    width = len(groups) + 1 + bool(groups)
    # stats.stratified_bootstrap draws the same resamples for the same seed: one call per aggregate
    return [stats.stratified_bootstrap(samples, lambda d, j=j: statistic(d)[:, j], seed=seed)[1:]
            for j in range(width)]


def literature_table(runs: pd.DataFrame, metric: str = "test_accuracy", *, seed: int = 0) -> Table | None:
    """Per strategy: each group's mean test accuracy, the mean over all tasks and the mean of the group
    means, with 95% intervals; below a strategy with published results, their row with its citation,
    the difference and whether the published value lies inside tlbench's interval. None when no task
    has a group or a reference, or a suite mixes several backbones per task."""
    if runs.empty or metric not in runs:
        return None
    facts = task_facts(runs)
    groups = _groups(facts)
    has_refs = any("reference" in f for f in facts.values())
    if not groups and not has_refs:
        return None
    if runs.groupby("task")["backbone"].nunique().max() > 1 or ("suite" in runs and runs["suite"].nunique() > 1):
        return None  # one row per strategy needs one backbone per task
    tasks = list(facts)
    header = ["strategy", *groups, f"mean ({len(tasks)} tasks)"] + (["mean of group means"] if groups else [])
    rows: list[list[TableCell]] = []
    notes: list[str] = []
    cited: dict[str, str] = {}
    strategies = sorted(runs["strategy"].unique(), key=lambda s: -runs[runs["strategy"] == s][metric].mean())
    for strategy in strategies:
        own = runs[(runs["strategy"] == strategy)].dropna(subset=[metric])
        accuracy = {t: 100 * g[metric].to_numpy(float) for t, g in own.groupby("task")}
        means = _aggregates({t: float(a.mean()) for t, a in accuracy.items()}, groups, tasks)
        intervals = _interval(accuracy, groups, tasks, seed)
        rows.append([TableCell(strategy)] + [TableCell(_with_interval(m, iv)) for m, iv in zip(means, intervals)])
        published = {t: f["reference"]["values"][strategy] for t, f in facts.items()
                     if strategy in f.get("reference", {}).get("values", {})}
        if not published:
            continue
        some = next(f["reference"] for f in facts.values() if strategy in f.get("reference", {}).get("values", {}))
        citation = some["sources"][strategy]
        mark = cited.setdefault(citation, "*" * (len(cited) + 1))
        ref_means = _aggregates(published, groups, tasks)
        cells = [TableCell(f"↳ published: {some['methods'][strategy]} {mark}")]
        for ours, iv, ref in zip(means, intervals, ref_means):
            if math.isnan(ref):
                cells.append(TableCell("–"))
                continue
            inside = "" if math.isnan(iv[0]) else (" in CI" if iv[0] <= ref <= iv[1] else " outside CI")
            diff = "" if math.isnan(ours) else f" (ours {ours - ref:+.1f}{inside})"
            cells.append(TableCell(f"{ref:.1f}{diff}"))
        rows.append(cells)
        missing = [t for t in tasks if t not in published]
        if missing:
            notes.append(f"{strategy}: no published result for {', '.join(missing)}; aggregates over them are –.")
    notes.insert(0, "Test accuracy (%): per strategy, the mean over seeds of each task, then averaged over the "
                    "tasks of each group, over all tasks, and over the group means (the VTAB-1k papers print either "
                    "of the last two as their mean; compare like with like); 95% stratified-bootstrap intervals "
                    "(seeds resampled within each task). Published rows: the paper's per-task numbers averaged the "
                    "same way; (ours ±d in CI / outside CI): tlbench's mean minus the published one, and whether the "
                    "published value lies inside tlbench's interval. A difference also reflects differences in "
                    "protocol (tuning budget, search space, augmentation, image pipeline) that the suite states.")
    notes += [f"{mark} {citation}" for citation, mark in cited.items()]
    title = next((f["reference"]["title"] for f in facts.values() if "reference" in f), "")
    caption = "Benchmark summary" + (f": {title}" if title else "") + (" (groups and published results)"
                                                                       if has_refs else " by group")
    return Table(header, rows, caption, notes, wide=True)


def _with_interval(mean: float, interval: tuple[float, float]) -> str:
    if math.isnan(mean):
        return "–"
    if math.isnan(interval[0]):
        return f"{mean:.1f}"
    return f"{mean:.1f} [{interval[0]:.1f}, {interval[1]:.1f}]"
