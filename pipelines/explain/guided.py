"""Guided backpropagation (Springenberg et al. 2015): the input gradient through "guided" ReLUs.

Every ReLU on the way back passes only positive gradient where its input was positive
(``upstream · [x > 0] · [upstream > 0]``), so the map keeps the fine edges that *increase* the
score. It looks sharp, and that is the warning: Adebayo et al. 2018 ("Sanity checks for
saliency maps") showed its maps barely change when the model's weights are randomised — they
largely reconstruct the image. medlens offers it so that the sanity check can test that on your
model (``medlens sanity RUN --methods guided,…``). On the demo CNN it keeps a Spearman rank
correlation of 0.43 with its trained maps after every weight is re-drawn — below the 0.5 cut,
so it passes there, but more than Grad-CAM's 0.08 (``benchmarks/results/explain.md``).

How: the gradient model is the vanilla gradient's (:class:`~medlens.pipelines.explain.saliency.VanillaGradient`)
with every ReLU — a ``ReLU``/``Activation("relu")`` layer, or a ``Conv2D``/``Dense`` with
``activation="relu"`` (VGG16's convolutions) — replaced on the way by a stand-in that shares its
weights and applies :func:`guided_relu`, whose gradient is defined with ``keras.ops.custom_gradient``
(TensorFlow, JAX and PyTorch). The model itself is untouched.

Example:
    >>> import numpy as np
    >>> from medlens.models.classifier import build_classifier
    >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
    >>> GuidedBackprop(model)(np.random.rand(2, 32, 32, 3).astype("float32"), class_index=1).maps.shape
    (2, 32, 32)
"""

from __future__ import annotations

from typing import Any

import keras

from medlens.pipelines.explain.gradcam import build_gradient_model
from medlens.pipelines.explain.saliency import _INPUT_LAYER, VanillaGradient

__all__ = ["GuidedBackprop", "guided_relu", "guided_stand_in"]


@keras.ops.custom_gradient
def guided_relu(x: Any) -> Any:
    """``relu(x)``, with the guided gradient ``upstream · [x > 0] · [upstream > 0]``."""
    y = keras.ops.relu(x)

    def grad(*args: Any, upstream: Any = None) -> Any:
        if upstream is None:  # TensorFlow and JAX pass it positionally, PyTorch by name
            (upstream,) = args
        forward = keras.ops.cast(x > 0, upstream.dtype)
        return upstream * forward * keras.ops.cast(upstream > 0, upstream.dtype)

    return y, grad


class _Guided(keras.layers.Layer):
    """A ReLU layer, or a Conv2D/Dense with a ReLU, computed with the original's weights and :func:`guided_relu`."""

    def __init__(self, inner: keras.layers.Layer | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._inner = [inner] if inner is not None else []  # shared, not copied (as _ClassScores' Dense)

    def call(self, inputs: Any) -> Any:
        values = inputs
        if self._inner:
            layer = self._inner[0]
            if isinstance(layer, keras.layers.Dense):
                values = keras.ops.matmul(values, layer.kernel)
            else:
                values = layer.convolution_op(values, layer.kernel)
            if layer.use_bias:
                values = values + layer.bias
        return guided_relu(values)

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        return self._inner[0].compute_output_shape(input_shape) if self._inner else input_shape


def _is_relu(layer: Any) -> bool:
    if isinstance(layer, keras.layers.ReLU):
        return layer.max_value is None and not layer.negative_slope and not layer.threshold
    return getattr(getattr(layer, "activation", None), "__name__", None) == "relu"


def guided_stand_in(layer: Any) -> keras.layers.Layer | None:
    """The guided stand-in for ``layer``, or None when it has no ReLU (for ``build_gradient_model(replace=)``)."""
    if not _is_relu(layer):
        return None
    if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
        return _Guided(name=f"{layer.name}_guided")
    if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
        return _Guided(layer, name=f"{layer.name}_guided")
    return None  # another layer with a ReLU inside (left as it is)


class GuidedBackprop(VanillaGradient):
    """Guided backpropagation: ``|guided ∂ class score / ∂ input|``, maximum over channels.

    Arguments, call (classes, or ``regions`` of a segmentation output) and result as
    :class:`~medlens.pipelines.explain.saliency.VanillaGradient`.
    """

    name = "guided"

    def _gradient_model(self, shape: tuple[int, ...]) -> keras.Model:
        if shape not in self._gradient_models:
            wrapper = keras.Sequential([keras.Input(shape), keras.layers.Identity(name=_INPUT_LAYER), self.model],
                                       name=f"{self.model.name}_guided")
            self._gradient_models[shape] = build_gradient_model(wrapper, _INPUT_LAYER, shape, inline_all=True,
                                                                replace=guided_stand_in)
        return self._gradient_models[shape]
