"""Segmentation metrics as stateful Keras metrics, written with ``keras.ops`` only.

Each metric accumulates weighted pixel counts TP, FP, TN, FN over all batches
(``update_state``) and reports a ratio of them (``result``), so a metric over an
epoch is the metric of all its pixels together, not a mean of per-batch values.

* Binary (one sigmoid channel): a pixel is positive where ``y_pred >= threshold``
  (0.5) and ``y_true >= 0.5``.
* Softmax channels: the predicted class is the argmax; counts are taken over the
  foreground classes ``1..C-1`` (one-vs-rest, summed: micro average), or only over
  ``class_id`` when given.

``sample_weight`` is the field-of-view mask (``(B, H, W)``, ``(B, H, W, 1)`` or
per-image ``(B,)``): pixels of weight 0 are not counted. Keras hands sample weights
only to ``weighted_metrics``, so compile with
``model.compile(..., weighted_metrics=segmentation_metrics())`` when batches carry a
FOV (metrics in ``metrics=`` count every pixel). A ratio with an empty
denominator is 0. The exact AUC is computed in NumPy by the evaluation code; during
training use :class:`keras.metrics.AUC`.

Example:
    >>> import numpy as np
    >>> metric = DiceScore()
    >>> truth = np.array([[1, 1, 0, 0]], "float32").reshape(1, 2, 2, 1)
    >>> metric.update_state(truth, np.array([[0.9, 0.2, 0.7, 0.1]]).reshape(1, 2, 2, 1))
    >>> round(float(metric.result()), 3)
    0.5
"""

from __future__ import annotations

import keras
from keras import ops

from medlens.models.losses import pixel_weights

__all__ = [
    "ConfusionMetric",
    "DiceScore",
    "IoUScore",
    "PixelAccuracy",
    "Sensitivity",
    "Specificity",
    "segmentation_metrics",
]


class ConfusionMetric(keras.metrics.Metric):
    """Base class: weighted TP/FP/TN/FN pixel counts accumulated over batches.

    Subclasses implement :meth:`result` from ``self.tp``, ``self.fp``, ``self.tn``,
    ``self.fn``.

    Args:
        threshold: Probability at or above which a (binary) pixel is positive.
        class_id: With softmax output, the one class to score (default: all
            foreground classes ``1..C-1`` together).
        name: Metric name.
        dtype: Dtype of the counts.
    """

    def __init__(
        self,
        threshold: float = 0.5,
        class_id: int | None = None,
        name: str | None = None,
        dtype: str | None = None,
    ):
        super().__init__(name=name, dtype=dtype)
        self.threshold = float(threshold)
        self.class_id = class_id
        self.tp = self.add_variable(shape=(), initializer="zeros", name="true_positives")
        self.fp = self.add_variable(shape=(), initializer="zeros", name="false_positives")
        self.tn = self.add_variable(shape=(), initializer="zeros", name="true_negatives")
        self.fn = self.add_variable(shape=(), initializer="zeros", name="false_negatives")

    def _binarise(self, y_true, y_pred):
        """0/1 truth and prediction ``(B, H, W, K)`` for the scored classes."""
        y_pred = ops.cast(ops.convert_to_tensor(y_pred), self.dtype)
        y_true = ops.cast(ops.convert_to_tensor(y_true), self.dtype)
        if len(y_true.shape) == len(y_pred.shape) - 1:
            y_true = ops.expand_dims(y_true, -1)
        if len(y_pred.shape) == 3:
            y_true, y_pred = ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1)
        channels = y_pred.shape[-1]
        if channels == 1:
            return (
                ops.cast(y_true >= 0.5, self.dtype),
                ops.cast(y_pred >= self.threshold, self.dtype),
            )
        predicted = ops.one_hot(ops.argmax(y_pred, axis=-1), channels, dtype=self.dtype)
        truth = ops.one_hot(ops.argmax(y_true, axis=-1), channels, dtype=self.dtype)
        if self.class_id is not None:
            index = int(self.class_id)
            return truth[..., index : index + 1], predicted[..., index : index + 1]
        return truth[..., 1:], predicted[..., 1:]

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add one batch's weighted pixel counts."""
        truth, predicted = self._binarise(y_true, y_pred)
        weight = ops.ones_like(truth) * pixel_weights(sample_weight, truth)
        self.tp.assign_add(ops.sum(weight * truth * predicted))
        self.fp.assign_add(ops.sum(weight * (1.0 - truth) * predicted))
        self.tn.assign_add(ops.sum(weight * (1.0 - truth) * (1.0 - predicted)))
        self.fn.assign_add(ops.sum(weight * truth * (1.0 - predicted)))

    def reset_state(self) -> None:
        for variable in (self.tp, self.fp, self.tn, self.fn):
            variable.assign(ops.zeros((), dtype=variable.dtype))

    def get_config(self) -> dict:
        return {**super().get_config(), "threshold": self.threshold, "class_id": self.class_id}


