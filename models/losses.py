"""Segmentation losses as Keras losses, written with ``keras.ops`` only.

Every loss takes ``y_true`` and ``y_pred`` of shape ``(B, H, W, C)``: one sigmoid
channel with a 0/1 mask for binary segmentation, or ``C`` softmax channels with a
one-hot mask. A ``(B, H, W)`` binary mask is accepted as well.

Field of view: pass the FOV mask (or any per-pixel weight) as ``sample_weight``,
through ``model.fit(x, y, sample_weight=fov)`` or a dataset yielding
``(image, mask, fov)``. Shapes ``(B, H, W)``, ``(B, H, W, 1)`` and per-image
``(B,)`` work. The losses here fold the weight into their sums, so pixels of weight
0 do not count at all: per-pixel losses (cross-entropy, focal) are averaged over the
weighted pixels of each image, overlap losses (Dice, Tversky) only count weighted
pixels. Each image gives one loss value; the batch loss is their mean (per the
``reduction``). ``"bce"`` is Keras' own :class:`keras.losses.BinaryCrossentropy`,
whose sample weights multiply per-pixel losses and which divides by the number of
pixels, FOV or not.

Example:
    >>> import numpy as np
    >>> mask = np.zeros((1, 8, 8, 1), "float32"); mask[:, 2:6, 2:6] = 1
    >>> float(DiceLoss()(mask, mask)) < 1e-6
    True
    >>> loss = get_loss("bce_dice")
"""

from __future__ import annotations

import keras
from keras import ops

from medlens.models import names
from medlens.pipelines.errors import ConfigError

__all__ = [
    "LOSSES",
    "BCEDiceLoss",
    "DiceLoss",
    "FocalLoss",
    "SegmentationLoss",
    "TverskyLoss",
    "get_loss",
    "pixel_weights",
]

_EPSILON = 1e-7


def pixel_weights(sample_weight, y_pred):
    """Turn ``None``, ``(B,)``, ``(B, H, W)`` or ``(B, H, W, 1|C)`` weights into a 4-D tensor.

    The result broadcasts against ``y_pred`` ``(B, H, W, C)`` and has its dtype.
    """
    if sample_weight is None:
        return ops.ones_like(y_pred[..., :1])
    weight = ops.cast(ops.convert_to_tensor(sample_weight), y_pred.dtype)
    rank = len(weight.shape)
    if rank == 0:
        return ops.ones_like(y_pred[..., :1]) * weight
    if rank == 1:
        return ops.reshape(weight, (-1, 1, 1, 1))
    if rank == 2 and weight.shape[-1] == 1:
        return ops.reshape(weight, (-1, 1, 1, 1))
    if rank == 3:
        return ops.expand_dims(weight, -1)
    if rank == 4:
        return weight
    raise ValueError(f"sample_weight of shape {tuple(weight.shape)} does not fit predictions {y_pred.shape}")


def _match(y_true, y_pred):
    y_pred = ops.convert_to_tensor(y_pred)
    if not keras.backend.standardize_dtype(y_pred.dtype).startswith("float"):
        y_pred = ops.cast(y_pred, "float32")
    y_true = ops.cast(ops.convert_to_tensor(y_true), y_pred.dtype)
    if len(y_true.shape) == len(y_pred.shape) - 1:
        y_true = ops.expand_dims(y_true, -1)
    if len(y_pred.shape) == 3:
        y_true, y_pred = ops.expand_dims(y_true, -1), ops.expand_dims(y_pred, -1)
    return y_true, y_pred


class SegmentationLoss(keras.losses.Loss):
    """Base class: a loss per image from a per-pixel weight map, then the reduction.

    Subclasses implement :meth:`per_image` ``(y_true, y_pred, weight) -> (B,)``, where
    ``weight`` is ``(B, H, W, 1)`` (or ``(B, H, W, C)``) with 1 inside the FOV.
    """

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_true, y_pred = _match(y_true, y_pred)
        weight = pixel_weights(sample_weight, y_pred)
        losses = self.per_image(y_true, y_pred, weight)
        if self.reduction in (None, "none"):
            return losses
        if self.reduction == "sum":
            return ops.sum(losses)
        return ops.mean(losses)

    def call(self, y_true, y_pred):
        y_true, y_pred = _match(y_true, y_pred)
        return self.per_image(y_true, y_pred, ops.ones_like(y_pred[..., :1]))

    def per_image(self, y_true, y_pred, weight):  # pragma: no cover - abstract
        raise NotImplementedError


