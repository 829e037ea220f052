"""Model selection's cost: scoring every backbone of the zoo against fine-tuning them, in one run.

`tlbench run zoo` from a cold cache (pretraining is then outside both sides: it is the zoo, not
the selection). Both sides are the wall time of the store's trials of that one run: every score
unit (features on train and val included, although the linear probe shares them) against every
tuning trial and evaluation run of the fine-tuning cells. Goal: scoring < 1% of fine-tuning
(printed, met or not, with where the scoring time goes); asserted: the whole suite cold within
15 minutes on 2 cores.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import optuna

from tlbench.cli.main import main
from tlbench.store.opening import open_storage
from tlbench.store.records import StudyName
from tlbench.store.scores import load_scores, parse_score_study


def trial_seconds(storage: optuna.storages.BaseStorage) -> tuple[float, float, dict[str, float]]:
    """(seconds scoring, seconds fine-tuning, fine-tuning seconds per strategy) from trial times."""
    scoring = tuning = 0.0
    per_strategy: dict[str, float] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        seconds = sum((t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
                      if t.datetime_complete is not None and t.datetime_start is not None)
        if parse_score_study(summary.study_name):
            scoring += seconds
        elif (name := StudyName.parse(summary.study_name)) is not None:
            tuning += seconds
            per_strategy[name.strategy] = per_strategy.get(name.strategy, 0.0) + seconds
    return scoring, tuning, per_strategy


def readme_rows(out: Path) -> str:
    """The condensed model-selection table of docs/guides/model-selection.md of a store: per ground truth, each scorer's
    τ_w [95% interval] per task, its mean τ_w and mean top-1 regret."""
    from tlbench.reports.results import load_results
    from tlbench.reports.selection import selection_section

    results = load_results(open_storage(None, out), "zoo", importances=False)
    section = selection_section(results.scores, results.runs, ground_truth=results.ground_truth, draw=False)
    lines = []
    for truth, per_task in section.agreements.items():
        tasks = list(per_task)
        lines.append(f"| **{truth}** | " + " | ".join(tasks) + " | mean τ_w | mean regret |")
        means = {s: np.mean([per_task[t][s].measures["weighted_tau"].value for t in tasks]) for s in per_task[tasks[0]]}
        for scorer in sorted(means, key=lambda s: -means[s]):
            cells = []
            for t in tasks:
                e = per_task[t][scorer].measures["weighted_tau"]
                cells.append(f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]")
            regret = np.mean([per_task[t][scorer].measures["regret"].value for t in tasks])
            lines.append(f"| {scorer} | " + " | ".join(cells) + f" | {means[scorer]:.2f} | {regret:.1f} |")
    return "\n".join(lines)


def test_scoring_the_zoo_costs_under_one_percent_of_fine_tuning_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TLBENCH_CACHE", str(tmp_path / "cold-cache"))
    out = Path(os.environ.get("TLBENCH_BENCH_OUT", tmp_path / "out"))  # keep the store: the docs' table
    start = time.perf_counter()
    assert main(["run", "zoo", "--out", str(out), "--report", "tables"]) == 0
    wall = time.perf_counter() - start
    storage = open_storage(None, out)
    scoring, tuning, per_strategy = trial_seconds(storage)
    ratio = scoring / tuning
    scores = load_scores(storage)
    by_scorer = scores.groupby("scorer")["seconds"].sum().sort_values(ascending=False)
    features = scores.drop_duplicates(["task", "backbone"])["feature_seconds"].sum()
    print(f"\nzoo suite cold on {os.cpu_count()} cores: {wall:.0f} s; scoring {scoring:.2f} s, fine-tuning "
          f"{tuning:.1f} s ({', '.join(f'{k} {v:.0f} s' for k, v in sorted(per_strategy.items()))}): "
          f"scoring is {100 * ratio:.2f}% of fine-tuning (goal < 1%: {'met' if ratio < 0.01 else 'NOT met'})\n"
          f"scoring time: feature passes {features:.2f} s (shared with the linear probe), scorers "
          f"{by_scorer.sum():.2f} s ({', '.join(f'{k} {v:.2f}' for k, v in by_scorer.head(4).items())}, ...), "
          f"the rest (claims, records, reading the store) {scoring - features - by_scorer.sum():.2f} s\n"
          f"one scorer with the feature passes, % of fine-tuning: "
          f"{', '.join(f'{k} {100 * (v + features) / tuning:.2f}' for k, v in by_scorer.items())}\n"
          f"{readme_rows(out)}")
    assert wall < 900
