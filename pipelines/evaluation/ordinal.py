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

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from medlens.models.ordinal import decode_grades, expected_grade, grade_probabilities

log = logging.getLogger(__name__)

__all__ = ["choose_grade_cuts", "ordinal_metrics", "quadratic_weighted_kappa", "qwk_ci"]


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


#: Most candidate positions per cut point (midpoints between observed expected grades).
_MAX_CUT_CANDIDATES = 256


def _cut_objective(truth: np.ndarray, predicted: np.ndarray, grades: int, objective: str) -> float:
    if objective == "accuracy":
        return float(np.mean(truth == predicted))
    return quadratic_weighted_kappa(truth, predicted, grades)


def choose_grade_cuts(grades: Any, cumulative: Any, objective: str = "qwk", *, rounds: int = 20) -> list[float] | None:
    """Cut points on the expected grade that maximise ``objective`` (``qwk`` or ``accuracy``) on these cases.

    The search starts from the cut points that reproduce the 0.5 rule on these cases and moves one
    cut at a time to the midpoint between two observed scores that scores best, keeping the cuts
    ordered, until no move helps (coordinate ascent, as the optimised thresholds of DR-grading
    work). It only accepts strict gains, so on the cases it is given it never scores below the
    0.5 rule; how much of the gain holds on new cases is for the test split to say. The two cuts
    around a grade that none of these cases has stay at their start, the 0.5 rule's (moving them
    could only make that grade unreachable: a rare severe grade missing from a small validation
    split must still be predicted). Cases with non-finite probabilities are left out.

    Returns:
        ``K-1`` non-decreasing floats for :func:`~medlens.models.ordinal.decode_grades`, or None
        when the cases hold fewer than two grades (nothing to choose from).
    """
    if objective not in ("qwk", "accuracy"):
        raise ValueError(f"grade cuts maximise qwk or accuracy, not {objective!r}")
    truth = np.asarray(grades, np.int64).reshape(-1)
    values = np.asarray(cumulative, np.float64)
    count = values.shape[1] + 1
    finite = np.all(np.isfinite(values), axis=1)
    truth, values = truth[finite], values[finite]
    if truth.size < 2 or np.unique(truth).size < 2:
        return None
    score = expected_grade(values)
    half = decode_grades(values)
    # Start: between the cases the 0.5 rule puts below grade k and those it puts at k or above.
    cuts = []
    for k in range(1, count):
        below, above = score[half < k], score[half >= k]
        if below.size and above.size:
            cuts.append((below.max() + above.min()) / 2)
        elif above.size:  # every case at grade k or above: a cut at or below them all
            cuts.append(min(k - 0.5, float(above.min())))
        else:  # every case below grade k: a cut above them all
            cuts.append(max(k - 0.5, float(np.nextafter(below.max(), np.inf))))
    cuts = np.maximum.accumulate(np.asarray(cuts))
    absent = [g for g in range(count) if not np.any(truth == g)]
    frozen = {c for g in absent for c in (g - 1, g) if 0 <= c < count - 1}
    if absent:
        log.warning("grade cuts: no validation case has grade %s; the cut points around %s keep the 0.5 rule",
                    ", ".join(map(str, absent)), "it" if len(absent) == 1 else "them")
    observed = np.unique(score)
    if observed.size > _MAX_CUT_CANDIDATES:  # large validation sets: quantiles keep the search fast
        observed = np.unique(np.quantile(score, np.linspace(0, 1, _MAX_CUT_CANDIDATES)))
    candidates = np.clip(np.concatenate([[observed[0] - 1.0], (observed[1:] + observed[:-1]) / 2,
                                         [observed[-1] + 1.0]]), 0.0, count - 1.0)
    best = _cut_objective(truth, decode_grades(values, cuts), count, objective)
    for _ in range(rounds):
        moved = False
        for k in (k for k in range(count - 1) if k not in frozen):
            low = cuts[k - 1] if k else -np.inf
            high = cuts[k + 1] if k < count - 2 else np.inf
            for candidate in candidates[(candidates >= low) & (candidates <= high)]:
                trial = cuts.copy()
                trial[k] = candidate
                value = _cut_objective(truth, decode_grades(values, trial), count, objective)
                if value > best + 1e-12:
                    best, cuts, moved = value, trial, True
        if not moved:
            break
    return [float(c) for c in cuts]  # not rounded: a rounded cut could cross a score it was chosen to split


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def ordinal_metrics(grades: Any, cumulative: Any, names: Sequence[str], *, referable: int, threshold: float | None,
                    ci: bool = True, seed: int = 0, cuts: Sequence[float] | None = None) -> dict[str, Any]:
    """Metrics of one split from true grade indices and ``(N, K-1)`` ``P(grade ≥ k)``.

    ``cuts``: the grade cut points chosen on validation (:func:`choose_grade_cuts`); without
    them the predicted grade is the 0.5 rule.

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
    predicted = decode_grades(cumulative, cuts)
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
