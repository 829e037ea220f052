"""Transferability scores: how well a backbone should fine-tune on a task, from one forward pass.

A :class:`Scorer` is a name, the inputs it needs (:data:`tlbench.selection.inputs.INPUTS`),
whether higher is better, a one-line definition and a citation; ``score`` turns one backbone's
:class:`ScoreInputs` into one finite float. Scorers are registered like strategies
(:data:`SCORERS`; plugins through a suite's ``plugins:`` or the ``tlbench.scorers`` entry-point
group) and checked by ``tlbench check``. Every built-in is vectorised numpy in float64.

Where the literature's reference code is wrong in a way a harness hits, the built-in is not:
LogME is the global maximum of the evidence, in a form exact for D > N and invariant to feature
scale (no added constant); LEEP stays finite when a source class has zero probability; H-score
is a true matrix trace (affine-invariant).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from tlbench.core.errors import ConfigError
from tlbench.core.registry import Registry
from tlbench.selection.inputs import INPUTS, ScoreInputs, centred_svd


class ScorerError(ConfigError):
    """A scorer that broke its contract: no finite scalar, an unknown input (one line, exit 2)."""


class Scorer(ABC):
    """A transferability score.

    Class attributes:
        name: the registry name (``model_selection.scorers`` in a suite).
        needs: the inputs ``score`` reads (see :data:`~tlbench.selection.inputs.INPUTS`); a
            backbone that lacks one is skipped for this scorer with a note, not an error.
        higher_is_better: whether a larger score predicts a better fine-tuned accuracy.
        definition: one line saying what is computed, with its conventions (log or not, sign, split).
        citation: where the score comes from.
        randomized: whether ``score`` uses its ``rng`` (then it is repeated over seeds).
    """

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]] = ("features",)
    higher_is_better: ClassVar[bool] = True
    definition: ClassVar[str] = ""
    citation: ClassVar[str] = ""
    randomized: ClassVar[bool] = False

    @abstractmethod
    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        """The score of one backbone on one task."""


SCORERS: Registry[Scorer] = Registry("scorer", Scorer, plugin_kind="scorer")


def register(cls: type[Scorer]) -> type[Scorer]:
    SCORERS.add(cls)
    return cls


@dataclass(frozen=True)
class Score:
    """One scorer's value for one backbone on one task (or why there is none)."""

    value: float | None
    seconds: float
    skipped: str = ""  # why there is no value: the inputs the backbone lacks


def check_scorer_class(cls: type[Scorer]) -> list[str]:
    """What is wrong with a scorer class's declaration (empty when nothing)."""
    problems = []
    needs = getattr(cls, "needs", ())
    if isinstance(needs, str) or not isinstance(needs, (tuple, list)):
        problems.append(f"needs must be a tuple of input names such as ('features',), got {needs!r}")
        needs = ()
    unknown = [need for need in needs if need not in INPUTS]
    if unknown:
        problems.append(f"needs unknown input(s) {', '.join(map(repr, unknown))}; known: {', '.join(INPUTS)}")
    if not isinstance(getattr(cls, "higher_is_better", None), bool):
        problems.append("higher_is_better must be True or False")
    if not str(getattr(cls, "definition", "")).strip():
        problems.append("has no one-line `definition`")
    return problems


def run_scorer(scorer: Scorer, inputs: ScoreInputs, *, seed: int = 0, where: str = "") -> Score:
    """Runs ``scorer`` on ``inputs`` (skipped with a reason when an input is missing) and checks
    it returned one finite number; anything else — an exception inside it included — is one
    :class:`ScorerError` line, prefixed with ``where`` (the suite, task and backbone)."""
    import time
    import traceback

    prefix = f"{where}: " if where else ""
    missing = inputs.missing(tuple(scorer.needs))
    if missing:
        return Score(None, 0.0, skipped=f"needs {' and '.join(m.replace('_', ' ') for m in missing)}")
    start = time.perf_counter()
    try:
        value = scorer.score(inputs, np.random.default_rng(seed))
    except Exception as err:  # noqa: BLE001 - a scorer's failure is one line naming it and where it failed
        frames = traceback.extract_tb(err.__traceback__)
        at = f" ({Path(frames[-1].filename).name}, line {frames[-1].lineno})" if frames else ""
        message = str(err).splitlines()[0] if str(err) else ""
        raise ScorerError(f"{prefix}scorer {scorer.name!r} raised {type(err).__name__}: {message}{at}") from None
    seconds = time.perf_counter() - start
    arr = np.asarray(value)
    if arr.shape != () or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ScorerError(f"{prefix}scorer {scorer.name!r} must return one number, got "
                          f"{type(value).__name__}{' of shape ' + str(arr.shape) if arr.shape else ''}")
    number = float(arr)
    if not math.isfinite(number):
        raise ScorerError(f"{prefix}scorer {scorer.name!r} returned {number} (a score must be a finite number)")
    return Score(number, seconds)


