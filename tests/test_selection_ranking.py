"""Scorer rankings against fine-tuned accuracy: a published row, trivial cases, intervals, ties."""

from __future__ import annotations

import numpy as np
import pytest

from tlbench.selection.ranking import agreement, compare, evaluate, leave_one_out, order_stability

# Transfer-Learning-Library, examples/model_selection/README.md, "Model Ranking Benchmark on CIFAR10"
# (GoogleNet, Inception V3, ResNet50, ResNet101, ResNet152, DenseNet121, DenseNet169, DenseNet201,
# MobileNet V2, MNasNet): fine-tuned accuracy, each score, and the weighted τ the table reports.
CIFAR10_ACCURACY = [96.2, 97.5, 96.8, 97.7, 97.9, 97.2, 97.4, 97.4, 95.7, 96.8]
CIFAR10_ROWS = {
    "hscore": ([5.911, 6.363, 6.567, 6.901, 6.945, 6.210, 6.547, 6.706, 5.928, 6.018], 0.800),
    "leep": ([-1.385, -1.259, -1.010, -0.829, -0.838, -1.035, -0.934, -0.888, -1.100, -1.066], 0.638),
    "logme": ([0.293, 0.349, 0.388, 0.463, 0.469, 0.302, 0.343, 0.369, 0.291, 0.304], 0.785),
    "nce": ([-1.139, -1.060, -1.007, -0.838, -0.851, -1.006, -0.946, -0.866, -1.089, -1.086], 0.714),
}


@pytest.mark.parametrize("name", sorted(CIFAR10_ROWS))
def test_weighted_tau_reproduces_a_published_row(name: str) -> None:
    scores, reported = CIFAR10_ROWS[name]
    assert agreement(np.array(scores), np.array(CIFAR10_ACCURACY))["weighted_tau"] == pytest.approx(reported, abs=5e-4)


def test_identical_rankings_and_reversed() -> None:
    acc = np.array([0.5, 0.7, 0.9, 0.6])
    same = agreement(acc * 10, acc)
    assert same["weighted_tau"] == pytest.approx(1.0) and same["kendall_tau"] == pytest.approx(1.0)
    assert same["pearson"] == pytest.approx(1.0)
    assert same["regret"] == 0 and same["relative_top1"] == 1 and same["top3"] == 1
    reverse = agreement(-acc, acc)
    assert reverse["weighted_tau"] == pytest.approx(-1.0) and reverse["kendall_tau"] == pytest.approx(-1.0)
    assert reverse["regret"] == pytest.approx(40.0) and reverse["relative_top1"] == pytest.approx(0.5 / 0.9)
    assert reverse["top3"] == 0.0


def test_ties_at_the_top_are_broken_at_random_in_expectation() -> None:
    acc = np.array([0.9, 0.5, 0.7, 0.1])
    tied = agreement(np.array([1.0, 1.0, 0.0, -1.0]), acc)
    assert tied["regret"] == pytest.approx(100 * (0.9 - 0.7))  # mean of 0.9 and 0.5 chosen
    # four-way tie: the best is in a random top 3 with probability 3/4
    assert agreement(np.zeros(4), acc)["top3"] == pytest.approx(0.75)


def test_zero_seed_variance_gives_a_zero_width_interval() -> None:
    scores = {"a": np.array([3.0]), "b": np.array([2.0]), "c": np.array([1.0]), "d": np.array([0.0])}
    accs = {"a": np.full(5, 0.9), "b": np.full(5, 0.8), "c": np.full(5, 0.85), "d": np.full(5, 0.2)}
    result = evaluate("s", scores, accs, resamples=200)
    tau = result.measures["weighted_tau"]
    assert tau.low == tau.value == tau.high
    assert result.measures["regret"].value == 0


def test_seed_noise_widens_the_interval_and_orientation() -> None:
    rng = np.random.default_rng(0)
    true = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    accs = {b: v + rng.normal(0, 0.08, size=5) for b, v in true.items()}
    scores = {b: np.array([v]) for b, v in true.items()}
    result = evaluate("s", scores, accs, resamples=300)
    tau = result.measures["weighted_tau"]
    assert tau.low < tau.high and tau.low <= tau.value <= tau.high + 1e-12
    lower_better = evaluate("s", {b: -s for b, s in scores.items()}, accs, higher_is_better=False, resamples=300)
    assert lower_better.measures["weighted_tau"] == result.measures["weighted_tau"]


def test_randomised_scorer_seeds_are_resampled() -> None:
    accs = {b: np.full(3, v) for b, v in {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}.items()}
    scores = {"a": np.array([4.0, 1.0]), "b": np.array([3.0, 3.0]), "c": np.array([2.0, 2.0]),
              "d": np.array([1.0, 4.0])}
    tau = evaluate("s", scores, accs, resamples=300).measures["weighted_tau"]
    assert tau.low < tau.high


def test_paired_comparison() -> None:
    rng = np.random.default_rng(1)
    true = {b: v for b, v in zip("abcdef", [0.9, 0.85, 0.8, 0.7, 0.6, 0.5])}
    accs = {b: v + rng.normal(0, 0.01, size=4) for b, v in true.items()}
    good = evaluate("good", {b: np.array([v]) for b, v in true.items()}, accs, resamples=300)
    bad = evaluate("bad", {b: np.array([-v]) for b, v in true.items()}, accs, resamples=300)
    result = compare(good, bad)
    assert result.probability == 1.0 and result.difference.low > 1.0
    assert compare(good, good).probability == 0.5


def test_leave_one_out() -> None:
    accs = {b: np.array([v]) for b, v in {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6}.items()}
    scores = {"a": np.array([4.0]), "b": np.array([3.0]), "c": np.array([1.0]), "d": np.array([2.0])}
    result = leave_one_out("s", scores, accs)
    assert result.left_out["c"] == pytest.approx(1.0) and result.left_out["d"] == pytest.approx(1.0)
    assert result.low < 1.0 and result.high == pytest.approx(1.0)
    perfect = leave_one_out("p", {b: a for b, a in accs.items()}, accs)
    assert order_stability({"s": 0.8, "p": 1.0}, {"s": result.left_out, "p": perfect.left_out}) == pytest.approx(1.0)


def test_vectorised_measures_are_scipys_with_ties() -> None:
    from scipy import stats

    from tlbench.selection.ranking import agreements

    rng = np.random.default_rng(5)
    s = rng.integers(0, 4, size=(300, 7)).astype(float)  # many ties
    a = rng.integers(0, 5, size=(300, 7)).astype(float)
    got = agreements(s, a)
    for r in range(300):
        tau_b = stats.kendalltau(s[r], a[r]).statistic
        assert got["kendall_tau"][r] == pytest.approx(tau_b, nan_ok=True, abs=1e-12)
        if np.ptp(s[r]) > 0 and np.ptp(a[r]) > 0:
            assert got["pearson"][r] == pytest.approx(stats.pearsonr(s[r], a[r]).statistic, abs=1e-12)
        assert got["weighted_tau"][r] == pytest.approx(stats.weightedtau(s[r], a[r]).statistic, nan_ok=True)
