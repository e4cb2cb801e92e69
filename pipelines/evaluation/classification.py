"""Evaluation of a classifier: probabilities, threshold choice and metrics, on plain numpy arrays.

- :func:`to_probabilities` turns a classifier's raw output (one sigmoid unit for
  K = 2, K softmax units otherwise) into an ``N x K`` probability array.
- :func:`choose_threshold` picks the binary decision threshold on validation data
  (Youden's J, a target sensitivity, or a fixed value).
- :func:`classification_metrics` returns a JSON-ready dict (``metrics.json``) with
  accuracy, AUC, sensitivity, specificity, PPV/NPV, per-class results, the
  confusion matrix and bootstrap 95 % confidence intervals
  (:mod:`~medlens.pipelines.evaluation.bootstrap`).

Plots are in :mod:`~medlens.pipelines.evaluation.plots`. Nothing here imports Keras.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 1])
    >>> p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    >>> m = classification_metrics(y, p, ["normal", "pneumonia"], threshold=0.5, ci=False)
    >>> round(m["sensitivity"], 3), m["specificity"]
    (0.667, 0.5)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from medlens.pipelines import names
from medlens.pipelines.evaluation.bootstrap import bootstrap_ci
from medlens.pipelines.evaluation.probabilities import as_int_labels, to_probabilities
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = [
    "THRESHOLD_METHODS",
    "to_probabilities",  # re-exported: a classifier's evaluation starts from it
    "choose_threshold",
    "classification_metrics",
    "bootstrap_ci",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = names.THRESHOLD_METHODS


# --------------------------------------------------------------------------- threshold


def choose_threshold(
    y_true: Any,
    p_pos: Any,
    method: str = "youden",
    target_sensitivity: float = 0.95,
) -> float:
    """Choose the decision threshold of a binary classifier on validation data.

    A case is called positive when ``p_pos >= threshold``.

    Args:
        y_true: ``(N,)`` labels, 0 or 1 (1 is the positive class).
        p_pos: ``(N,)`` probabilities of the positive class.
        method: ``"youden"`` maximises Youden's J = sensitivity + specificity - 1
            on the ROC curve; ``"sensitivity"`` takes the highest threshold whose
            sensitivity is at least ``target_sensitivity``; ``"0.5"`` (or any number
            in ``[0, 1]`` written as a string) returns that number.
        target_sensitivity: Sensitivity to reach with ``method="sensitivity"``.

    Returns:
        The threshold, in ``[0, 1]``. If the validation labels hold only one class
        the ROC curve is undefined, and 0.5 is returned with a logged warning.

    Raises:
        ValueError: On an unknown method, a target outside ``(0, 1]``, or labels and
            probabilities of different lengths.

    Example:
        >>> choose_threshold([0, 0, 1, 1], [0.1, 0.3, 0.6, 0.9])
        0.6
    """
    fixed = _parse_fixed_threshold(method)
    if fixed is None and method not in ("youden", "sensitivity"):
        raise ValueError(
            f"Unknown threshold method {method!r}; use one of {', '.join(THRESHOLD_METHODS)} "
            "or a number in [0, 1]."
        )
    if method == "sensitivity" and not 0.0 < target_sensitivity <= 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1]; got {target_sensitivity}.")

    labels = np.asarray(y_true).reshape(-1)
    scores = np.asarray(p_pos, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} probabilities.")
    if fixed is not None:
        return fixed
    labels = as_int_labels(labels, 2)
    if np.unique(labels).size < 2:
        logger.warning(
            "Validation labels hold only one class; the ROC curve is undefined, so the "
            "threshold falls back to 0.5."
        )
        return 0.5

    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # roc_curve's first threshold is +inf ("call nothing positive"); 1.0 does the same on probabilities.
    thresholds = np.clip(thresholds, 0.0, 1.0)
    if method == "youden":
        # argmax takes the first maximum, i.e. the highest (most specific) threshold on ties.
        index = int(np.argmax(tpr - fpr))
    else:
        reaching = np.flatnonzero(tpr >= target_sensitivity - 1e-12)
        index = int(reaching[0])  # tpr ends at 1.0, so this is never empty
    threshold = float(thresholds[index])
    logger.info(
        "Threshold %.4f by %s: sensitivity %.3f, specificity %.3f on %d validation cases.",
        threshold,
        method,
        tpr[index],
        1.0 - fpr[index],
        labels.size,
    )
    return threshold


def _parse_fixed_threshold(method: str) -> float | None:
    """``"0.5"`` -> 0.5; None when ``method`` is not a number."""
    try:
        value = float(method)
    except (TypeError, ValueError):
        return None
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"A fixed threshold must be in [0, 1]; got {method!r}.")
    return value


# --------------------------------------------------------------------------- metrics


def classification_metrics(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    threshold: float | None = None,
    *,
    ci: bool = True,
    n_bootstrap: int = 500,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of a classifier on labelled data, as a JSON-ready dict.

    Binary tasks (K = 2, index 1 positive) call a case positive when
    ``p_pos >= threshold``; multi-class tasks predict the argmax. Undefined values
    (a ratio with a zero denominator, an AUC with one class) are ``None``.

    Args:
        y_true: ``(N,)`` integer labels in ``0..K-1`` (a one-hot ``(N, K)`` array
            is accepted too).
        probs: ``(N, K)`` probabilities, or a binary sigmoid output ``(N,)``/``(N, 1)``
            (anything :func:`to_probabilities` accepts).
        class_names: The K class names; ``class_names[i]`` names class ``i``.
        threshold: Binary decision threshold; default 0.5. Ignored (with a warning)
            for multi-class tasks.
        ci: Add percentile-bootstrap 95 % confidence intervals ``auc_ci95`` and
            ``accuracy_ci95``.
        n_bootstrap: Bootstrap resamples for the intervals.
        seed: Seed of the bootstrap.

    Returns:
        A dict of plain floats, ints, strings, lists and ``None``:
        ``task``, ``n``, ``num_classes``, ``class_names``, ``accuracy``,
        ``balanced_accuracy``, ``auc``, ``average`` (``"binary"`` or ``"macro"``),
        ``sensitivity``, ``specificity``, ``precision``, ``f1``, ``per_class``
        (``{name: {precision, sensitivity, specificity, f1, auc, support}}``),
        ``confusion_matrix`` (rows = true class), ``notes``; binary tasks add
        ``positive_class``, ``threshold``, ``npv``, ``average_precision``,
        ``tp``, ``fp``, ``tn``, ``fn``; multi-class tasks add ``auc_classes``
        (classes the macro AUC averages over); with ``ci`` also ``auc_ci95``,
        ``accuracy_ci95`` (``[low, high]`` or ``None``) and ``n_bootstrap``.

    Raises:
        ValueError: On mismatched lengths, labels outside ``0..K-1``, fewer than two
            class names, or invalid probabilities.
    """
    names = [str(name) for name in class_names]
    k = len(names)
    if k < 2:
        raise ValueError(f"Need at least 2 class names; got {names}.")
    probabilities = to_probabilities(probs, num_classes=k)
    labels = as_int_labels(y_true, k)
    if labels.size != probabilities.shape[0]:
        raise ValueError(f"{labels.size} labels but {probabilities.shape[0]} predictions.")
    binary = k == 2
    notes: list[str] = []

    if binary:
        threshold = 0.5 if threshold is None else float(threshold)
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1]; got {threshold}.")
        predicted = (probabilities[:, 1] >= threshold).astype(np.int64)
    else:
        if threshold is not None:
            logger.warning("A decision threshold only applies to binary tasks; ignoring %s.", threshold)
        predicted = np.argmax(probabilities, axis=1)

    cm = confusion_matrix(labels, predicted, labels=np.arange(k))
    support = cm.sum(axis=1)
    present = np.flatnonzero(support > 0)
    absent = [names[i] for i in range(k) if support[i] == 0]
    if absent:
        notes.append(f"No true cases of: {', '.join(absent)}.")

    per_class_auc = [_binary_auc(labels == i, probabilities[:, i]) for i in range(k)]
    per_class: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(names):
        tp = int(cm[i, i])
        fn = int(support[i] - tp)
        fp = int(cm[:, i].sum() - tp)
        tn = int(labels.size - tp - fn - fp)
        precision = _ratio(tp, tp + fp)
        sensitivity = _ratio(tp, tp + fn)
        per_class[name] = {
            "precision": precision,
            "sensitivity": sensitivity,
            "specificity": _ratio(tn, tn + fp),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "auc": per_class_auc[i],
            "support": int(support[i]),
        }

    recalls = [per_class[names[i]]["sensitivity"] for i in present]
    metrics: dict[str, Any] = {
        "task": "binary" if binary else "multiclass",
        "n": int(labels.size),
        "num_classes": k,
        "class_names": names,
        "accuracy": float(np.mean(predicted == labels)),
        "balanced_accuracy": float(np.mean(recalls)),
    }

    if binary:
        positive = per_class[names[1]]
        tp, fn = int(cm[1, 1]), int(cm[1, 0])
        fp, tn = int(cm[0, 1]), int(cm[0, 0])
        auc = per_class_auc[1]
        if auc is None:
            notes.append("AUC and average precision are undefined: the labels hold only one class.")
            average_precision = None
        else:
            average_precision = float(average_precision_score(labels, probabilities[:, 1]))
        metrics.update(
            positive_class=names[1],
            threshold=threshold,
            auc=auc,
            average_precision=average_precision,
            average="binary",
            sensitivity=positive["sensitivity"],
            specificity=positive["specificity"],
            precision=positive["precision"],
            npv=_ratio(tn, tn + fn),
            f1=positive["f1"],
            tp=tp,
            fp=fp,
            tn=tn,
            fn=fn,
        )
    else:
        if present.size == k:
            auc = float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
        elif present.size >= 2:
            # sklearn refuses absent classes; average the one-vs-rest AUCs that exist.
            auc = float(np.mean([per_class_auc[i] for i in present]))
            notes.append(f"Macro AUC averages the {present.size} of {k} classes present in the labels.")
        else:
            auc = None
            notes.append("Macro AUC is undefined: the labels hold only one class.")
        metrics.update(
            auc=auc,
            auc_classes=[names[i] for i in present],
            average="macro",
            sensitivity=_mean_defined(per_class[name]["sensitivity"] for name in names),
            specificity=_mean_defined(per_class[name]["specificity"] for name in names),
            precision=_mean_defined(per_class[name]["precision"] for name in names),
            f1=_mean_defined(per_class[name]["f1"] for name in names),
        )
        if absent or any(per_class[name]["precision"] is None for name in names):
            notes.append(
                "Macro precision/sensitivity/specificity/F1 average the classes where each is defined."
            )

    metrics["per_class"] = per_class
    metrics["confusion_matrix"] = cm.astype(int).tolist()
    if ci:
        metrics["auc_ci95"] = _ci_or_none(
            bootstrap_ci(labels, probabilities, "auc", n=n_bootstrap, seed=seed)
        )
        metrics["accuracy_ci95"] = _ci_or_none(
            bootstrap_ci(labels, probabilities, "accuracy", n=n_bootstrap, seed=seed, threshold=threshold)
        )
        metrics["n_bootstrap"] = int(n_bootstrap)
    metrics["notes"] = notes
    return _to_jsonable(metrics)


def _binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of one class against the rest; None when only one side is present."""
    if is_positive.all() or not is_positive.any():
        return None
    return float(roc_auc_score(is_positive.astype(np.int64), scores))


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator else None


def _mean_defined(values: Any) -> float | None:
    defined = [value for value in values if value is not None]
    return float(np.mean(defined)) if defined else None


def _ci_or_none(interval: tuple[float, float]) -> list[float] | None:
    low, high = interval
    if math.isnan(low) or math.isnan(high):
        return None
    return [low, high]


def _to_jsonable(value: Any) -> Any:
    """Recursively turn numpy scalars/arrays into plain Python; NaN and inf become None."""
    if isinstance(value, dict):
        return {str(key): _to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return [_to_jsonable(item) for item in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, Path):
        return str(value)
    return value



def write_json_atomic(obj: Any, path: str | Path, *, indent: int = 2) -> Path:
    """Write ``obj`` as strict JSON (numpy values converted, NaN as ``null``) atomically.

    Args:
        obj: Dicts, lists, numbers, strings, numpy scalars or arrays.
        path: Destination file; its folder is created if needed.
        indent: JSON indentation.

    Returns:
        The path written.
    """
    text = json.dumps(_to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"))

