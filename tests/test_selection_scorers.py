"""Transferability scorers against their definitions, computed independently, and their limits."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from tlbench.selection.inputs import ScoreInputError, make_inputs
from tlbench.selection.scorers import (
    SCORERS,
    Scorer,
    ScorerError,
    check_scorer_class,
    gbc,
    h_score,
    leep,
    logme,
    nce,
    one_hot,
    run_scorer,
)


def direct_evidence(f: np.ndarray, y: np.ndarray, log_alpha: float, log_beta: float) -> float:
    """The log evidence per example, straight from its D-dimensional definition."""
    n, d = f.shape
    alpha, beta = math.exp(log_alpha), math.exp(log_beta)
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    _, logdet = np.linalg.slogdet(a)
    value = (n / 2 * log_beta + d / 2 * log_alpha - n / 2 * math.log(2 * math.pi)
             - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * m @ m - logdet / 2)
    return value / n


def direct_max(f: np.ndarray, y: np.ndarray) -> float:
    """Nelder-Mead on the direct evidence, with log β ≤ 26: beyond it A's condition number
    (β‖F‖² / α, about e^33 at D > N, where the evidence is a plateau in β) leaves the direct
    evaluation's slogdet and solve with errors of 1e-4, which the simplex climbs as if they
    were evidence (it reported 0.51882 on a plateau of 0.518545). A start that converges takes
    100–200 iterations; on the plateau the simplex can stall on those 1e-9 ripples without ever
    meeting ``fatol`` (20,000 iterations, 90 s, for the same value), hence the cap of 500."""
    best = -np.inf
    for start in [(0.0, 0.0), (3.0, 3.0), (-3.0, 5.0), (5.0, -1.0)]:
        result = optimize.minimize(lambda p: -direct_evidence(f, y, p[0], p[1]), start, method="Nelder-Mead",
                                   bounds=[(-30.0, 30.0), (-30.0, 26.0)],
                                   options={"xatol": 1e-10, "fatol": 1e-13, "maxiter": 500})
        best = max(best, -result.fun)
    return best


def labelled(n: int, d: int, c: int, seed: int = 0, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    centres = rng.normal(size=(c, d)) * signal
    return centres[y] + rng.normal(size=(n, d)), y


@pytest.mark.slow
@pytest.mark.parametrize("n,d", [(120, 10), (60, 200)])
def test_logme_is_the_maximum_evidence(n: int, d: int) -> None:
    f, y = labelled(n, d, 3, seed=n + d)
    targets = one_hot(y, 3)
    ours = logme(f, targets)
    for k in range(3):
        assert ours[k] == pytest.approx(direct_max(f, targets[:, k]), abs=1e-6)
        # and nothing nearby is higher
        assert ours[k] >= direct_evidence(f, targets[:, k], 0.0, 0.0) - 1e-12


def test_logme_is_the_maximum_evidence_on_anisotropic_features() -> None:
    """Features whose scales span seven orders of magnitude, as a trained network's principal
    directions do: MacKay's fixed point (our earlier form, from the same start) stopped 0.22
    nats per example below the maximum here; the profile's grid and Newton steps reach it."""
    rng = np.random.default_rng(1)
    n, d, c = int(rng.integers(30, 200)), int(rng.integers(2, 40)), int(rng.integers(2, 10))
    f, y = labelled(n, d, c, seed=1, signal=3.0)
    f = f * rng.exponential(size=d) ** 3
    targets = one_hot(y, c)
    ours = logme(f, targets)
    for k in range(c):
        assert ours[k] == pytest.approx(direct_max(f, targets[:, k]), abs=1e-6)