# ---------------------------------------------------------------------------------------------
# helpers


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def _rank_tol(s: np.ndarray, shape: tuple[int, int]) -> float:
    return max(shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)


def class_means(features: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(C, D) class means and (C,) class counts."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    sums = np.zeros((num_classes, features.shape[1]))
    np.add.at(sums, labels, features)
    return sums / np.maximum(counts, 1.0)[:, None], counts


def _pca(x: np.ndarray, variance: float, svd: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """``x`` centred and projected on its leading principal components that keep ``variance``
    of the total (all of them when ``variance`` ≥ 1); ``svd`` is its centred SVD if known."""
    u, s = svd if svd is not None else centred_svd(x)
    if variance < 1.0 and s.size:
        share = np.cumsum(s**2) / np.sum(s**2)
        k = int(np.searchsorted(share, variance - 1e-12) + 1)
        u, s = u[:, :k], s[:k]
    return u * s


# ---------------------------------------------------------------------------------------------
# LogME


def logme_evidence(log_alpha: np.ndarray, log_beta: np.ndarray, s2: np.ndarray, z: np.ndarray,
                   yy: np.ndarray, n: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-example log evidence of Bayesian linear regression y = F w + ε, w ~ N(0, α⁻¹I),
    ε ~ N(0, β⁻¹), for each target column, and its gradient in (log α, log β).

    ``s2`` are the r non-zero squared singular values of F (N × D), ``z`` = Uᵀy (r × K) its
    left singular vectors' projections of the K targets, ``yy`` = ‖y‖² per target. The D − r
    directions F does not reach contribute log α each to log|A| (this is what makes the form
    exact for D > N)."""
    alpha, beta = np.exp(log_alpha), np.exp(log_beta)
    r = s2.shape[0]
    t = alpha + beta * s2[:, None]  # (r, K): eigenvalues of A = αI + βFᵀF on F's row space
    z2 = z**2
    mm = np.sum(beta**2 * s2[:, None] * z2 / t**2, axis=0)  # ‖m‖²
    res = np.sum((alpha / t) ** 2 * z2, axis=0) + np.maximum(yy - np.sum(z2, axis=0), 0.0)  # ‖Fm − y‖²
    logdet = np.sum(np.log(t), axis=0) + (d - r) * log_alpha
    evidence = (n / 2 * log_beta + d / 2 * log_alpha - n / 2 * math.log(2 * math.pi)
                - beta / 2 * res - alpha / 2 * mm - logdet / 2) / n
    d_alpha = (d / 2 - alpha * mm / 2 - np.sum(alpha / t, axis=0) / 2 - (d - r) / 2) / n
    d_beta = (n / 2 - beta * res / 2 - np.sum(beta * s2[:, None] / t, axis=0) / 2) / n
    return evidence, d_alpha, d_beta


def logme(features: np.ndarray, targets: np.ndarray, *, tol: float = 1e-12, max_iter: int = 100,
          grid: int = 64) -> np.ndarray:
    """The maximum log evidence per example of each target column (K values).

    The evidence depends on (α, β) through λ = α/β and β; for fixed λ its maximum over β has the
    closed form β = N / Q(λ), Q(λ) = Σᵢ zᵢ² λ/(λ + σᵢ²) + ‖y − UUᵀy‖² (the residual plus λ‖m‖²),
    which leaves a 1-D profile in u = log λ:

        g(u) = −N/2 · log Q + r/2 · u − ½ Σᵢ log(eᵘ + σᵢ²)   (+ a constant).

    Its maximum is located on a grid of ``grid`` points spanning F's squared singular values
    (20 e-folds beyond each end, where g is flat to e⁻²⁰), then refined by safeguarded Newton
    steps on g′ inside the neighbouring grid points until the step is below ``tol``. This is the
    stationary point MacKay's fixed point (γ = Σ βσ²/(α + βσ²), α = γ/‖m‖², β = (N − γ)/‖Fm − y‖²)
    iterates towards, reached in a handful of steps instead of hundreds, and the global
    maximum of the profile rather than the first one the iteration meets (tests compare with
    direct numerical maximisation of the evidence). Every bound is relative to the σᵢ², so the
    result is invariant to the features' scale."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    n, d = f.shape
    left, s, _ = np.linalg.svd(f, full_matrices=False)
    keep = s > _rank_tol(s, f.shape)
    left, s2 = left[:, keep], s[keep] ** 2
    z = left.T @ y
    yy = np.sum(y**2, axis=0)
    k = y.shape[1]
    r = s2.shape[0]
    z2 = z**2
    rest = np.maximum(yy - np.sum(z2, axis=0), 0.0)  # the part of y outside F's column space
    if r == 0:  # no features: λ → ∞, m = 0, β = N/‖y‖²
        log_beta = np.log(n / np.maximum(yy, 1e-300))
        return logme_evidence(log_beta + 50.0, log_beta, s2, z, yy, n, d)[0]
    ls2 = np.log(s2)

    def derivatives(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """g′ and g″ at u (K,)."""
        w = 1.0 / (1.0 + np.exp(ls2[:, None] - u))  # λ/(λ + σ²), (r, K)
        dw = w * (1.0 - w)
        q = np.maximum(np.sum(z2 * w, axis=0) + rest, 1e-300)
        q1 = np.sum(z2 * dw, axis=0) / q
        q2 = np.sum(z2 * dw * (1.0 - 2.0 * w), axis=0) / q
        return -n / 2 * q1 + 0.5 * np.sum(1.0 - w, axis=0), -n / 2 * (q2 - q1**2) - 0.5 * np.sum(dw, axis=0)

    points = np.linspace(ls2.min() - 20.0, ls2.max() + 20.0, grid)
    w = 1.0 / (1.0 + np.exp(ls2[None, :] - points[:, None]))  # (grid, r): the same for every column
    q = np.maximum(w @ z2 + rest, 1e-300)  # (grid, K)
    values = (-n / 2 * np.log(q) + (r / 2 * points - 0.5 * np.sum(np.logaddexp(points[:, None], ls2[None, :]), axis=1))[:, None])
    best = np.argmax(values, axis=0)
    lo = points[np.maximum(best - 1, 0)]
    hi = points[np.minimum(best + 1, grid - 1)]
    u = points[best].copy()
    for _ in range(max_iter):
        g1, g2 = derivatives(u)
        lo = np.where(g1 > 0, u, lo)  # the maximum lies above u where g rises, below where it falls
        hi = np.where(g1 < 0, u, hi)
        newton = u - g1 / np.where(g2 < 0, g2, -np.inf)
        inside = (g2 < 0) & (newton > lo) & (newton < hi)
        step = np.where(inside, newton, 0.5 * (lo + hi)) - u
        u = u + step
        if float(np.max(np.abs(step))) < tol:
            break
    q = np.sum(z2 / (1.0 + np.exp(ls2[:, None] - u)), axis=0) + rest
    log_beta = np.log(n / np.maximum(q, 1e-300))
    return logme_evidence(u + log_beta, log_beta, s2, z, yy, n, d)[0]


@register
class LogME(Scorer):
    name = "logme"
    definition = ("mean over classes of the maximum log marginal likelihood per example of a Bayesian linear "
                  "regression from train features to the class's one-hot column (natural log; higher is better)")
    citation = "You et al., LogME: Practical Assessment of Pre-trained Models for Transfer Learning, ICML 2021"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return float(np.mean(logme(inputs.features, one_hot(inputs.labels, inputs.num_classes))))


# ---------------------------------------------------------------------------------------------
# LEEP, NCE, N-LEEP


def leep(probs: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Log expected empirical prediction: (1/N) Σᵢ log Σ_z P̂(yᵢ|z) θᵢ(z), float64. A source class
    no example gives probability (P̂(z) = 0) contributes nothing, instead of 0/0."""
    theta = np.asarray(probs, dtype=np.float64)
    joint = one_hot(labels, num_classes).T @ theta / len(labels)  # (C, Z): P̂(y, z)
    marginal = joint.sum(axis=0)  # P̂(z)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P̂(y | z)
    eep = np.sum(theta * cond[labels], axis=1)
    return float(np.mean(np.log(eep)))


def nce(source_labels: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Negative conditional entropy −H(Y | Z) of the target labels given hard source labels."""
    z_codes, z = np.unique(source_labels, return_inverse=True)
    joint = np.zeros((num_classes, len(z_codes)))
    np.add.at(joint, (labels, z), 1.0)
    joint /= len(labels)
    marginal = joint.sum(axis=0)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / marginal)[nz])))


@register
class LEEP(Scorer):
    name = "leep"
    needs = ("source_probs",)
    definition = ("(1/N) Σᵢ log Σ_z P̂(yᵢ|z) θᵢ(z), θ the source head's probabilities on train examples "
                  "(natural log, ≤ 0; higher is better)")
    citation = "Nguyen et al., LEEP: A New Measure to Evaluate Transferability of Learned Representations, ICML 2020"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return leep(inputs.source_probs, inputs.labels, inputs.num_classes)


@register
class NCE(Scorer):
    name = "nce"
    needs = ("source_probs",)
    definition = ("−H(Y | Z), Z the source head's most probable class on each train example "
                  "(natural log, ≤ 0; higher is better)")
    citation = "Tran et al., Transferability and Hardness of Supervised Classification Tasks, ICCV 2019"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return nce(np.argmax(inputs.source_probs, axis=1), inputs.labels, inputs.num_classes)


@register
class NLEEP(Scorer):
    name = "nleep"
    randomized = True
    definition = ("LEEP with θ the posteriors of a full-covariance Gaussian mixture (5 components per target "
                  "class, k-means start, seeded; EM as scikit-learn's) fitted on train features reduced by PCA "
                  "to 80% of their variance")
    citation = "Li et al., Ranking Neural Checkpoints, CVPR 2021 (5·C components, as google-research/stable_transfer)"
    variance = 0.8

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        from tlbench.selection.mixture import fit_posteriors

        reduced = _pca(inputs.features, self.variance, inputs.centred_svd())
        components = min(5 * inputs.num_classes, len(inputs.labels))
        posteriors, _, _ = fit_posteriors(reduced, components, rng, reg_covar=1e-6, max_iter=200)
        return leep(posteriors, inputs.labels, inputs.num_classes)


# ---------------------------------------------------------------------------------------------
# H-score


def h_score(features: np.ndarray, labels: np.ndarray, num_classes: int,
            svd: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """tr(cov(f)⁺ cov(E[f | y])) as a matrix trace: with the centred features' SVD f = U S Vᵀ it is
    Σ_c n_c ‖mean of U's rows in class c‖², invariant under any invertible affine map of f and
    within [0, min(rank, C − 1)]. ``svd`` is that SVD if known."""
    u, s = svd if svd is not None else centred_svd(features)
    u = u[:, s > 1e-10 * (s[0] if s.size else 0.0)]
    means, counts = class_means(u, labels, num_classes)
    return float(np.sum(counts[:, None] * means**2))


@register
class HScore(Scorer):
    name = "hscore"
    definition = "tr(cov(f)⁺ cov(E[f|y])) on train features (pseudo-inverse; in [0, min(D, C−1)]; higher is better)"
    citation = "Bao et al., An Information-Theoretic Approach to Transferability in Task Transfer Learning, ICIP 2019"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return h_score(inputs.features, inputs.labels, inputs.num_classes, inputs.centred_svd())


def ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """The Ledoit–Wolf shrinkage s ∈ [0, 1] of centred ``x`` (N × D) towards μI, μ = tr(S)/D,
    S = xᵀx/N: s = min(b², d²)/d² with d² = ‖S − μI‖²_F / D and b² = Σₙ ‖xₙxₙᵀ − S‖²_F / (N²D)
    = (Σₙ ‖xₙ‖⁴ − N‖S‖²_F) / (N²D) (Ledoit & Wolf, J. Multivariate Analysis 2004; scikit-learn's
    ``ledoit_wolf_shrinkage(assume_centered=True)``, tested equal). 0 for one feature."""
    n, d = x.shape
    if d == 1:
        return 0.0
    cov = x.T @ x / n
    mu = float(np.trace(cov)) / d
    spread = (float(np.sum(cov**2)) - 2 * mu * float(np.trace(cov)) + d * mu**2) / d  # ‖S − μI‖²_F / D
    noise = (float(np.sum(np.einsum("ij,ij->i", x, x) ** 2)) - n * float(np.sum(cov**2))) / (n**2 * d)
    noise = min(noise, spread)
    return 0.0 if noise == 0 else noise / spread


@register
class ShrinkageHScore(Scorer):
    name = "hscore_shrinkage"
    definition = ("tr(Σ_s⁻¹ (1−s) cov(E[f|y])), Σ_s = (1−s) cov(f) + s·(tr cov(f)/D)·I with the Ledoit–Wolf "
                  "shrinkage s, on train features (higher is better)")
    citation = ("Ibrahim et al., Newer is not always better: Rethinking transferability metrics, their peculiarities, "
                "stability and performance, ECML-PKDD 2022")

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        f = inputs.features - inputs.features.mean(axis=0)
        n, d = f.shape
        shrink = ledoit_wolf_shrinkage(f)
        cov = f.T @ f / n
        target = np.trace(cov) / d
        if target <= 0:
            return 0.0
        reg = (1 - shrink) * cov + shrink * target * np.eye(d)
        means, counts = class_means(f, inputs.labels, inputs.num_classes)
        between = (means * counts[:, None]).T @ means / n  # Σ_c (n_c/N) μ_c μ_cᵀ (f is centred)
        return float(np.trace(np.linalg.solve(reg, (1 - shrink) * between)))


# ---------------------------------------------------------------------------------------------
# GBC, TransRate, SFDA



def gbc(features: np.ndarray, labels: np.ndarray, num_classes: int, *, components: int = 64,
        floor: float = 1e-4, svd: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """−Σ_{c≠c'} exp(−D_B(c, c')) over ordered pairs, D_B the Bhattacharyya distance between
    spherical Gaussians fitted per class to the features' first ``components`` principal
    components (per-dimension variances floored at ``floor``, then averaged): 0 for
    well-separated classes, −C(C − 1) for identical ones."""
    reduced = _pca(features, 1.0, svd)[:, :components]
    means, counts = class_means(reduced, labels, num_classes)
    sq = np.zeros_like(means)
    np.add.at(sq, labels, (reduced - means[labels]) ** 2)
    var = np.maximum(sq / np.maximum(counts, 1.0)[:, None], floor).mean(axis=1)  # (C,) spherical
    pair = (var[:, None] + var[None, :]) / 2
    dist2 = np.sum((means[:, None, :] - means[None, :, :]) ** 2, axis=2)
    db = dist2 / (8 * pair) + 0.5 * (np.log(pair) - 0.5 * (np.log(var)[:, None] + np.log(var)[None, :]))
    bc = np.exp(-db)
    np.fill_diagonal(bc, 0.0)
    return float(-np.sum(bc))


@register
class GBC(Scorer):
    name = "gbc"
    definition = ("−Σ_{c≠c'} exp(−D_B(c, c')), Bhattacharyya distance between per-class spherical Gaussians of "
                  "the train features' first 64 principal components (in [−C(C−1), 0]; higher is better)")
    citation = ("Pándy et al., Transferability Estimation using Bhattacharyya Class Separability, CVPR 2022 "
                "(spherical, 64 components, as the authors' code in google-research/stable_transfer)")

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return gbc(inputs.features, inputs.labels, inputs.num_classes, svd=inputs.centred_svd())


def coding_rate(z: np.ndarray, n: int, eps: float) -> float:
    """½ log det(I + Zᵀ Z / (n ε)) through Z's singular values."""
    if z.shape[0] == 0:
        return 0.0
    s = np.linalg.svd(z, compute_uv=False)
    return float(0.5 * np.sum(np.log1p(s**2 / (n * eps))))


def transrate(features: np.ndarray, labels: np.ndarray, num_classes: int, eps: float = 1e-4) -> float:
    """R(Z) − Σ_c (n_c/n) R(Z_c | n_c), Z the train features L2-normalised per row, centred and
    L2-normalised again (the authors' preprocessing, which makes it scale-free), Z_c the rows of
    class c (not re-centred)."""
    def rows(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)

    z = rows(features)
    z = rows(z - z.mean(axis=0))
    n = len(labels)
    whole = coding_rate(z, n, eps)
    counts = np.bincount(labels, minlength=num_classes)
    per_class = sum(counts[c] / n * coding_rate(z[labels == c], int(counts[c]), eps)
                    for c in range(num_classes) if counts[c])
    return whole - float(per_class)


@register
class TransRate(Scorer):
    name = "transrate"
    definition = ("R(Z) − Σ_c (n_c/n) R(Z_c), R(Z) = ½ log det(I + ZᵀZ/(n ε)), ε = 1e-4, Z the train features "
                  "L2-normalised, centred and L2-normalised again (natural log; higher is better)")
    citation = "Huang et al., Frustratingly Easy Transferability Estimation, ICML 2022"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return transrate(inputs.features, inputs.labels, inputs.num_classes)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def shrunk_lda_proba(x: np.ndarray, labels: np.ndarray, num_classes: int,
                     shrink: float | None = None) -> tuple[np.ndarray, float]:
    """Class probabilities of a linear discriminant whose within-class covariance is shrunk to
    its mean variance (SFDA's regularised Fisher space: the classifier it uses equals LDA with
    S_w' = (1−λ) S_w + λ (tr S_w/D) I), and the λ used: exp(−5 σ_max(S_w)) unless given."""
    n, d = x.shape
    means, counts = class_means(x, labels, num_classes)
    prior = counts / n
    centred = x - means[labels]
    within = centred.T @ centred / n  # Σ_c π_c cov_c, biased
    if shrink is None:
        top = float(np.linalg.eigvalsh(within)[-1]) if d else 0.0
        shrink = max(math.exp(-5.0 * top), 1e-10)
    reg = (1 - shrink) * within + shrink * (np.trace(within) / d) * np.eye(d)
    coef = np.linalg.solve(reg, means.T).T  # (C, D): μ_c S_w'⁻¹
    intercept = -0.5 * np.sum(coef * means, axis=1) + np.log(np.maximum(prior, 1e-300))
    return _softmax(x @ coef.T + intercept), shrink


def sfda(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean probability of the true class after SFDA's self-challenge: each example is mixed
    towards the unweighted mean of the other classes' means by 1 − its (softened) confidence,
    and the regularised Fisher classifier is fitted again on the mixed features."""
    x = np.asarray(features, dtype=np.float64)
    probs, shrink = shrunk_lda_proba(x, labels, num_classes)
    probs = _softmax(probs)  # the authors' second softmax ("soften")
    means, _ = class_means(x, labels, num_classes)
    others = (means.sum(axis=0) - means) / (num_classes - 1)
    a = probs[np.arange(len(labels)), labels][:, None]
    mixed = a * x + (1 - a) * others[labels]
    probs2, _ = shrunk_lda_proba(mixed, labels, num_classes, shrink)
    return float(np.mean(probs2[np.arange(len(labels)), labels]))


@register
class SFDA(Scorer):
    name = "sfda"
    definition = ("mean true-class probability of a shrinkage-regularised Fisher discriminant refitted after "
                  "ConfMix self-challenge on train features (in [0, 1]; higher is better)")
    citation = ("Shao et al., Not All Models Are Equal: Predicting Model Transferability in a Self-challenging "
                "Fisher Space, ECCV 2022")

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return sfda(inputs.features, inputs.labels, inputs.num_classes)


# ---------------------------------------------------------------------------------------------
# held-out proxies and static baselines


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray,
                 num_classes: int, k: int = 10) -> float:
    """Accuracy of a k-nearest-neighbour vote under cosine similarity (ties to the class with the
    larger summed similarity)."""
    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-300)

    a, b = unit(train), unit(test)
    k = min(k, len(train_labels))
    correct = 0
    for start in range(0, len(test_labels), 1024):  # bounded memory on big splits
        sims = b[start:start + 1024] @ a.T
        nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        votes = np.zeros((len(sims), num_classes))
        weight = np.zeros((len(sims), num_classes))
        rows = np.arange(len(sims))[:, None]
        np.add.at(votes, (rows, train_labels[nearest]), 1.0)
        np.add.at(weight, (rows, train_labels[nearest]), sims[rows, nearest])
        predicted = np.argmax(votes * (1 + 2 * k) + (weight + k) / (2 * k + 1), axis=1)
        correct += int(np.sum(predicted == test_labels[start:start + 1024]))
    return correct / len(test_labels)


@register
class KNN(Scorer):
    name = "knn"
    needs = ("validation",)
    definition = "validation accuracy of a 10-nearest-neighbour vote (cosine similarity) over train features"
    citation = "Puigcerver et al., Scalable Transfer Learning with Expert Models, ICLR 2021 (kNN proxy)"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return knn_accuracy(inputs.features, inputs.labels, inputs.val_features, inputs.val_labels,
                            inputs.num_classes)


def logistic_regression(x: np.ndarray, labels: np.ndarray, num_classes: int, *, c: float = 1.0,
                        tol: float = 1e-4, max_iter: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """(weight (D, C), bias (C,)) minimising the mean multinomial log loss plus ‖weight‖²/(2cN)
    (bias not penalised): scikit-learn's ``LogisticRegression(C=c)`` objective, solved as it
    solves it (L-BFGS from zero, gradient tolerance ``tol``), without its per-iteration
    overhead (tests check both reach the same optimum)."""
    from scipy.optimize import minimize

    n, d = x.shape
    onehot = one_hot(labels, num_classes)
    penalty = 1.0 / (c * n)

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
        z = x @ w + b
        top = z.max(axis=1, keepdims=True)
        e = np.exp(z - top)
        total = e.sum(axis=1, keepdims=True)
        value = float(np.mean(np.log(total[:, 0]) + top[:, 0] - np.sum(z * onehot, axis=1)))
        g = (e / total - onehot) / n
        grad = np.concatenate([(x.T @ g + penalty * w).ravel(), g.sum(axis=0)])
        return value + 0.5 * penalty * float(np.sum(w * w)), grad

    result = minimize(loss, np.zeros(d * num_classes + num_classes), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    theta = result.x
    return theta[: d * num_classes].reshape(d, num_classes), theta[d * num_classes:]


@register
class ProbeAccuracy(Scorer):
    name = "probe_accuracy"
    needs = ("validation",)
    definition = ("validation accuracy of an L2-regularised (C = 1) multinomial logistic regression on "
                  "standardised train features, fixed hyperparameters (no tuning)")
    citation = "Kornblith et al., Do Better ImageNet Models Transfer Better?, CVPR 2019 (linear evaluation)"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        mean = inputs.features.mean(axis=0)
        std = inputs.features.std(axis=0)
        std[std == 0] = 1.0
        weight, bias = logistic_regression((inputs.features - mean) / std, inputs.labels, inputs.num_classes, c=1.0)
        logits = (inputs.val_features - mean) / std @ weight + bias
        return float(np.mean(np.argmax(logits, axis=1) == inputs.val_labels))


@register
class Parameters(Scorer):
    name = "parameters"
    needs = ("parameters",)
    definition = "the backbone's parameter count in millions (the static 'bigger is better' baseline)"
    citation = "baseline"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return inputs.parameters / 1e6


@register
class SourceAccuracy(Scorer):
    name = "source_accuracy"
    needs = ("source_accuracy",)
    definition = ("the backbone's accuracy on its source task (its pretraining validation split, or the "
                  "published top-1 of its weights): the 'better source model transfers better' baseline")
    citation = "Kornblith et al., Do Better ImageNet Models Transfer Better?, CVPR 2019"

    def score(self, inputs: ScoreInputs, rng: np.random.Generator) -> float:
        return inputs.source_accuracy
