"""Evaluation of a classifier: probabilities, threshold choice, metrics, CIs and plots.

The last stage of an image's path (see ``docs/architecture.md``). Everything here
works on plain numpy arrays, so it never imports Keras:

- :func:`to_probabilities` turns a classifier's raw output (one sigmoid unit for
  K = 2, K softmax units otherwise) into an ``N x K`` probability array.
- :func:`choose_threshold` picks the binary decision threshold on validation data
  (Youden's J, a target sensitivity, or a fixed value).
- :func:`classification_metrics` returns a JSON-ready dict (``metrics.json``) with
  accuracy, AUC, sensitivity, specificity, PPV/NPV, per-class results, the
  confusion matrix and bootstrap 95 % confidence intervals.
- :func:`plot_roc`, :func:`plot_confusion`, :func:`plot_history` write PNGs.

Plots use :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so they are
headless and safe to call from worker threads. Every file is written atomically:
to a temporary file in the same folder, then ``os.replace``.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1, 1])
    >>> p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    >>> m = classification_metrics(y, p, ["normal", "pneumonia"], threshold=0.5, ci=False)
    >>> round(m["sensitivity"], 3), m["specificity"]
    (0.667, 0.5)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score, roc_curve

from medlens.pipelines.errors import RunDirError
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = [
    "THRESHOLD_METHODS",
    "to_probabilities",
    "choose_threshold",
    "classification_metrics",
    "bootstrap_ci",
    "plot_roc",
    "plot_confusion",
    "plot_history",
    "write_json_atomic",
]

logger = logging.getLogger(__name__)

THRESHOLD_METHODS = ("youden", "sensitivity", "0.5")

# Tolerance on "rows of a softmax output sum to 1" (float32 outputs drift by ~1e-6).
_ROW_SUM_TOLERANCE = 1e-3
# Upper bound on the bootstrap count matrix (resamples x N) held in memory at once.
_BOOTSTRAP_CELLS_PER_CHUNK = 4_000_000
_PLOT_DPI = 120


# --------------------------------------------------------------------------- probabilities


def to_probabilities(output: Any, num_classes: int | None = None) -> np.ndarray:
    """Turn a classifier's output into an ``N x K`` array of class probabilities.

    Args:
        output: ``(N,)`` or ``(N, 1)`` sigmoid probabilities of the positive class
            (binary task), or ``(N, K)`` softmax probabilities.
        num_classes: Expected K, if known. A sigmoid output requires K = 2.

    Returns:
        ``float64`` array of shape ``(N, K)``; for a sigmoid output ``[1 - p, p]``.

    Raises:
        ValueError: If the output is not finite, lies outside ``[0, 1]`` (looks like
            logits), has the wrong shape, or its rows do not sum to 1.

    Example:
        >>> to_probabilities(np.array([0.2, 0.9])).tolist()
        [[0.8, 0.2], [0.09999999999999998, 0.9]]
    """
    array = np.asarray(output, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim not in (1, 2):
        raise ValueError(f"Classifier output must be (N,), (N, 1) or (N, K); got shape {array.shape}.")
    if array.shape[0] == 0:
        raise ValueError("Classifier output is empty (N = 0).")
    if not np.all(np.isfinite(array)):
        raise ValueError("Classifier output contains NaN or infinite values.")
    if array.min() < 0.0 or array.max() > 1.0:
        raise ValueError(
            "Classifier output lies outside [0, 1]; expected probabilities (sigmoid/softmax), not logits."
        )

    if array.ndim == 1:
        if num_classes is not None and num_classes != 2:
            raise ValueError(f"A single sigmoid output means 2 classes, but num_classes={num_classes}.")
        return np.stack([1.0 - array, array], axis=1)

    k = array.shape[1]
    if num_classes is not None and k != num_classes:
        raise ValueError(f"Classifier output has {k} columns but num_classes={num_classes}.")
    row_sums = array.sum(axis=1)
    worst = float(np.max(np.abs(row_sums - 1.0)))
    if worst > _ROW_SUM_TOLERANCE:
        raise ValueError(
            f"Rows of the {k}-column output must sum to 1 (softmax); the worst row sums to "
            f"{row_sums[np.argmax(np.abs(row_sums - 1.0))]:.4f}."
        )
    return array


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
    labels = _as_int_labels(labels, 2)
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
    labels = _as_int_labels(y_true, k)
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


def _as_int_labels(y_true: Any, num_classes: int) -> np.ndarray:
    """Validate labels as ints in ``0..K-1``; one-hot ``(N, K)`` is turned into indices."""
    labels = np.asarray(y_true)
    if labels.ndim == 2 and labels.shape[1] == num_classes and num_classes > 1:
        labels = np.argmax(labels, axis=1)
    elif labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"Labels must be (N,) class indices; got shape {labels.shape}.")
    if labels.size == 0:
        raise ValueError("No labels (N = 0).")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ValueError("Labels must be whole numbers (class indices).")
    elif labels.dtype.kind not in "iub":
        raise ValueError(f"Labels must be integer class indices; got dtype {labels.dtype}.")
    labels = labels.astype(np.int64)
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"Labels must lie in 0..{num_classes - 1}; found {labels.min()}..{labels.max()}.")
    return labels


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


# --------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    metric: str = "auc",
    n: int = 1000,
    seed: int = 0,
    *,
    threshold: float | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap 95 % confidence interval of AUC or accuracy.

    Cases are resampled with replacement ``n`` times; the interval is the 2.5th and
    97.5th percentile of the metric over the resamples. AUC is computed for all
    resamples at once from rank sums (Mann-Whitney, ties count one half), so 1000
    resamples of 1000 cases take a fraction of a second. Resamples where the AUC is
    undefined (one class only) are skipped; a multi-class macro AUC averages the
    classes present in each resample.

    Args:
        y_true: ``(N,)`` integer labels in ``0..K-1``.
        probs: ``(N, K)`` probabilities or a binary sigmoid output.
        metric: ``"auc"`` (binary AUC, or macro one-vs-rest AUC) or ``"accuracy"``.
        n: Number of resamples.
        seed: Seed of the resampling.
        threshold: Binary decision threshold for accuracy; default 0.5.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when the metric is undefined in every resample.

    Raises:
        ValueError: On an unknown metric, ``n < 1`` or inconsistent inputs.
    """
    if metric not in ("auc", "accuracy"):
        raise ValueError(f"Unknown metric {metric!r}; use 'auc' or 'accuracy'.")
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}.")
    probabilities = to_probabilities(probs)
    k = probabilities.shape[1]
    labels = _as_int_labels(y_true, k)
    if labels.size != probabilities.shape[0]:
        raise ValueError(f"{labels.size} labels but {probabilities.shape[0]} predictions.")
    size = labels.size
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS_PER_CHUNK // size)

    if metric == "accuracy":
        if k == 2:
            cut = 0.5 if threshold is None else float(threshold)
            predicted = (probabilities[:, 1] >= cut).astype(np.int64)
        else:
            predicted = np.argmax(probabilities, axis=1)
        correct = (predicted == labels).astype(np.float64)
        values = np.concatenate(
            [
                correct[rng.integers(0, size, (min(chunk, n - start), size))].mean(axis=1)
                for start in range(0, n, chunk)
            ]
        )
    else:
        classes = [1] if k == 2 else [c for c in range(k) if np.any(labels == c)]
        orders = [np.argsort(probabilities[:, c], kind="stable") for c in classes]
        parts = []
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            counts = _resample_counts(rng, size, rows)
            aucs = np.stack(
                [
                    _weighted_auc(counts[:, order], labels[order] == c, probabilities[order, c])
                    for c, order in zip(classes, orders, strict=True)
                ]
            )
            with np.errstate(invalid="ignore"):
                # All-NaN columns (no class defined in a resample) stay NaN and are dropped below.
                defined = np.sum(~np.isnan(aucs), axis=0)
                parts.append(np.where(defined > 0, np.nansum(aucs, axis=0) / np.maximum(defined, 1), np.nan))
        values = np.concatenate(parts)

    values = values[~np.isnan(values)]
    if values.size == 0:
        logger.warning("Bootstrap %s is undefined in every resample.", metric)
        return (math.nan, math.nan)
    if values.size < n:
        logger.debug("Bootstrap %s: %d of %d resamples were undefined.", metric, n - values.size, n)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def _resample_counts(rng: np.random.Generator, size: int, rows: int) -> np.ndarray:
    """How often each of ``size`` cases is drawn, for ``rows`` resamples: ``(rows, size)``."""
    draws = rng.integers(0, size, (rows, size))
    offsets = (np.arange(rows) * size)[:, None]
    return (
        np.bincount((draws + offsets).ravel(), minlength=rows * size).reshape(rows, size).astype(np.float64)
    )