def _weighted_mean(values, weight):
    """Mean of per-pixel ``values`` over each image's weighted pixels, ``(B,)``."""
    weight = weight[..., :1]
    total = ops.sum(values * weight, axis=(1, 2, 3))
    # Broadcast first: a per-image weight (B, 1, 1, 1) counts every pixel.
    count = ops.sum(ops.ones_like(values) * weight, axis=(1, 2, 3))
    return total / ops.maximum(count, _EPSILON)


def _cross_entropy(y_true, y_pred, weight):
    """Per-image binary (1 channel) or categorical (C channels) cross-entropy."""
    y_pred = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
    if y_pred.shape[-1] == 1:
        pixel = -(y_true * ops.log(y_pred) + (1.0 - y_true) * ops.log(1.0 - y_pred))
    else:
        pixel = -ops.sum(y_true * ops.log(y_pred), axis=-1, keepdims=True)
    return _weighted_mean(pixel, weight)


def _confusion_sums(y_true, y_pred, weight):
    """Soft TP, FP, FN per image and channel, ``(B, C)`` each."""
    axes = (1, 2)
    tp = ops.sum(weight * y_true * y_pred, axis=axes)
    fp = ops.sum(weight * (1.0 - y_true) * y_pred, axis=axes)
    fn = ops.sum(weight * y_true * (1.0 - y_pred), axis=axes)
    return tp, fp, fn


def _dice(y_true, y_pred, weight, smooth):
    tp, fp, fn = _confusion_sums(y_true, y_pred, weight)
    return ops.mean((2.0 * tp + smooth) / (2.0 * tp + fp + fn + smooth), axis=-1)


def _base_config(loss: keras.losses.Loss) -> dict:
    return {"name": loss.name, "reduction": loss.reduction}


