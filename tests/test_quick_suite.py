"""The main offline job: the quick suite must show transfer paying off on the few-shot task."""

from __future__ import annotations

import pandas as pd
import pytest

from tlbench.cli.main import main


@pytest.mark.slow
def test_quick_suite_shows_transfer_paying_off(tmp_path) -> None:
    # The baselines only (under a minute); all eleven strategies take ~5 min and are timed in
    # benchmarks/test_bench_quick_suite.py.
    strategies = "linear_probe,full_finetune,scratch"
    # 6 of the suite's 10 seeds, 10 of its 20 trials and no figures: the check is on the numbers
    # (most of the time is pretraining the two backbones).
    assert main(["run", "quick", "--out", str(tmp_path), "--strategies", strategies, "--seeds", "6",
                 "--trials", "10", "--report", "tables"]) == 0
    runs = pd.read_parquet(tmp_path / "runs.parquet")
    assert len(runs) == 2 * 3 * 6  # tasks × strategies × evaluation seeds
    stats = runs.groupby(["task", "strategy"])["test_accuracy"].agg(["mean", "std"])
    for task in ("digits-2shot", "mnist1d-shifted"):
        scratch = stats.loc[(task, "scratch")]
        best = max(("linear_probe", "full_finetune"), key=lambda s: stats.loc[(task, s), "mean"])
        pretrained = stats.loc[(task, best)]
        # "Beyond the seeds' spread": the gap exceeds both standard deviations.
        gap = pretrained["mean"] - scratch["mean"]
        assert gap > max(pretrained["std"], scratch["std"]), (task, stats.loc[task])
    table = (tmp_path / "table.md").read_text()
    assert "Shifted-test (out-of-distribution) accuracy" in table and "Friedman test" in table