@pytest.mark.slow
def test_logme_with_random_labels_in_d_greater_than_n() -> None:
    """The issue's setting (N = 60, D = 200, labels unrelated to the features): the widely used
    fixed-point code drops the (D − N) log α term of log|A| and reports about +7; the maximum
    evidence is negative."""
    rng = np.random.default_rng(7)
    f = rng.normal(size=(60, 200))
    y = rng.integers(0, 2, size=60)
    value = float(np.mean(logme(f, one_hot(y, 2))))
    assert value < 0
    assert value == pytest.approx(np.mean([direct_max(f, one_hot(y, 2)[:, k]) for k in range(2)]), abs=1e-6)


@pytest.mark.parametrize("n,d", [(90, 12), (40, 100)])
def test_logme_invariances(n: int, d: int) -> None:
    f, y = labelled(n, d, 4, seed=3)
    scorer = SCORERS.get("logme")()
    rng = np.random.default_rng(0)
    base = scorer.score(make_inputs(f, y), rng)
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(d, d)))
    perm = np.random.default_rng(2).permutation(4)
    for variant in (f * 1e-3, f * 250.0, f @ rotation):
        assert scorer.score(make_inputs(variant, y), rng) == pytest.approx(base, abs=1e-6)
    assert scorer.score(make_inputs(f, perm[y]), rng) == pytest.approx(base, abs=1e-6)


def entropy(y: np.ndarray) -> float:
    p = np.bincount(y) / len(y)
    p = p[p > 0]
    return float(-np.sum(p * np.log(p)))


def test_leep_and_nce_identities() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, size=200)
    y[:4] = np.arange(4)
    constant = np.full((200, 6), 1 / 6)
    assert leep(constant, y, 4) == pytest.approx(-entropy(y), abs=1e-12)
    assert nce(np.argmax(constant, axis=1), y, 4) == pytest.approx(-entropy(y), abs=1e-12)
    assert nce(y, y, 4) == pytest.approx(0.0, abs=1e-12)
    z = rng.integers(0, 6, size=200)
    assert leep(one_hot(z, 6), y, 4) == pytest.approx(nce(z, y, 4), abs=1e-12)
    # a source class no example gives any probability: finite, and the same as without the column
    probs = rng.dirichlet(np.ones(5), size=200)
    with_zero = np.concatenate([probs[:, :2], np.zeros((200, 1)), probs[:, 2:]], axis=1)
    assert math.isfinite(leep(with_zero, y, 4))
    assert leep(with_zero, y, 4) == pytest.approx(leep(probs, y, 4), abs=1e-12)


def test_leep_float32_underflow_stays_finite() -> None:
    logits = np.array([[0.0, -200.0, 0.0], [0.0, -200.0, 5.0]] * 10, dtype=np.float32)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)  # column 1 underflows to exactly 0 in float32
    assert probs[:, 1].max() == 0
    y = np.array([0, 1] * 10)
    inputs = make_inputs(np.ones((20, 2)) + np.arange(20)[:, None], y, source_probs=probs)
    assert math.isfinite(run_scorer(SCORERS.get("leep")(), inputs).value)


def test_h_score_affine_invariance_and_bounds() -> None:
    f, y = labelled(150, 8, 3, seed=5)
    base = h_score(f, y, 3)
    a = np.random.default_rng(9).normal(size=(8, 8))
    assert h_score(f @ a + 17.0, y, 3) == pytest.approx(base, abs=1e-9)
    assert 0 <= base <= min(8, 3 - 1)
    # an element-wise product (the widely copied mistake) is not invariant: ours differs from it
    noise = np.random.default_rng(4).normal(size=(150, 8))
    assert 0 <= h_score(noise, y, 3) < 0.2 * base
    # D > N saturates at C − 1: the reason a tie policy is needed
    wide, y2 = labelled(30, 100, 3, seed=6, signal=0.0)
    assert h_score(wide, y2, 3) == pytest.approx(2.0, abs=1e-9)


def test_h_score_matches_its_matrix_definition() -> None:
    f, y = labelled(80, 5, 4, seed=8)
    centred = f - f.mean(axis=0)
    cov = centred.T @ centred / len(f)
    means = np.stack([centred[y == c].mean(axis=0) for c in range(4)])
    g = means[y]
    between = g.T @ g / len(f)
    assert h_score(f, y, 4) == pytest.approx(float(np.trace(np.linalg.pinv(cov) @ between)), rel=1e-9)