@keras.saving.register_keras_serializable(package="medlens")
class DiceLoss(SegmentationLoss):
    """Soft Dice loss ``1 - (2·TP + s) / (2·TP + FP + FN + s)`` per image, mean over channels.

    TP, FP, FN are soft sums of probabilities over the (FOV-weighted) pixels; with
    several softmax channels the Dice of every channel (background included) is averaged.

    Args:
        smooth: Added to numerator and denominator; keeps empty masks finite.
        name: Loss name.
        reduction: Keras reduction over images.

    Example:
        >>> import numpy as np
        >>> y = np.eye(2, dtype="float32")[None, :, :, None]
        >>> round(float(DiceLoss(smooth=0.0)(y, 1.0 - y)), 3)
        1.0
    """

    def __init__(self, smooth: float = 1.0, name: str = "dice_loss", reduction: str = "sum_over_batch_size"):
        super().__init__(name=name, reduction=reduction)
        self.smooth = float(smooth)

    def per_image(self, y_true, y_pred, weight):
        return 1.0 - _dice(y_true, y_pred, weight, self.smooth)

    def get_config(self) -> dict:
        return {**_base_config(self), "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="medlens")
class BCEDiceLoss(SegmentationLoss):
    """``bce_weight · cross-entropy + (1 - bce_weight) · Dice loss``.

    Cross-entropy is binary for one sigmoid channel, categorical for softmax channels.

    Args:
        bce_weight: Share of the cross-entropy term, in ``[0, 1]``.
        smooth: Dice smoothing.
        name: Loss name.
        reduction: Keras reduction over images.

    Example:
        >>> loss = BCEDiceLoss(bce_weight=0.3)
    """

    def __init__(
        self,
        bce_weight: float = 0.5,
        smooth: float = 1.0,
        name: str = "bce_dice_loss",
        reduction: str = "sum_over_batch_size",
    ):
        if not 0.0 <= bce_weight <= 1.0:
            raise ValueError(f"bce_weight must be in [0, 1], got {bce_weight}")
        super().__init__(name=name, reduction=reduction)
        self.bce_weight = float(bce_weight)
        self.smooth = float(smooth)

    def per_image(self, y_true, y_pred, weight):
        dice = 1.0 - _dice(y_true, y_pred, weight, self.smooth)
        return self.bce_weight * _cross_entropy(y_true, y_pred, weight) + (1.0 - self.bce_weight) * dice

    def get_config(self) -> dict:
        return {**_base_config(self), "bce_weight": self.bce_weight, "smooth": self.smooth}


@keras.saving.register_keras_serializable(package="medlens")
class FocalLoss(SegmentationLoss):
    """Focal loss (Lin et al. 2017): ``-α_t (1 - p_t)^γ log p_t`` averaged over pixels.

    Binary (one sigmoid channel): ``α_t = α`` on foreground, ``1 - α`` on background.
    Softmax channels: ``p_t`` is the probability of the true class, weighted by ``α``.

    Args:
        gamma: Focusing exponent; 0 gives (α-weighted) cross-entropy.
        alpha: Foreground weight.
        name: Loss name.
        reduction: Keras reduction over images.

    Example:
        >>> loss = FocalLoss(gamma=2.0, alpha=0.25)
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float = 0.25,
        name: str = "focal_loss",
        reduction: str = "sum_over_batch_size",
    ):
        super().__init__(name=name, reduction=reduction)
        self.gamma = float(gamma)
        self.alpha = float(alpha)

    def per_image(self, y_true, y_pred, weight):
        y_pred = ops.clip(y_pred, _EPSILON, 1.0 - _EPSILON)
        if y_pred.shape[-1] == 1:
            p_t = y_true * y_pred + (1.0 - y_true) * (1.0 - y_pred)
            alpha_t = y_true * self.alpha + (1.0 - y_true) * (1.0 - self.alpha)
        else:
            p_t = ops.sum(y_true * y_pred, axis=-1, keepdims=True)
            alpha_t = self.alpha
        pixel = -alpha_t * ops.power(1.0 - p_t, self.gamma) * ops.log(p_t)
        return _weighted_mean(pixel, weight)

    def get_config(self) -> dict:
        return {**_base_config(self), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="medlens")
class TverskyLoss(SegmentationLoss):
    """Tversky loss (Salehi et al. 2017): ``1 - TI`` with FP weighted ``α`` and FN ``β``.

    ``TI = (2·TP + s) / (2·TP + 2α·FP + 2β·FN + s)``: the usual Tversky index with the
    smoothing written so that ``α = β = 0.5`` gives exactly :class:`DiceLoss` with the
    same ``smooth``. ``β > α`` penalises missed foreground more (thin structures).

    Args:
        alpha: Weight of false positives.
        beta: Weight of false negatives.
        smooth: Added to numerator and denominator.
        name: Loss name.
        reduction: Keras reduction over images.

    Example:
        >>> loss = TverskyLoss(alpha=0.3, beta=0.7)
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
        name: str = "tversky_loss",
        reduction: str = "sum_over_batch_size",
    ):
        super().__init__(name=name, reduction=reduction)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.smooth = float(smooth)

    def per_image(self, y_true, y_pred, weight):
        tp, fp, fn = _confusion_sums(y_true, y_pred, weight)
        index = (2.0 * tp + self.smooth) / (
            2.0 * tp + 2.0 * self.alpha * fp + 2.0 * self.beta * fn + self.smooth
        )
        return 1.0 - ops.mean(index, axis=-1)

    def get_config(self) -> dict:
        return {**_base_config(self), "alpha": self.alpha, "beta": self.beta, "smooth": self.smooth}


LOSSES = names.LOSSES


def get_loss(name: str) -> keras.losses.Loss:
    """A fresh segmentation loss with default settings, by name.

    Args:
        name: One of ``bce``, ``dice``, ``bce_dice``, ``focal``, ``tversky``.

    Returns:
        A Keras loss (``bce`` is :class:`keras.losses.BinaryCrossentropy`).

    Raises:
        ConfigError: Unknown name.

    Example:
        >>> get_loss("tversky").beta
        0.7
    """
    key = str(name).lower().replace("-", "_").replace("+", "_")
    if key == "bce":
        return keras.losses.BinaryCrossentropy(name="bce")
    if key == "dice":
        return DiceLoss()
    if key == "bce_dice":
        return BCEDiceLoss()
    if key == "focal":
        return FocalLoss()
    if key == "tversky":
        return TverskyLoss()
    raise ConfigError(f"unknown segmentation loss {name!r}; choose one of {', '.join(LOSSES)}")
