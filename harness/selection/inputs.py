"""What a transferability scorer is given: one backbone's view of one target task.

Features come from the same cached feature pass the linear probe uses, on the train split (and
the validation split for proxies that need held-out examples), never test. Source-class
probabilities are the backbone's own source head applied to the same features, when it has one.
Everything is float64 numpy: the scores are sums of many small logs and log-determinants.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tlbench.core.errors import ConfigError

#: the inputs a scorer may need, as it names them in ``Scorer.needs``
INPUTS = ("features", "source_probs", "validation", "parameters", "source_accuracy")


def centred_svd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U (N, r), S (r,)): the thin SVD of ``x`` centred, singular values above max(N, D)·ε·S₁."""
    centred = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(centred, full_matrices=False)
    keep = s > max(centred.shape) * np.finfo(np.float64).eps * (s[0] if s.size else 0.0)
    return u[:, keep], s[keep]


class ScoreInputError(ConfigError):
    """Inputs no scorer can be given (one line, exit code 2)."""


@dataclass(frozen=True, eq=False)
class ScoreInputs:
    """One backbone's inputs on one target task.

    Attributes:
        features: (N, D) train features.
        labels: (N,) train labels, integers 0 … C−1, every class present.
        num_classes: C.
        source_probs: (N, Z) the source head's class probabilities on the train examples.
        val_features, val_labels: the validation split, for held-out proxies.
        parameters: the backbone's parameter count.
        source_accuracy: the backbone's accuracy on its source task (pretraining validation, or
            the published figure of its weights), in [0, 1].
    """

    features: np.ndarray
    labels: np.ndarray
    num_classes: int
    source_probs: np.ndarray | None = None
    val_features: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    parameters: int | None = None
    source_accuracy: float | None = None
    _derived: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, repr=False)

    def centred_svd(self) -> tuple[np.ndarray, np.ndarray]:
        """(U (N, r), S (r,)): the thin SVD of the centred train features, computed once per
        inputs (N-LEEP's seeds, GBC and H-score all start from it), singular values above
        max(N, D)·ε·S₁ only. The features are not to be modified in place after this."""
        if "centred_svd" not in self._derived:
            self._derived["centred_svd"] = centred_svd(self.features)
        return self._derived["centred_svd"]

    def has(self, need: str) -> bool:
        """Whether the input ``need`` (one of :data:`INPUTS`) is available."""
        if need == "features":
            return True
        if need == "validation":
            return self.val_features is not None and self.val_labels is not None and len(self.val_labels) > 0
        return need in INPUTS and getattr(self, need) is not None

    def missing(self, needs: tuple[str, ...]) -> list[str]:
        return [need for need in needs if not self.has(need)]


def _labels(y: object, num_classes: int, where: str, *, all_present: bool) -> np.ndarray:
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ScoreInputError(f"{where}: labels must be one integer per example, got shape {arr.shape}")
    whole = np.issubdtype(arr.dtype, np.floating) and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))
    if arr.size and not np.issubdtype(arr.dtype, np.integer) and not whole:
        raise ScoreInputError(f"{where}: labels must be integers 0..{num_classes - 1}, got {arr.dtype} values")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        bad = sorted(set(arr[(arr < 0) | (arr >= num_classes)].tolist()))[:5]
        raise ScoreInputError(f"{where}: labels must be 0..{num_classes - 1} (the task's {num_classes} classes); "
                              f"found {', '.join(map(str, bad))}")
    if all_present:
        absent = sorted(set(range(num_classes)) - set(np.unique(arr).tolist()))
        if absent:
            raise ScoreInputError(f"{where}: labels must use every class 0..{num_classes - 1}; "
                                  f"class{'es' if len(absent) > 1 else ''} {', '.join(map(str, absent[:5]))} "
                                  f"{'have' if len(absent) > 1 else 'has'} no example")
    return arr


def _matrix(x: object, rows: int, where: str, what: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != rows:
        raise ScoreInputError(f"{where}: {what} must be a matrix with one row per example ({rows}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ScoreInputError(f"{where}: {what} contain NaN or infinite values")
    return arr


def make_inputs(features: object, labels: object, *, num_classes: int | None = None,
                source_probs: object = None, val_features: object = None, val_labels: object = None,
                parameters: int | None = None, source_accuracy: float | None = None,
                where: str = "model selection") -> ScoreInputs:
    """Checks and converts a backbone's inputs (float64, int64 labels); bad input is one
    :class:`ScoreInputError` line naming ``where`` and what is allowed."""
    raw = np.asarray(labels)
    if num_classes is None:
        num_classes = int(raw.max()) + 1 if raw.size else 0
    if num_classes < 2:
        raise ScoreInputError(f"{where}: a task needs at least 2 classes to rank backbones on; it has {num_classes}")
    y = _labels(raw, num_classes, f"{where}: train", all_present=True)
    feats = _matrix(features, len(y), where, "features")
    if feats.shape[1] == 0:
        raise ScoreInputError(f"{where}: features have no dimension")
    probs = None
    if source_probs is not None:
        probs = _matrix(source_probs, len(y), where, "source probabilities")
        if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-4):
            raise ScoreInputError(f"{where}: source probabilities must be non-negative rows summing to 1")
    vf = vy = None
    if (val_features is None) != (val_labels is None):
        raise ScoreInputError(f"{where}: validation features and labels come together")
    if val_labels is not None:
        vy = _labels(val_labels, num_classes, f"{where}: validation", all_present=False)
        vf = _matrix(val_features, len(vy), where, "validation features")
        if vf.shape[1] != feats.shape[1]:
            raise ScoreInputError(f"{where}: validation features have {vf.shape[1]} dimensions, train {feats.shape[1]}")
    if source_accuracy is not None and not 0.0 <= float(source_accuracy) <= 1.0:
        raise ScoreInputError(f"{where}: source accuracy must be in [0, 1], got {source_accuracy}")
    return ScoreInputs(feats, y, num_classes, probs, vf, vy,
                       None if parameters is None else int(parameters),
                       None if source_accuracy is None else float(source_accuracy))
