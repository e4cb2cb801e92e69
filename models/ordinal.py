"""Ordinal grades (0 < 1 < … < K-1): a rank-consistent cumulative head, its loss and metric (``keras.ops`` only).

The head gives ``P(grade ≥ k)`` for ``k = 1 … K-1`` as ``σ(w·x + b_k)``: one weight vector
shared by every threshold (CORAL, Cao et al. 2020) and biases that decrease strictly
(``b_k = b_1 - Σ softplus(δ)``), so the cumulative probabilities never increase with ``k``
for any input and ``P(grade = k) = P(≥ k) - P(≥ k+1)`` is never negative. The loss is the
sum over thresholds of the binary cross-entropy of ``[grade ≥ k]``; the predicted grade is
the number of thresholds passed at 0.5 (the loss's own decision rule), or, when a run chose
them on validation (``evaluate.grade_cuts``), the number of cut points its expected grade reaches.

Targets may be the grade index ``(B,)`` / ``(B, 1)`` or its one-hot ``(B, K)`` (what the
classification batches give for K > 2).

Example:
    >>> import numpy as np
    >>> cumulative = np.array([[0.9, 0.6, 0.2, 0.1]])
    >>> grade_probabilities(cumulative).round(2).tolist(), decode_grades(cumulative).tolist()
    ([[0.1, 0.3, 0.4, 0.1, 0.1]], [2])
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

__all__ = ["CumulativeHead", "OrdinalCrossentropy", "OrdinalAUC", "decode_grades", "expected_grade",
           "grade_probabilities"]

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="medlens")
class CumulativeHead(keras.layers.Layer):
    """``(B, D)`` features → ``(B, K-1)`` probabilities ``P(grade ≥ k)``, non-increasing in ``k``."""

    def __init__(self, num_grades: int, **kwargs: Any):
        super().__init__(**kwargs)
        if num_grades < 3:
            raise ValueError(f"an ordinal head needs at least 3 grades, got {num_grades} (two are binary)")
        self.num_grades = int(num_grades)

    def build(self, input_shape: tuple) -> None:
        self.kernel = self.add_weight(name="kernel", shape=(int(input_shape[-1]), 1), initializer="glorot_uniform")
        self.first_bias = self.add_weight(name="first_bias", shape=(1,), initializer="zeros")
        # Gaps between successive thresholds (through softplus: always positive); start one logit apart.
        self.gaps = self.add_weight(name="gaps", shape=(self.num_grades - 2,),
                                    initializer=keras.initializers.Constant(0.5413))

    def logits(self, inputs: Any) -> Any:
        """``(B, K-1)`` logits ``w·x + b_k``."""
        score = ops.matmul(ops.cast(inputs, self.compute_dtype), ops.cast(self.kernel, self.compute_dtype))
        steps = ops.concatenate([ops.zeros((1,), self.compute_dtype),
                                 ops.cumsum(ops.softplus(ops.cast(self.gaps, self.compute_dtype)))], axis=0)
        return score + ops.cast(self.first_bias, self.compute_dtype) - steps

    def call(self, inputs: Any) -> Any:
        return ops.sigmoid(self.logits(inputs))

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return (*input_shape[:-1], self.num_grades - 1)

    def get_config(self) -> dict:
        return {**super().get_config(), "num_grades": self.num_grades}


def _levels(y_true: Any, thresholds: int) -> Any:
    """``[grade ≥ k]`` for ``k = 1 … K-1`` from grade indices or one-hot rows."""
    y_true = ops.cast(y_true, "float32")
    if len(y_true.shape) == 2 and y_true.shape[-1] == thresholds + 1:  # one-hot
        return 1.0 - ops.cumsum(y_true, axis=-1)[:, :thresholds]
    grades = ops.reshape(y_true, (-1, 1))
    ks = ops.reshape(ops.arange(1, thresholds + 1, dtype="float32"), (1, -1))
    return ops.cast(grades >= ks, "float32")


@keras.saving.register_keras_serializable(package="medlens")
class OrdinalCrossentropy(keras.losses.Loss):
    """Sum over thresholds of the binary cross-entropy of ``[grade ≥ k]`` (CORAL's loss)."""

    def __init__(self, name: str = "ordinal_crossentropy", reduction: str = "sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPSILON, 1.0 - _EPSILON)
        levels = _levels(y_true, y_pred.shape[-1])
        return -ops.sum(levels * ops.log(y_pred) + (1.0 - levels) * ops.log(1.0 - y_pred), axis=-1)


@keras.saving.register_keras_serializable(package="medlens")
class OrdinalAUC(keras.metrics.AUC):
    """ROC AUC over every (image, threshold) pair of ``[grade ≥ k]`` against ``P(grade ≥ k)``."""

    def __init__(self, name: str = "auc", **kwargs: Any):
        kwargs.pop("multi_label", None)
        super().__init__(name=name, multi_label=False, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        levels = _levels(y_true, y_pred.shape[-1])
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            sample_weight = ops.broadcast_to(ops.reshape(weight, (-1, 1)), ops.shape(levels))
        return super().update_state(levels, y_pred, sample_weight=sample_weight)


def grade_probabilities(cumulative: Any) -> np.ndarray:
    """``(N, K-1)`` ``P(grade ≥ k)`` → ``(N, K)`` ``P(grade = k)`` (rows sum to 1)."""
    values = np.asarray(cumulative, dtype=np.float64)
    full = np.concatenate([np.ones((len(values), 1)), values, np.zeros((len(values), 1))], axis=1)
    return np.clip(full[:, :-1] - full[:, 1:], 0.0, 1.0)


def expected_grade(cumulative: Any) -> np.ndarray:
    """``E[grade] = Σ_k P(grade ≥ k)``: one score per image, in ``[0, K-1]``."""
    return np.asarray(cumulative, dtype=np.float64).sum(axis=1)


def decode_grades(cumulative: Any, cuts: Any = None) -> np.ndarray:
    """The predicted grade.

    Without ``cuts``: how many ``P(grade ≥ k)`` reach 0.5 (the loss's own rule). With ``cuts``
    (``K-1`` non-decreasing cut points on :func:`expected_grade`, chosen on validation): how many
    cut points the expected grade reaches. Either rule is monotone in the head's single score.
    """
    if cuts is None:
        return (np.asarray(cumulative) >= 0.5).sum(axis=1).astype(np.int64)
    cuts = np.asarray(cuts, dtype=np.float64)
    values = np.asarray(cumulative)
    if cuts.shape != (values.shape[1],) or not np.all(np.isfinite(cuts)) or np.any(np.diff(cuts) < 0):
        raise ValueError(f"expected {values.shape[1]} finite non-decreasing grade cut points, got {cuts.tolist()}")
    score = expected_grade(values)
    # A non-finite score reaches no cut (grade 0), as it passes no threshold under the 0.5 rule.
    return np.searchsorted(cuts, np.where(np.isfinite(score), score, -np.inf), side="right").astype(np.int64)
