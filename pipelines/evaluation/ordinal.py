"""Ordinal metrics: quadratic weighted kappa (95 % CI), MAE, accuracy, confusion matrix, macro AUC,
and the referable operating point ``grade ≥ k`` (pure NumPy / scikit-learn).

Example:
    >>> import numpy as np
    >>> grades = np.array([0, 1, 2, 2, 3])
    >>> cumulative = np.array([[.1, .0, .0], [.9, .2, .1], [.9, .8, .2], [.9, .6, .1], [.9, .9, .7]])
    >>> m = ordinal_metrics(grades, cumulative, ["g0", "g1", "g2", "g3"], referable=2, threshold=0.5, ci=False)
    >>> m["qwk"], m["mae"], m["referable"]["sensitivity"]
    (1.0, 0.0, 1.0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from medlens.models.ordinal import decode_grades, grade_probabilities

__all__ = ["ordinal_metrics", "quadratic_weighted_kappa", "qwk_ci"]


def quadratic_weighted_kappa(truth: Any, predicted: Any, grades: int) -> float:
    """Cohen's kappa with quadratic weights over grades ``0 … grades-1`` (1 perfect, 0 chance)."""
    truth, predicted = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    if truth.size == 0:
        return float("nan")
    if np.unique(np.concatenate([truth, predicted])).size < 2:
        return 1.0 if np.array_equal(truth, predicted) else 0.0
    return float(cohen_kappa_score(truth, predicted, weights="quadratic", labels=list(range(grades))))


def qwk_ci(truth: Any, predicted: Any, grades: int, n: int = 1000, seed: int = 0) -> list[float] | None:
    """Percentile-bootstrap 95 % interval of the QWK (cases resampled with replacement)."""
    truth, predicted = np.asarray(truth, np.int64), np.asarray(predicted, np.int64)
    if truth.size < 2:
        return None
    rng = np.random.default_rng(seed)
    # Kappa from a weighted confusion matrix per resample: O(n·K²) without refitting anything.
    weights = (np.subtract.outer(np.arange(grades), np.arange(grades)) ** 2).astype(np.float64)
    values = []
    for _ in range(n):
        pick = rng.integers(0, truth.size, truth.size)
        observed = np.zeros((grades, grades))
        np.add.at(observed, (truth[pick], predicted[pick]), 1.0)
        expected = np.outer(observed.sum(1), observed.sum(0)) / truth.size
        denominator = float((weights * expected).sum())
        if denominator > 0:
            values.append(1.0 - float((weights * observed).sum()) / denominator)
    if not values:
        return None
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def ordinal_metrics(grades: Any, cumulative: Any, names: Sequence[str], *, referable: int, threshold: float | None,
                    ci: bool = True, seed: int = 0) -> dict[str, Any]:
    """Metrics of one split from true grade indices and ``(N, K-1)`` ``P(grade ≥ k)``.

    Returns:
        ``{n, qwk, qwk_ci95, mae, accuracy, confusion_matrix, auc (macro one-vs-rest over grades
        present), auc_classes, referable: {grade, threshold, auc, sensitivity, specificity,
        prevalence, tp, fp, tn, fn}}``.
    """
    truth = np.asarray(grades, np.int64).reshape(-1)
    cumulative = np.asarray(cumulative, np.float64)
    count = len(names)
    if cumulative.shape != (truth.size, count - 1):
        raise ValueError(f"expected {truth.size}×{count - 1} cumulative probabilities, got {cumulative.shape}")
    predicted = decode_grades(cumulative)
    probabilities = grade_probabilities(cumulative)
    present = [k for k in range(count) if 0 < np.sum(truth == k) < truth.size]
    aucs = {names[k]: float(roc_auc_score(truth == k, probabilities[:, k])) for k in present}
    score = cumulative[:, referable - 1]
    cut = 0.5 if threshold is None else float(threshold)
    positive, called = truth >= referable, score >= cut
    tp, fp = int(np.sum(positive & called)), int(np.sum(~positive & called))
    fn, tn = int(np.sum(positive & ~called)), int(np.sum(~positive & ~called))
    both = 0 < positive.sum() < positive.size
    return {
        "n": int(truth.size),
        "qwk": quadratic_weighted_kappa(truth, predicted, count),
        "qwk_ci95": qwk_ci(truth, predicted, count, seed=seed) if ci else None,
        "mae": float(np.mean(np.abs(truth - predicted))) if truth.size else None,
        "accuracy": float(np.mean(truth == predicted)) if truth.size else None,
        "confusion_matrix": confusion_matrix(truth, predicted, labels=list(range(count))).tolist(),
        "auc": float(np.mean(list(aucs.values()))) if aucs else None,
        "auc_classes": aucs,
        "referable": {
            "grade": f"≥ {names[referable]}", "threshold": cut,
            "auc": float(roc_auc_score(positive, score)) if both else None,
            "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "prevalence": _ratio(int(positive.sum()), truth.size), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        },
    }
