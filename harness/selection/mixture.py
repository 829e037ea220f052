"""A full-covariance Gaussian mixture fitted by EM, batched over components: N-LEEP's density.

The same estimator as scikit-learn's ``GaussianMixture(covariance_type="full")`` with its
default ``init_params="kmeans"`` — k-means (greedy k-means++ seeding, then Lloyd) gives the
initial hard responsibilities, EM runs until the mean log-likelihood changes by less than
``tol`` — and the same M-step (``reg_covar`` on the diagonal, ``10·eps`` added to each
component's mass) and E-step (through the Cholesky factors of the precisions). What differs
is only the cost: scikit-learn loops over components in Python in every step, which at
N-LEEP's 5 components per class (130 for 26 classes) is almost all of its time; here each step
is a few batched matrix products (tests check that both reach the same posteriors from the
same start).
"""

from __future__ import annotations

import math

import numpy as np

EPS = 10 * np.finfo(np.float64).eps


def kmeans_labels(x: np.ndarray, k: int, rng: np.random.Generator, *, max_iter: int = 300,
                  tol: float = 1e-4) -> np.ndarray:
    """Labels (N,) of ``k`` clusters of the rows of ``x``: greedy k-means++ seeding (2 + ⌊ln k⌋
    candidates per centre, the one lowering the potential most kept), then Lloyd's iterations
    until the centres move by less than ``tol`` times the mean per-feature variance (squared);
    an emptied cluster keeps its centre."""
    n = len(x)
    sq = np.einsum("ij,ij->i", x, x)
    pairwise = np.maximum(sq[:, None] - 2 * x @ x.T + sq[None, :], 0.0)  # centres are rows of x: N² once
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(n)
    closest = pairwise[chosen[0]]
    trials = 2 + int(math.log(k))
    draws = rng.random((k - 1, trials))  # the same stream as drawing each centre's in turn
    for c in range(1, k):
        cumulative = closest.cumsum()
        if cumulative[-1] <= 0:  # fewer distinct points than clusters: the rest repeat the first
            chosen[c:] = chosen[0]
            break
        candidates = np.minimum(cumulative.searchsorted(draws[c - 1] * cumulative[-1]), n - 1)
        potentials = np.minimum(closest, pairwise[candidates])
        best = potentials.sum(axis=1).argmin()
        chosen[c], closest = candidates[best], potentials[best]
    centres = x[chosen]
    threshold = tol * float(np.mean(np.var(x, axis=0)))
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(max_iter):
        dist = sq[:, None] - 2 * x @ centres.T + np.einsum("ij,ij->i", centres, centres)[None, :]
        labels = np.argmin(dist, axis=1)
        counts = np.bincount(labels, minlength=k)
        sums = np.zeros((k, n))
        sums[labels, np.arange(n)] = 1.0
        sums = sums @ x  # per-cluster sums, as one product (np.add.at is a slow scatter)
        moved = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        shift = float(np.sum((moved - centres) ** 2))
        centres = moved
        if shift <= threshold:
            break
    dist = sq[:, None] - 2 * x @ centres.T + np.einsum("ij,ij->i", centres, centres)[None, :]
    return np.argmin(dist, axis=1)


def outer_products(x: np.ndarray) -> np.ndarray:
    """(N, D²): each row's x xᵀ, flattened (computed once per fit; both EM steps read it)."""
    return (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)


def m_step(x: np.ndarray, resp: np.ndarray, reg_covar: float,
           outer: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(weights (K,), means (K, D), Cholesky factors of the precisions (K, D, D)) from
    responsibilities (N, K). Each covariance is the weighted second moment minus the mean's
    outer product, as one (K × N)(N × D²) product for all components (``outer`` is
    :func:`outer_products` of ``x``)."""
    d = x.shape[1]
    outer = outer_products(x) if outer is None else outer
    nk = resp.sum(axis=0) + EPS
    means = resp.T @ x / nk[:, None]
    cov = (resp.T @ outer).reshape(-1, d, d) / nk[:, None, None] - means[:, :, None] * means[:, None, :]
    cov += reg_covar * np.eye(d)
    chol = np.linalg.cholesky(cov)
    prec_chol = np.linalg.inv(chol).transpose(0, 2, 1)  # (L⁻¹)ᵀ: precision = P Pᵀ
    return nk / nk.sum(), means, prec_chol


def e_step(x: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray,
           outer: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(mean log-likelihood, log responsibilities (N, K)). The squared Mahalanobis distances
    (x − μₖ)ᵀΛₖ(x − μₖ) as xᵀΛₖx − 2xᵀΛₖμₖ + μₖᵀΛₖμₖ: two matrix products for all components
    instead of an (N, K, D) array of differences."""
    d = x.shape[1]
    outer = outer_products(x) if outer is None else outer
    precision = np.matmul(prec_chol, prec_chol.transpose(0, 2, 1))  # (K, D, D)
    pm = np.einsum("kij,kj->ki", precision, means)  # Λₖμₖ
    maha = outer @ precision.reshape(len(means), -1).T - 2 * x @ pm.T + np.einsum("ki,ki->k", pm, means)
    log_det = np.sum(np.log(np.diagonal(prec_chol, axis1=1, axis2=2)), axis=1)  # (K,)
    weighted = -0.5 * (d * math.log(2 * math.pi) + np.maximum(maha, 0.0)) + log_det + np.log(weights)
    top = weighted.max(axis=1, keepdims=True)
    norm = top[:, 0] + np.log(np.sum(np.exp(weighted - top), axis=1))
    return float(np.mean(norm)), weighted - norm[:, None]


def fit_posteriors(x: np.ndarray, k: int, rng: np.random.Generator, *, reg_covar: float = 1e-6,
                   tol: float = 1e-3, max_iter: int = 200,
                   start: np.ndarray | None = None) -> tuple[np.ndarray, int, bool]:
    """(posteriors (N, K) of the fitted mixture on ``x``, EM iterations, converged): EM from the
    hard responsibilities of :func:`kmeans_labels` (or of ``start``, labels (N,)), stopped when
    the mean log-likelihood changes by less than ``tol``."""
    x = np.asarray(x, dtype=np.float64)
    labels = kmeans_labels(x, k, rng) if start is None else np.asarray(start)
    resp = np.zeros((len(x), k))
    resp[np.arange(len(x)), labels] = 1.0
    outer = outer_products(x)
    params = m_step(x, resp, reg_covar, outer)
    lower, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        bound, log_resp = e_step(x, *params, outer)
        params = m_step(x, np.exp(log_resp), reg_covar, outer)
        converged, lower = abs(bound - lower) < tol, bound
        if converged:
            break
    return np.exp(e_step(x, *params, outer)[1]), it, converged
