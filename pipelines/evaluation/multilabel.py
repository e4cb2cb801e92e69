"""Multi-label metrics: per finding, then macro and micro over findings (pure NumPy / scikit-learn).

Labels are ``(N, F)`` with 1 present, 0 absent and NaN missing; a missing entry is left out
of that finding's metrics only. A finding without positives (or without negatives) in a split
has no AUC, average precision or sensitivity (or specificity) there: those are ``None``
with a ``note`` saying why, and the macro average runs over the findings where it is defined.

Example:
    >>> import numpy as np
    >>> labels = np.array([[1, 0], [0, 0], [1, 1], [0, np.nan]])
    >>> probs = np.array([[0.9, 0.2], [0.2, 0.1], [0.7, 0.8], [0.4, 0.5]])
    >>> m = multilabel_metrics(labels, probs, ["a", "b"], {"a": 0.5, "b": 0.5}, ci=False)
    >>> m["findings"]["a"]["auc"], m["findings"]["b"]["n"], m["macro_auc"]
    (1.0, 3, 1.0)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

from medlens.pipelines.evaluation.calibration import ece_floor, expected_calibration_error
from medlens.pipelines.evaluation.classification import bootstrap_ci, choose_threshold

__all__ = ["choose_thresholds", "multilabel_metrics", "positive_findings"]

log = logging.getLogger(__name__)


def _labelled(labels: np.ndarray, probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(labels[:, k])
    return labels[keep, k].astype(np.int64), probs[keep, k].astype(np.float64)


def choose_thresholds(labels: Any, probs: Any, findings: Sequence[str], method: str = "youden",
                      target_sensitivity: float = 0.95) -> dict[str, float]:
    """One decision threshold per finding, chosen on validation (see ``choose_threshold``).

    A finding with one class only on validation falls back to 0.5 (logged).
    """
    labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
    chosen = {}
    for k, finding in enumerate(findings):
        truth, scores = _labelled(labels, probs, k)
        if np.unique(truth).size < 2:
            log.warning("finding %s: validation has %s only; its threshold falls back to 0.5", finding,
                        "positives" if truth.size and truth.min() == 1 else "negatives")
            chosen[finding] = 0.5
            continue
        chosen[finding] = round(choose_threshold(truth, scores, method=method,
                                                 target_sensitivity=target_sensitivity), 6)
    return chosen


def positive_findings(probs: Sequence[float], findings: Sequence[str], thresholds: Mapping[str, float]) -> list[str]:
    """The findings called present: probability at or above the finding's threshold."""
    return [f for f, p in zip(findings, probs, strict=True) if float(p) >= float(thresholds.get(f, 0.5))]


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def _finding(truth: np.ndarray, scores: np.ndarray, threshold: float, ci: bool, seed: int) -> dict[str, Any]:
    positives, negatives = int(truth.sum()), int((truth == 0).sum())
    predicted = scores >= threshold
    tp, fp = int(np.sum(predicted & (truth == 1))), int(np.sum(predicted & (truth == 0)))
    fn, tn = positives - tp, negatives - fp
    pair = np.stack([1 - scores, scores], axis=1)
    item: dict[str, Any] = {
        "n": int(truth.size), "positives": positives, "prevalence": _ratio(positives, truth.size),
        "threshold": threshold, "auc": None, "auc_ci95": None, "average_precision": None,
        "sensitivity": _ratio(tp, positives), "specificity": _ratio(tn, negatives),
        "precision": _ratio(tp, tp + fp), "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "ece": round(expected_calibration_error(pair, truth), 6) if truth.size else None,
        # What a perfectly calibrated finding with these scores would show on this many images.
        "ece_floor": round(ece_floor(pair), 6) if truth.size else None,
    }
    if positives and negatives:
        item["auc"] = float(roc_auc_score(truth, scores))
        item["average_precision"] = float(average_precision_score(truth, scores))
        if ci:
            low, high = bootstrap_ci(truth, scores, "auc", seed=seed)
            item["auc_ci95"] = None if np.isnan(low) else [float(low), float(high)]
    else:
        item["note"] = f"no {'positive' if not positives else 'negative'} cases in this split"
    return item


def multilabel_metrics(labels: Any, probs: Any, findings: Sequence[str], thresholds: Mapping[str, float] | None,
                       *, ci: bool = True, seed: int = 0) -> dict[str, Any]:
    """Per-finding and averaged metrics of one split.

    Args:
        labels: ``(N, F)`` 1/0/NaN.
        probs: ``(N, F)`` probabilities.
        findings: the ``F`` names.
        thresholds: finding → threshold (validation's); 0.5 where absent.
        ci: bootstrap a 95 % interval of each finding's AUC.

    Returns:
        ``{"n", "findings": {name: {n, positives, prevalence, threshold, auc, auc_ci95,
        average_precision, sensitivity, specificity, precision, tp, fp, tn, fn, ece, ece_floor[, note]}},
        "macro_auc", "micro_auc", "mean_average_precision", "auc_findings", "exact_match"}``.
    """
    labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
    if labels.shape != probs.shape or labels.ndim != 2 or labels.shape[1] != len(findings):
        raise ValueError(f"labels {labels.shape} and probabilities {probs.shape} must both be N×{len(findings)}")
    thresholds = dict(thresholds or {})
    per = {finding: _finding(*_labelled(labels, probs, k), float(thresholds.get(finding, 0.5)), ci, seed + k)
           for k, finding in enumerate(findings)}
    defined = [f for f in findings if per[f]["auc"] is not None]
    labelled = np.isfinite(labels)
    flat_truth, flat_scores = labels[labelled].astype(np.int64), probs[labelled]
    micro = (float(roc_auc_score(flat_truth, flat_scores))
             if flat_truth.size and 0 < flat_truth.sum() < flat_truth.size else None)
    called = probs >= np.array([float(thresholds.get(f, 0.5)) for f in findings])[None, :]
    complete = labelled.all(axis=1)
    exact = (called == (labels >= 0.5)) | ~labelled
    return {
        "n": int(labels.shape[0]),
        "findings": per,
        "macro_auc": float(np.mean([per[f]["auc"] for f in defined])) if defined else None,
        "micro_auc": micro,
        "mean_average_precision": float(np.mean([per[f]["average_precision"] for f in defined])) if defined else None,
        "auc_findings": defined,
        # Images whose every labelled finding is called right (complete rows and partial ones alike).
        "exact_match": float(exact.all(axis=1).mean()) if len(labels) else None,
        "images_fully_labelled": int(complete.sum()),
    }