@keras.saving.register_keras_serializable(package="medlens")
class DiceScore(ConfusionMetric):
    """Dice coefficient = F1 = ``2·TP / (2·TP + FP + FN)``.

    Example:
        >>> metric = DiceScore(name="dice")
    """

    def __init__(self, threshold: float = 0.5, class_id: int | None = None, name: str = "dice", dtype=None):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return ops.divide_no_nan(2.0 * self.tp, 2.0 * self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package="medlens")
class IoUScore(ConfusionMetric):
    """Intersection over union (Jaccard) = ``TP / (TP + FP + FN)``.

    Example:
        >>> metric = IoUScore(name="iou")
    """

    def __init__(self, threshold: float = 0.5, class_id: int | None = None, name: str = "iou", dtype=None):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return ops.divide_no_nan(self.tp, self.tp + self.fp + self.fn)


@keras.saving.register_keras_serializable(package="medlens")
class Sensitivity(ConfusionMetric):
    """Sensitivity (recall, true positive rate) = ``TP / (TP + FN)``.

    Example:
        >>> metric = Sensitivity()
    """

    def __init__(
        self, threshold: float = 0.5, class_id: int | None = None, name: str = "sensitivity", dtype=None
    ):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return ops.divide_no_nan(self.tp, self.tp + self.fn)


@keras.saving.register_keras_serializable(package="medlens")
class Specificity(ConfusionMetric):
    """Specificity (true negative rate) = ``TN / (TN + FP)``.

    Example:
        >>> metric = Specificity()
    """

    def __init__(
        self, threshold: float = 0.5, class_id: int | None = None, name: str = "specificity", dtype=None
    ):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return ops.divide_no_nan(self.tn, self.tn + self.fp)


@keras.saving.register_keras_serializable(package="medlens")
class PixelAccuracy(ConfusionMetric):
    """Pixel accuracy = ``(TP + TN) / (TP + FP + TN + FN)`` over the FOV.

    Example:
        >>> metric = PixelAccuracy()
    """

    def __init__(
        self, threshold: float = 0.5, class_id: int | None = None, name: str = "pixel_accuracy", dtype=None
    ):
        super().__init__(threshold, class_id, name=name, dtype=dtype)

    def result(self):
        return ops.divide_no_nan(self.tp + self.tn, self.tp + self.fp + self.tn + self.fn)


def segmentation_metrics(threshold: float = 0.5) -> list[keras.metrics.Metric]:
    """Fresh Dice, IoU, sensitivity, specificity and pixel-accuracy metrics.

    Args:
        threshold: Probability threshold of binary predictions.

    Returns:
        New metric objects named ``dice``, ``iou``, ``sensitivity``,
        ``specificity``, ``pixel_accuracy``.

    Example:
        >>> [metric.name for metric in segmentation_metrics()]
        ['dice', 'iou', 'sensitivity', 'specificity', 'pixel_accuracy']
    """
    return [
        DiceScore(threshold),
        IoUScore(threshold),
        Sensitivity(threshold),
        Specificity(threshold),
        PixelAccuracy(threshold),
    ]
