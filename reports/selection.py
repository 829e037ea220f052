"""The report's "Model selection" section: transferability scores ranked against fine-tuning.

For each ground-truth strategy, one table: a row per scorer; per task its weighted Kendall τ
with a 95% bootstrap interval (over fine-tuning seeds, and a randomised scorer's seeds) and its
top-1 regret; then the means over tasks, the largest change of τ_w when one backbone is left out, the
probability that the best scorer ranks better than this one (paired bootstrap), and the scoring
time per backbone. A second table gives τ_b, Pearson's r, relative top-1 accuracy and
best-in-top-3 averaged over tasks. A figure per ground truth plots each scorer's values against
fine-tuned accuracy, one panel per task × scorer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tlbench.reports.tables import Table, TableCell, fmt_number
from tlbench.selection.ranking import MEASURES, ScorerAgreement, compare, evaluate, leave_one_out, order_stability

RESAMPLES = 1000


@dataclass
class SelectionSection:
    tables: list[tuple[str, Table]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)
    #: ground truth → task → scorer → agreement (for tests and for anyone reading the report as data)
    agreements: dict[str, dict[str, dict[str, ScorerAgreement]]] = field(default_factory=dict)


def _interval(est: object, digits: int = 2) -> str:
    value, low, high = est.value, est.low, est.high  # type: ignore[attr-defined]
    if math.isnan(value):
        return "–"
    if math.isnan(low):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _accuracies(runs: pd.DataFrame, strategy: str, task: str) -> dict[str, np.ndarray]:
    cell = runs[(runs["strategy"] == strategy) & (runs["task"] == task)]
    return {b: g.sort_values("seed")["test_accuracy"].to_numpy(dtype=float) for b, g in cell.groupby("backbone")}


def _scores(scores: pd.DataFrame, task: str, scorer: str) -> dict[str, np.ndarray]:
    rows = scores[(scores["task"] == task) & (scores["scorer"] == scorer) & scores["value"].notna()]
    return {b: g.sort_values("seed")["value"].to_numpy(dtype=float) for b, g in rows.groupby("backbone")}


def selection_section(scores: pd.DataFrame, runs: pd.DataFrame, *, ground_truth: list[str] | None = None,
                      seed: int = 0, out: Path | None = None, draw: bool = True) -> SelectionSection:
    """Tables (and figures under ``out`` when ``draw``) ranking every scorer in ``scores``
    against the fine-tuned test accuracy of each ground-truth strategy in ``runs``."""
    section = SelectionSection()
    if scores.empty:
        return section
    if runs.empty:
        section.notes.append("Model selection: scores are stored but no fine-tuned run yet; nothing to rank against.")
        return section
    truths = [s for s in (ground_truth or sorted(runs["strategy"].unique())) if s in set(runs["strategy"])]
    scorers = sorted(scores["scorer"].unique())
    tasks = [t for t in dict.fromkeys(scores["task"]) if t in set(runs["task"])]
    orientation = scores.groupby("scorer")["higher_is_better"].first().to_dict()
    skipped = scores[scores["value"].isna()]
    skip_notes = [f"{scorer} skipped for {', '.join(sorted(set(group['backbone'])))} ({reason}): ranked on the "
                  f"other backbones only."
                  for (scorer, reason), group in skipped.groupby(["scorer", "skipped"])]
    seconds = scores.groupby("scorer")["seconds"].mean().to_dict()
    for truth in truths:
        per_task: dict[str, dict[str, ScorerAgreement]] = {}
        lobo: dict[str, dict[str, dict[str, float]]] = {}
        for task in tasks:
            accs = _accuracies(runs, truth, task)
            per_task[task], lobo[task] = {}, {}
            for scorer in scorers:
                values = _scores(scores, task, scorer)
                if len(set(values) & set(accs)) < 2:
                    continue
                hib = bool(orientation.get(scorer, True))
                per_task[task][scorer] = evaluate(scorer, values, accs, higher_is_better=hib, resamples=RESAMPLES,
                                                  seed=seed)
                lobo[task][scorer] = leave_one_out(scorer, values, accs, higher_is_better=hib).left_out
        section.agreements[truth] = per_task
        ranked = [t for t in tasks if len(per_task[t]) > 0]
        if not ranked:
            section.notes.append(f"Model selection against {truth}: no task has two backbones with both scores and "
                                 f"fine-tuned runs.")
            continue
        main = _main_table(truth, ranked, scorers, per_task, lobo, seconds)
        main.notes += skip_notes
        section.tables.append((f"tab:selection:{truth}", main))
        section.tables.append((f"tab:selection-more:{truth}", _more_table(truth, ranked, scorers, per_task)))
        if draw and out is not None:
            section.files += _figure(scores, runs, truth, ranked, scorers, out, section)
    return section


def _main_table(truth: str, tasks: list[str], scorers: list[str], per_task: dict[str, dict[str, ScorerAgreement]],
                lobo: dict[str, dict[str, dict[str, float]]], seconds: dict[str, float]) -> Table:
    header = ["scorer"]
    for task in tasks:
        header += [f"{task} τ_w", f"{task} regret"]
    header += ["mean τ_w", "mean regret", "max Δτ_w, one backbone out", "P(best ranks better)", "s / backbone"]
    means = {s: np.mean([per_task[t][s].measures["weighted_tau"].value for t in tasks if s in per_task[t]])
             for s in scorers if any(s in per_task[t] for t in tasks)}
    finite = {s: v for s, v in means.items() if math.isfinite(v)}
    best = max(finite, key=lambda s: finite[s]) if finite else None
    rows = []
    for scorer in sorted(means, key=lambda s: -means[s] if math.isfinite(means[s]) else math.inf):
        row = [TableCell(scorer, bold=scorer == best)]
        for task in tasks:
            a = per_task[task].get(scorer)
            row.append(TableCell(_interval(a.measures["weighted_tau"]) if a else "–"))
            row.append(TableCell(fmt_number(a.measures["regret"].value, 1) if a else "–"))
        regrets = [per_task[t][scorer].measures["regret"].value for t in tasks if scorer in per_task[t]]
        row.append(TableCell(f"{means[scorer]:.2f}" if math.isfinite(means[scorer]) else "–", bold=scorer == best))
        row.append(TableCell(fmt_number(float(np.mean(regrets)), 1) if regrets else "–"))
        shifts = []  # per task: the largest change of τ_w when one backbone is left out
        for t in tasks:
            full = per_task[t][scorer].measures["weighted_tau"].value if scorer in per_task[t] else math.nan
            moved = [abs(v - full) for v in lobo[t].get(scorer, {}).values() if math.isfinite(v)]
            if moved and math.isfinite(full):
                shifts.append(max(moved))
        row.append(TableCell(f"{np.mean(shifts):.2f}" if shifts else "–"))
        if best is None or scorer == best:
            row.append(TableCell("–"))
        else:
            probs = [compare(per_task[t][best], per_task[t][scorer]).probability for t in tasks
                     if scorer in per_task[t] and best in per_task[t]
                     and per_task[t][scorer].backbones == per_task[t][best].backbones]
            probs = [p for p in probs if math.isfinite(p)]
            row.append(TableCell(f"{np.mean(probs):.2f}" if probs else "–"))
        sec = seconds.get(scorer)
        row.append(TableCell(f"{sec:.3f}" if sec is not None and math.isfinite(sec) else "–"))
        rows.append(row)
    stability = []
    for task in tasks:
        value = order_stability({s: a.measures["weighted_tau"].value for s, a in per_task[task].items()},
                                lobo[task])
        if math.isfinite(value):
            stability.append(f"{task} {value:.2f}")
    n_backbones = {t: len(next(iter(per_task[t].values())).backbones) for t in tasks}
    notes = [
        "τ_w: weighted Kendall τ of the score against the mean fine-tuned test accuracy over backbones "
        "(scipy.stats.weightedtau defaults), with a 95% percentile bootstrap interval over the fine-tuning seeds "
        f"(and a randomised scorer's seeds; {RESAMPLES} resamples). Regret: accuracy points lost by fine-tuning "
        "the top-scored backbone instead of the best one (ties at the top averaged).",
        "Max Δτ_w, one backbone out: the largest change of τ_w when any one backbone is left out (mean over "
        "tasks). P(best ranks better): how often, in paired bootstrap resamples, the scorer with the highest "
        "mean τ_w ranks the backbones better than this one (mean over the tasks where both ranked the same "
        "backbones; – where they never did).",
        "Backbones ranked per task: " + ", ".join(f"{t} {n}" for t, n in n_backbones.items()) + ".",
    ]
    if stability:
        notes.append("Order stability (mean Kendall τ between the scorers' order on all backbones and with each "
                     "backbone left out; 1 = never reordered): " + ", ".join(stability) + ".")
    few = [t for t, n in n_backbones.items() if n < 5]
    if few:
        notes.append(f"Few backbones ({', '.join(few)}): with fewer than 5 backbones a rank correlation takes few "
                     f"values and its interval is coarse.")
    return Table(header=header, rows=rows, caption=f"Model selection: transferability scores against {truth}'s "
                                                   f"test accuracy", notes=notes, wide=True)


def _more_table(truth: str, tasks: list[str], scorers: list[str],
                per_task: dict[str, dict[str, ScorerAgreement]]) -> Table:
    shown = [m for m in MEASURES if m not in ("weighted_tau", "regret")]
    header = ["scorer", *[MEASURES[m][0] for m in shown]]
    rows = []
    for scorer in scorers:
        present = [per_task[t][scorer] for t in tasks if scorer in per_task[t]]
        if not present:
            continue
        row = [TableCell(scorer)]
        for m in shown:
            values = [a.measures[m].value for a in present if math.isfinite(a.measures[m].value)]
            row.append(TableCell(f"{np.mean(values):.2f}" if values else "–"))
        rows.append(row)
    return Table(header=header, rows=rows,
                 caption=f"Model selection against {truth}: more agreement measures (means over tasks)",
                 notes=["τ_b: Kendall's τ_b; Pearson r: linear correlation of score and accuracy; relative top-1: "
                        "accuracy of the top-scored backbone over the best one's; best in top 3: whether the best "
                        "backbone is among the three highest scores (ties in expectation)."])


def _figure(scores: pd.DataFrame, runs: pd.DataFrame, truth: str, tasks: list[str], scorers: list[str], out: Path,
            section: SelectionSection) -> list[Path]:
    from tlbench.reports.figures import RC, plt, save_figure  # (imports matplotlib: only when drawn)

    with plt.rc_context(RC):  # the report's fonts: TrueType in the PDF, as every other figure
        cols = len(scorers)
        fig, axes = plt.subplots(len(tasks), cols, figsize=(1.9 * cols, 1.8 * len(tasks)), squeeze=False)
        for i, task in enumerate(tasks):
            accs = _accuracies(runs, truth, task)
            for j, scorer in enumerate(scorers):
                ax = axes[i][j]
                values = _scores(scores, task, scorer)
                names = sorted(set(values) & set(accs))
                if names:
                    x = [float(np.mean(values[b])) for b in names]
                    y = [100 * float(np.mean(accs[b])) for b in names]
                    err = [100 * float(np.std(accs[b], ddof=1)) if len(accs[b]) > 1 else 0.0 for b in names]
                    ax.errorbar(x, y, yerr=err, fmt="o", ms=3, lw=0.8, capsize=1.5)
                    agreement = section.agreements[truth][task].get(scorer)
                    if agreement is not None and math.isfinite(agreement.measures["weighted_tau"].value):
                        ax.set_title(f"τ_w {agreement.measures['weighted_tau'].value:.2f}", fontsize=7)
                else:
                    ax.text(0.5, 0.5, "no score", ha="center", va="center", fontsize=7, transform=ax.transAxes)
                ax.tick_params(labelsize=6)
                if i == len(tasks) - 1:
                    ax.set_xlabel(scorer, fontsize=7)
                if j == 0:
                    ax.set_ylabel(f"{task}\n{truth} acc. (%)", fontsize=7)
        fig.tight_layout()
        name = f"selection_{truth}"
        files = save_figure(fig, out, name)  # cropped PNG, and a PDF with no creation date: the same bytes each report
    section.captions[name] = (f"Each scorer's value (x) against {truth}'s mean fine-tuned test accuracy (y, ± one "
                              f"standard deviation over seeds) per backbone; one row per task, one column per scorer; "
                              f"each panel's title is its weighted Kendall τ.")
    return files
