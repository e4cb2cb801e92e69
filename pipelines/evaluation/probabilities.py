"""A classifier's raw output as class probabilities, and labels as class indices (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["to_probabilities", "as_int_labels"]

_ROW_SUM_TOLERANCE = 1e-3


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


def as_int_labels(y_true: Any, num_classes: int) -> np.ndarray:
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


