"""Multi-label findings: a loss and a training metric that skip missing labels (``keras.ops`` only).

A multi-label target is ``(B, F)``: per finding 1 (present), 0 (absent) or ``-1``
(missing or uncertain and left out, as the data layer encodes them). The model
ends in ``F`` independent sigmoids (:func:`medlens.models.classifier.build_classifier`
with ``head="multilabel"``).

* :class:`MaskedBinaryCrossentropy`: binary cross-entropy per finding, with a
  per-finding weight on the positive term (``n_negative / n_positive`` of the
  training split is the usual choice: rare findings count as much as common
  ones), averaged over the labelled entries of each image; missing entries add
  nothing to the loss and nothing to its gradient.
* :class:`MaskedAUC`: Keras's AUC over all labelled (image, finding) pairs
  (micro average), for progress and early stopping; the evaluation computes the
  exact per-finding AUCs in NumPy.

Example:
    >>> import numpy as np
    >>> loss = MaskedBinaryCrossentropy()
    >>> truth = np.array([[1.0, -1.0]], "float32")
    >>> a = float(loss(truth, np.array([[0.9, 0.01]], "float32")))
    >>> b = float(loss(truth, np.array([[0.9, 0.99]], "float32")))  # the missing label is ignored
    >>> round(a, 4) == round(b, 4) == round(float(-np.log(0.9)), 4)
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
from keras import ops

__all__ = ["MISSING", "MaskedBinaryCrossentropy", "MaskedAUC", "positive_weights"]

#: The target value of a missing (or ignored uncertain) label.
MISSING = -1.0
_EPSILON = 1e-7


def positive_weights(labels: Any) -> list[float]:
    """Per-finding ``n_negative / n_positive`` over labelled entries (NaN or -1 = missing).

    A finding with no positives (or no negatives) gets 1.0: there is nothing to balance.

    Example:
        >>> positive_weights([[1, 0], [0, 0], [0, float("nan")], [0, 1]])
        [3.0, 2.0]
    """
    import numpy as np

    values = np.asarray(labels, dtype=np.float64)
    labelled = np.isfinite(values) & (values >= 0)
    positives = (labelled & (values >= 0.5)).sum(axis=0)
    negatives = (labelled & (values < 0.5)).sum(axis=0)
    return [float(n / p) if p and n else 1.0 for p, n in zip(positives, negatives, strict=True)]


@keras.saving.register_keras_serializable(package="medlens")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy per finding on sigmoid outputs; targets ``< 0`` are missing.

    Args:
        pos_weight: one weight per finding on its positive term (default 1 each).
        name: loss name.
        reduction: Keras reduction over the batch of per-image losses.
    """

    def __init__(self, pos_weight: Sequence[float] | None = None, name: str = "masked_bce",
                 reduction: str = "sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.pos_weight = None if pos_weight is None else [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        y_pred = ops.clip(ops.cast(y_pred, "float32"), _EPSILON, 1.0 - _EPSILON)
        labelled = ops.cast(y_true >= 0.0, "float32")
        target = ops.maximum(y_true, 0.0)
        weight = 1.0 if self.pos_weight is None else ops.convert_to_tensor(self.pos_weight, "float32")
        terms = -(weight * target * ops.log(y_pred) + (1.0 - target) * ops.log(1.0 - y_pred))
        return ops.sum(terms * labelled, axis=-1) / ops.maximum(ops.sum(labelled, axis=-1), 1.0)

    def get_config(self) -> dict:
        return {"name": self.name, "reduction": self.reduction, "pos_weight": self.pos_weight}


@keras.saving.register_keras_serializable(package="medlens")
class MaskedAUC(keras.metrics.AUC):
    """ROC AUC over every labelled (image, finding) pair; targets ``< 0`` are left out."""

    def __init__(self, name: str = "auc", **kwargs):
        kwargs.pop("multi_label", None)
        super().__init__(name=name, multi_label=False, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = ops.cast(y_true, "float32")
        labelled = ops.cast(y_true >= 0.0, "float32")
        if sample_weight is not None:
            weight = ops.cast(sample_weight, "float32")
            labelled = labelled * (ops.expand_dims(weight, -1) if len(weight.shape) == 1 else weight)
        return super().update_state(ops.maximum(y_true, 0.0), y_pred, sample_weight=labelled)