def _weighted_auc(counts: np.ndarray, is_positive: np.ndarray, sorted_scores: np.ndarray) -> np.ndarray:
    """AUC per resample from case multiplicities; cases sorted by ascending score.

    AUC = P(score_pos > score_neg) + P(tie) / 2, counting every drawn pair once.
    """
    # Tied scores form one group, so ties count one half whatever their order.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    positive_weight = np.add.reduceat(counts * is_positive, starts, axis=1)
    negative_weight = np.add.reduceat(counts * ~is_positive, starts, axis=1)
    negatives_below = np.cumsum(negative_weight, axis=1) - negative_weight
    pairs = positive_weight.sum(axis=1) * negative_weight.sum(axis=1)
    wins = np.sum(positive_weight * (negatives_below + 0.5 * negative_weight), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / pairs, np.nan)


# --------------------------------------------------------------------------- files


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


def _save_figure(figure: Figure, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PLOT_DPI)
    written = atomic_write_bytes(path, buffer.getvalue())
    logger.debug("Wrote %s", written)
    return written


# --------------------------------------------------------------------------- plots


def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    path: str | Path,
    threshold: float | None = None,
) -> Path:
    """Plot ROC curves to a PNG.

    Binary: the ROC of the positive class with its AUC in the legend and the
    operating point at ``threshold`` (default 0.5) marked. Multi-class: one
    one-vs-rest curve per class present, plus the macro-average curve.

    Args:
        y_true: ``(N,)`` integer labels in ``0..K-1``.
        probs: ``(N, K)`` probabilities or a binary sigmoid output.
        class_names: The K class names.
        path: PNG to write (atomically).
        threshold: Binary operating point; default 0.5.

    Returns:
        The path written.
    """
    names = [str(name) for name in class_names]
    k = len(names)
    probabilities = to_probabilities(probs, num_classes=k)
    labels = _as_int_labels(y_true, k)
    if labels.size != probabilities.shape[0]:
        raise ValueError(f"{labels.size} labels but {probabilities.shape[0]} predictions.")

    figure = Figure(figsize=(5.5, 5.0), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    if k == 2:
        cut = 0.5 if threshold is None else float(threshold)
        if np.unique(labels).size < 2:
            logger.warning("ROC undefined: the labels hold only one class; writing an empty plot.")
            axes.text(0.5, 0.5, "ROC undefined:\nonly one class in the labels", ha="center", va="center")
        else:
            fpr, tpr, _ = roc_curve(labels, probabilities[:, 1])
            auc = roc_auc_score(labels, probabilities[:, 1])
            axes.plot(fpr, tpr, linewidth=2, label=f"{names[1]} (AUC = {auc:.3f})")
            predicted = probabilities[:, 1] >= cut
            positives = labels == 1
            point_tpr = np.mean(predicted[positives])
            point_fpr = np.mean(predicted[~positives])
            axes.plot(
                [point_fpr],
                [point_tpr],
                marker="o",
                markersize=8,
                color="crimson",
                linestyle="none",
                label=f"threshold {cut:.3f} (sens {point_tpr:.2f}, spec {1 - point_fpr:.2f})",
            )
        axes.set_title(f"ROC: {names[1]} vs {names[0]}")
    else:
        grid = np.linspace(0.0, 1.0, 201)
        curves = []
        for i, name in enumerate(names):
            is_class = labels == i
            if is_class.all() or not is_class.any():
                continue
            fpr, tpr, _ = roc_curve(is_class, probabilities[:, i])
            auc = roc_auc_score(is_class, probabilities[:, i])
            axes.plot(fpr, tpr, linewidth=1.3, label=f"{name} (AUC = {auc:.3f})")
            curves.append((np.interp(grid, fpr, tpr), auc))
        if curves:
            mean_tpr = np.mean([curve for curve, _ in curves], axis=0)
            mean_tpr[0] = 0.0
            macro = float(np.mean([auc for _, auc in curves]))
            axes.plot(grid, mean_tpr, color="black", linewidth=2.5, label=f"macro (AUC = {macro:.3f})")
        else:
            axes.text(0.5, 0.5, "ROC undefined:\nonly one class in the labels", ha="center", va="center")
        axes.set_title("ROC: one-vs-rest")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return _save_figure(figure, path)


def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = False,
) -> Path:
    """Plot a confusion matrix (rows = true class) to a PNG, with counts in the cells.

    Args:
        cm: ``K x K`` counts, rows = true class, columns = predicted class.
        class_names: The K class names.
        path: PNG to write (atomically).
        normalize: Colour by the fraction of each true class (row) and show the
            fraction above the count.

    Returns:
        The path written.

    Raises:
        ValueError: If ``cm`` is not ``K x K`` for the K class names.
    """
    counts = np.asarray(cm, dtype=np.float64)
    names = [str(name) for name in class_names]
    k = len(names)
    if counts.shape != (k, k):
        raise ValueError(f"Confusion matrix has shape {counts.shape}; expected ({k}, {k}) for {k} classes.")
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(row_totals > 0, counts / row_totals, 0.0)
        upper = 1.0
    else:
        shown = counts
        upper = max(float(counts.max()), 1.0)

    size = max(5.0, 0.9 * k + 2.5)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=upper)
    figure.colorbar(image, ax=axes, shrink=0.8)
    for row in range(k):
        for column in range(k):
            text = f"{int(counts[row, column])}"
            if normalize:
                text = f"{shown[row, column]:.2f}\n({text})"
            colour = "white" if shown[row, column] > 0.6 * upper else "black"
            axes.text(column, row, text, ha="center", va="center", color=colour, fontsize="small")
    axes.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    axes.set_yticks(range(k), names)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    return _save_figure(figure, path)