def test_gbc_limits() -> None:
    f, y = labelled(200, 6, 4, seed=1, signal=1000.0)
    assert gbc(f, y, 4) == pytest.approx(0.0, abs=1e-12)
    same = np.random.default_rng(2).normal(size=(50, 6))
    tiled = np.concatenate([same] * 4)
    labels = np.repeat(np.arange(4), 50)
    assert gbc(tiled, labels, 4) == pytest.approx(-4 * 3, abs=1e-9)


def test_gbc_matches_bhattacharyya_between_two_spherical_gaussians() -> None:
    f, y = labelled(100, 3, 2, seed=4, signal=0.7)
    m = [f[y == c].mean(axis=0) for c in (0, 1)]
    v = [max(float(np.mean(np.maximum(f[y == c].var(axis=0), 1e-4))), 0) for c in (0, 1)]
    s = (v[0] + v[1]) / 2
    db = np.sum((m[0] - m[1]) ** 2) / (8 * s) + 0.5 * np.log(s / np.sqrt(v[0] * v[1]))
    assert gbc(f, y, 2) == pytest.approx(-2 * math.exp(-db), rel=1e-10)


def test_sfda_is_lda_with_a_shrunk_covariance() -> None:
    """With λ → 0 SFDA's classifier is plain LDA (scikit-learn's, priors from counts)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    from tlbench.selection.scorers import sfda, shrunk_lda_proba

    f, y = labelled(200, 4, 3, seed=21, signal=1.5)
    ours, _ = shrunk_lda_proba(f, y, 3, shrink=1e-12)
    theirs = LinearDiscriminantAnalysis(solver="lsqr").fit(f, y).predict_proba(f)
    assert np.allclose(ours, theirs, atol=1e-8)
    assert 0 < sfda(f, y, 3) < 1
    separated, y2 = labelled(200, 4, 3, seed=21, signal=50.0)
    assert sfda(separated, y2, 3) > sfda(f, y, 3)


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_scorer_on_separable_beats_noise(name: str) -> None:
    """Each built-in ranks features that separate the classes above features that do not."""
    good, y = labelled(120, 6, 3, seed=11, signal=3.0)
    bad = np.random.default_rng(12).normal(size=(120, 6))
    _, vy = labelled(60, 6, 3, seed=13, signal=3.0)
    rng = np.random.default_rng(0)

    def probs(x: np.ndarray) -> np.ndarray:
        logits = x[:, :5] * 2
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    scorer = SCORERS.get(name)()
    assert check_scorer_class(type(scorer)) == []
    if name in ("parameters", "source_accuracy"):
        small = make_inputs(good, y, parameters=1000, source_accuracy=0.5)
        big = make_inputs(good, y, parameters=5000, source_accuracy=0.9)
        assert run_scorer(scorer, big).value > run_scorer(scorer, small).value
        return
    centres = np.random.default_rng(11).normal(size=(3, 6)) * 3.0
    held_out = centres[vy] + np.random.default_rng(14).normal(size=(60, 6))
    a = make_inputs(good, y, source_probs=probs(good), val_features=held_out, val_labels=vy)
    b = make_inputs(bad, y, source_probs=probs(bad), val_features=np.random.default_rng(15).normal(size=(60, 6)),
                    val_labels=vy)
    sa, sb = run_scorer(scorer, a, seed=0).value, run_scorer(scorer, b, seed=0).value
    assert (sa > sb) == scorer.higher_is_better, (sa, sb)
    del rng


def test_missing_inputs_skip_with_a_reason() -> None:
    f, y = labelled(30, 4, 2)
    score = run_scorer(SCORERS.get("leep")(), make_inputs(f, y))
    assert score.value is None and score.skipped == "needs source probs"


class Broken(Scorer):
    name = "broken"
    definition = "returns whatever it is told to"
    result: object = float("nan")

    def score(self, inputs, rng):  # type: ignore[no-untyped-def]
        return self.result


@pytest.mark.parametrize("result,message", [(float("nan"), "returned nan"), (np.ones(3), "one number"),
                                            ("high", "one number"), (float("inf"), "returned inf")])
def test_scorer_that_breaks_its_contract_is_one_line(result: object, message: str) -> None:
    f, y = labelled(30, 4, 2)
    scorer = Broken()
    scorer.result = result
    with pytest.raises(ScorerError, match=message) as err:
        run_scorer(scorer, make_inputs(f, y))
    assert "\n" not in str(err.value) and "'broken'" in str(err.value)


@pytest.mark.parametrize("labels,message", [
    ([0] * 10, "at least 2 classes"),
    ([0, 1, 3] * 4, "every class 0..3"),
    ([0, 1, -1] * 4, "labels must be 0..1"),
    ([0.5, 1.0] * 6, "must be integers"),
])
def test_bad_labels_are_one_line(labels: list, message: str) -> None:
    y = np.asarray(labels)
    with pytest.raises(ScoreInputError, match=message) as err:
        make_inputs(np.ones((len(y), 3)), y, num_classes=None if message != "labels must be 0..1" else 2,
                    where="suite.yaml: model_selection")
    assert "\n" not in str(err.value) and str(err.value).startswith("suite.yaml: model_selection")


def test_bad_features_are_one_line() -> None:
    with pytest.raises(ScoreInputError, match="one row per example"):
        make_inputs(np.ones((5, 3)), [0, 1, 0, 1])
    bad = np.ones((4, 3))
    bad[1, 1] = np.nan
    with pytest.raises(ScoreInputError, match="NaN"):
        make_inputs(bad, [0, 1, 0, 1])
    with pytest.raises(ScoreInputError, match="summing to 1"):
        make_inputs(np.ones((4, 3)), [0, 1, 0, 1], source_probs=np.ones((4, 2)))


def test_declaration_checks() -> None:
    class Odd(Scorer):
        name = "odd"
        needs = ("featurez",)

        def score(self, inputs, rng):  # type: ignore[no-untyped-def]
            return 0.0

    problems = check_scorer_class(Odd)
    assert any("featurez" in p for p in problems) and any("definition" in p for p in problems)


def test_nleep_is_seeded() -> None:
    f, y = labelled(90, 6, 3, seed=2, signal=2.0)
    scorer = SCORERS.get("nleep")()
    inputs = make_inputs(f, y)
    assert run_scorer(scorer, inputs, seed=4).value == run_scorer(scorer, inputs, seed=4).value


def test_knn_accuracy_by_hand() -> None:
    train = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    from tlbench.selection.scorers import knn_accuracy

    assert knn_accuracy(train, labels, np.array([[1.0, 0.05], [0.05, 1.0]]), np.array([0, 1]), 2, k=1) == 1.0
    assert knn_accuracy(train, labels, np.array([[1.0, 0.05], [0.05, 1.0]]), np.array([1, 1]), 2, k=1) == 0.5
    assert stats is not None


def test_the_selection_layer_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys, tlbench.selection.scorers, tlbench.selection.ranking, tlbench.store.scores; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", SCORERS.names())
def test_every_built_in_scorer_keeps_the_contract(name: str) -> None:
    from tlbench.testing import check_scorer

    check_scorer(SCORERS.get(name)).assert_ok()


def blobs(n_per: int, centres: int, dim: int, *, seed: int, spread: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (centres, dim))
    truth = np.repeat(np.arange(centres), n_per)
    return means[truth] + spread * rng.normal(size=(len(truth), dim)), truth


def test_the_mixture_reaches_scikit_learns_em_from_the_same_start() -> None:
    """N-LEEP's batched EM against scikit-learn's GaussianMixture (full covariance, its own EM)
    started from the same k-means responsibilities: the same posteriors and iterations."""
    from sklearn.mixture import GaussianMixture

    from tlbench.selection.mixture import fit_posteriors, kmeans_labels, m_step

    for n_per, centres, dim, k in [(20, 6, 4, 12), (8, 13, 3, 50)]:  # the second: 5·C-like, 2 points per component
        x, _ = blobs(n_per, centres, dim, seed=k, spread=1.0)
        labels = kmeans_labels(x, k, np.random.default_rng(0))
        weights, means, prec_chol = m_step(x, one_hot(labels, k), 1e-6)
        reference = GaussianMixture(k, covariance_type="full", reg_covar=1e-6, max_iter=200, weights_init=weights,
                                    means_init=means, precisions_init=prec_chol @ prec_chol.transpose(0, 2, 1),
                                    random_state=0).fit(x)
        posteriors, iterations, converged = fit_posteriors(x, k, np.random.default_rng(1), start=labels)
        assert converged and reference.converged_ and iterations == reference.n_iter_
        assert np.allclose(posteriors, reference.predict_proba(x), atol=1e-8)
        assert np.allclose(posteriors.sum(axis=1), 1.0)


def test_kmeans_seeding_finds_separated_clusters_and_is_seeded() -> None:
    from sklearn.metrics import adjusted_rand_score

    from tlbench.selection.mixture import fit_posteriors, kmeans_labels

    x, truth = blobs(15, 7, 5, seed=3)
    labels = kmeans_labels(x, 7, np.random.default_rng(5))
    assert adjusted_rand_score(truth, labels) == 1.0
    assert np.array_equal(labels, kmeans_labels(x, 7, np.random.default_rng(5)))
    # as many components as points, and repeated points: still a finite, normalised fit
    repeated = np.repeat(x[:4], 5, axis=0)
    for data, k in [(x[:10], 10), (repeated, 10)]:
        posteriors, _, _ = fit_posteriors(data, k, np.random.default_rng(0))
        assert np.all(np.isfinite(posteriors)) and np.allclose(posteriors.sum(axis=1), 1.0)


def test_the_probe_reaches_scikit_learns_logistic_regression_optimum() -> None:
    """The probe's multinomial logistic regression has scikit-learn's objective (C = 1, bias not
    penalised): both solved tightly, the same weights and the same predictions."""
    from sklearn.linear_model import LogisticRegression

    from tlbench.selection.scorers import logistic_regression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 12))
    labels = np.argmax(x[:, :4] + rng.normal(scale=1.5, size=(150, 4)), axis=1)
    weight, bias = logistic_regression(x, labels, 4, c=0.5, tol=1e-10)
    reference = LogisticRegression(C=0.5, tol=1e-10, max_iter=10_000).fit(x, labels)
    assert np.allclose(weight.T, reference.coef_, atol=1e-5) and np.allclose(bias, reference.intercept_, atol=1e-5)
    test = rng.normal(size=(200, 12))
    assert np.array_equal(np.argmax(test @ weight + bias, axis=1), reference.predict(test))


@pytest.mark.parametrize("n,d,scale", [(120, 10, 1.0), (40, 90, 1.0), (200, 3, 1e-4), (50, 1, 1.0)])
def test_ledoit_wolf_shrinkage_is_scikit_learns(n: int, d: int, scale: float) -> None:
    """The shrinkage H-score's Ledoit–Wolf coefficient, from its closed form, against
    scikit-learn's blocked computation (correlated, anisotropic features; D > N; one feature)."""
    from sklearn.covariance import ledoit_wolf_shrinkage as reference

    from tlbench.selection.scorers import ledoit_wolf_shrinkage

    rng = np.random.default_rng(n + d)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) * scale
    x -= x.mean(axis=0)
    ours = ledoit_wolf_shrinkage(x)
    assert 0.0 <= ours <= 1.0
    assert ours == pytest.approx(float(reference(x, assume_centered=True)), rel=1e-10, abs=1e-15)
