"""Segmentation metrics: Dice, IoU, sensitivity, specificity, accuracy and AUC inside a field of view.

:func:`seg_metrics` scores a probability map against a ground-truth mask inside an optional
field of view (FOV), in NumPy (scikit-learn for the ROC curve of small inputs).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

__all__ = ["seg_metrics"]

logger = logging.getLogger(__name__)

# Above this many pixels the AUC is computed from ranks instead of sklearn's ROC curve.
_FAST_AUC_PIXELS = 200_000


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator / denominator) if denominator > 0 else None


def _auc(scores: np.ndarray, truth: np.ndarray) -> float | None:
    """ROC AUC; ``None`` with a single class. Exact rank formula for large inputs."""
    positives = int(truth.sum())
    negatives = int(truth.size - positives)
    if positives == 0 or negatives == 0:
        return None
    if truth.size <= _FAST_AUC_PIXELS:
        from sklearn.metrics import roc_auc_score

        return float(roc_auc_score(truth, scores))
    from scipy.stats import rankdata

    # Mann-Whitney U: mean rank of positives (ties get average ranks) equals the ROC AUC.
    ranks = rankdata(scores, method="average")
    rank_sum = float(ranks[truth].sum())
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _binary_counts(predicted: np.ndarray, truth: np.ndarray) -> dict[str, int]:
    tp = int(np.count_nonzero(predicted & truth))
    fp = int(np.count_nonzero(predicted & ~truth))
    fn = int(np.count_nonzero(~predicted & truth))
    tn = int(predicted.size - tp - fp - fn)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _overlap(counts: dict[str, int]) -> tuple[float, float]:
    """Dice and IoU; both 1.0 when truth and prediction are empty."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return 2.0 * tp / (2 * tp + fp + fn), tp / (tp + fp + fn)


def seg_metrics(
    prob: np.ndarray,
    truth: np.ndarray,
    fov: np.ndarray | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Pixel metrics of a predicted probability map against a ground-truth mask.

    Binary (``prob`` ``H×W`` or ``H×W×1``): a pixel is predicted positive when
    ``prob >= threshold``; ``truth`` is positive where nonzero. Multi-class (``prob``
    ``H×W×C``): the prediction is the argmax; ``truth`` holds class indices (or is one-hot
    ``H×W×C``). Only pixels inside ``fov`` (nonzero) count when it is given. Ratios with a zero
    denominator and an AUC with a single class are ``None``; Dice and IoU are 1.0 when both
    truth and prediction are empty.

    Args:
        prob: Probability map.
        truth: Ground-truth mask of the same ``H×W``.
        fov: Optional field-of-view mask ``H×W``.
        threshold: Binary decision threshold.

    Returns:
        Binary: ``dice`` (= F1), ``iou``, ``sensitivity``, ``specificity``, ``precision``,
        ``accuracy``, ``auc``, ``tp``, ``fp``, ``fn``, ``tn``, ``pixels``, ``threshold``.
        Multi-class: ``dice_per_class``, ``iou_per_class``, ``mean_dice``, ``mean_iou``,
        ``mean_dice_foreground`` (classes 1..C-1), ``accuracy``, ``pixels``.

    Raises:
        ValueError: Shapes disagree.

    Example:
        >>> seg_metrics(np.array([[0.9, 0.2], [0.7, 0.1]]), np.array([[1, 0], [0, 0]]))["dice"]
        0.6666666666666666
    """
    prob = np.asarray(prob, dtype=np.float64)
    truth = np.asarray(truth)
    if prob.ndim == 3 and prob.shape[-1] == 1:
        prob = prob[..., 0]
    multi = prob.ndim == 3
    if multi and truth.ndim == 3 and truth.shape == prob.shape:
        truth = truth.argmax(axis=-1)
    elif truth.ndim == 3 and truth.shape[-1] == 1:
        truth = truth[..., 0]
    if truth.shape != prob.shape[:2] or prob.ndim not in (2, 3):
        raise ValueError(f"prob shape {prob.shape} does not match truth shape {truth.shape}")
    inside = np.ones(truth.shape, dtype=bool) if fov is None else np.asarray(fov) > 0
    if fov is not None and inside.shape != truth.shape:
        raise ValueError(f"fov shape {inside.shape} does not match truth shape {truth.shape}")
    pixels = int(inside.sum())

    if multi:
        classes = prob.shape[-1]
        predicted = prob.argmax(axis=-1)[inside]
        labels = truth[inside].astype(np.int64)
        dice, iou = [], []
        for k in range(classes):
            d, i = _overlap(_binary_counts(predicted == k, labels == k))
            dice.append(float(d))
            iou.append(float(i))
        return {
            "dice_per_class": dice,
            "iou_per_class": iou,
            "mean_dice": float(np.mean(dice)),
            "mean_iou": float(np.mean(iou)),
            "mean_dice_foreground": float(np.mean(dice[1:])) if classes > 1 else None,
            "accuracy": _ratio(float(np.count_nonzero(predicted == labels)), pixels),
            "pixels": pixels,
        }

    scores = prob[inside]
    positive = truth[inside] > 0
    counts = _binary_counts(scores >= threshold, positive)
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    dice, iou = _overlap(counts)
    return {
        "dice": float(dice),
        "iou": float(iou),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "accuracy": _ratio(tp + tn, pixels),
        "auc": _auc(scores, positive),
        **counts,
        "pixels": pixels,
        "threshold": float(threshold),
    }