def plot_history(history_csv_path: str | Path, path: str | Path) -> Path:
    """Plot training curves from a Keras ``CSVLogger`` file to a PNG.

    One panel per quantity (``loss`` first, then each metric such as ``auc``),
    with the training and ``val_`` curves together. If the file has a ``phase``
    column (frozen backbone, then fine-tuning), each change of phase is marked with
    a vertical line. Learning-rate columns are left out.

    Args:
        history_csv_path: The CSV (columns ``epoch, loss, val_loss, ...``).
        path: PNG to write (atomically).

    Returns:
        The path written.

    Raises:
        RunDirError: If the CSV is missing, empty, or has no numeric columns to plot.
    """
    source = Path(history_csv_path)
    try:
        with source.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except FileNotFoundError:
        raise RunDirError(f"{source}: training history not found.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunDirError(f"{source}: cannot read training history ({error}).") from None
    if not rows:
        raise RunDirError(f"{source}: training history has no epochs.")
    columns = [name for name in rows[0] if name is not None]

    def numbers(column: str) -> np.ndarray:
        return np.array([_to_float(row.get(column)) for row in rows], dtype=np.float64)

    epochs = numbers("epoch") if "epoch" in columns else np.full(len(rows), np.nan)
    # Phases may restart the epoch count; fall back to the row index when epochs are not increasing.
    if np.any(np.isnan(epochs)) or np.any(np.diff(epochs) <= 0):
        epochs = np.arange(len(rows), dtype=np.float64)

    skip = {"epoch", "phase", "lr", "learning_rate"}
    bases: list[str] = []
    for name in columns:
        base = name[4:] if name.startswith("val_") else name
        if base in skip or base in bases:
            continue
        if not np.all(np.isnan(numbers(name))):
            bases.append(base)
    if not bases:
        raise RunDirError(f"{source}: training history has no numeric columns to plot.")
    bases.sort(key=lambda base: (base != "loss", columns.index(base) if base in columns else len(columns)))

    n_columns = min(len(bases), 2)
    n_rows = math.ceil(len(bases) / n_columns)
    figure = Figure(figsize=(5.0 * n_columns, 3.6 * n_rows), layout="constrained")
    grid = figure.subplots(n_rows, n_columns, squeeze=False)
    phases = [row.get("phase") for row in rows] if "phase" in columns else None
    for index, base in enumerate(bases):
        axes = grid[index // n_columns][index % n_columns]
        for name, label in ((base, "train"), (f"val_{base}", "validation")):
            if name in columns:
                values = numbers(name)
                if not np.all(np.isnan(values)):
                    axes.plot(epochs, values, marker="o", markersize=3, label=label)
        if phases is not None:
            for boundary in range(1, len(rows)):
                if phases[boundary] != phases[boundary - 1]:
                    x = (epochs[boundary - 1] + epochs[boundary]) / 2.0
                    axes.axvline(x, color="0.4", linestyle="--", linewidth=1)
                    axes.annotate(
                        f"phase {phases[boundary]}",
                        xy=(x, 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(3, -12),
                        textcoords="offset points",
                        fontsize="x-small",
                        color="0.3",
                    )
        axes.set_title(base)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for index in range(len(bases), n_rows * n_columns):
        grid[index // n_columns][index % n_columns].set_visible(False)
    return _save_figure(figure, path)


def _to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
