"""Class-score gradients with respect to a layer's activations, per Keras backend.

This is the only backend-specific module of the explanation code: everything
else (:mod:`medlens.pipelines.explain.gradcam`, :mod:`medlens.pipelines.explain.gradcam_plus_plus`)
works on the numpy arrays returned here. The backend library (TensorFlow, JAX or
PyTorch) is imported lazily inside its branch.

The *gradient model* contract (built by
:func:`medlens.pipelines.explain.gradcam.build_gradient_model`):

* inputs ``[images, delta]``: ``images`` N×H×W×C model-ready pixels and
  ``delta`` a zero tensor of the target activations' shape N×h×w×c that the
  model adds to the target activations. The gradient of the score with respect
  to ``delta`` *is* the gradient with respect to the activations, on every
  backend (JAX cannot differentiate with respect to an intermediate tensor,
  and on TensorFlow this needs no trainable variable to be watched, so frozen
  models work too);
* outputs ``[activations, scores, output]``: the target activations, N×K
  class scores (pre-softmax/pre-sigmoid logits where the model allows it) and the
  model's own output. A two-output model ``[activations, output]`` is accepted
  too; its scores are then the output probabilities.

Scores: the score of class ``c`` for image ``i`` is ``scores[i, c]``. A single-unit
output (binary sigmoid) is expanded to two classes: ``[-z, z]`` for a logit ``z``
and ``[1 - p, p]`` for a probability ``p``. A class index of ``-1`` means the
predicted class, ``argmax`` of the output probabilities (as in
:func:`medlens.pipelines.evaluation.probabilities.to_probabilities`), resolved inside the
compiled step so one pass serves both prediction and explanation.

Compiled steps are cached per gradient model (weakly, so they go with it):
``tf.function`` on TensorFlow, ``jax.jit`` on JAX; PyTorch runs eagerly.

Example:
    >>> import numpy as np
    >>> from medlens.models.classifier import build_classifier
    >>> from medlens.pipelines.explain.gradcam import build_gradient_model
    >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
    >>> grad_model = build_gradient_model(model, "block4_relu")
    >>> images = np.zeros((2, 32, 32, 3), np.float32)
    >>> acts, grads, output = class_score_gradients(grad_model, images, [1, -1])
    >>> acts.shape, grads.shape, output.shape
    ((2, 4, 4, 128), (2, 4, 4, 128), (2, 1))
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

__all__ = ["class_score_gradients", "region_score_gradients", "region_targets", "PREDICTED"]

logger = logging.getLogger(__name__)

#: Class index meaning "the class the model predicts for this image".
PREDICTED = -1

# One compiled step per gradient model and backend; weak keys, and the steps hold
# the model only through a weak reference, so nothing outlives the model.
_STEPS: weakref.WeakKeyDictionary[keras.Model, tuple[str, Callable[..., Any]]] = weakref.WeakKeyDictionary()


def _expand_binary(values: Any, logits: bool) -> Any:
    """N×1 → N×2: ``[-z, z]`` for logits, ``[1 - p, p]`` for probabilities."""
    if values.shape[-1] != 1:
        return values
    other = -values if logits else 1.0 - values
    return keras.ops.concatenate([other, values], axis=-1)


def _split_outputs(outputs: Sequence[Any]) -> tuple[Any, Any, Any]:
    """``(activations, N×K scores, output)`` from the gradient model's outputs."""
    activations, *rest = outputs
    output = rest[-1]
    if len(output.shape) == 1:
        output = keras.ops.expand_dims(output, -1)
    if len(rest) == 1:  # [activations, output]: probability scores
        scores = _expand_binary(keras.ops.cast(output, "float32"), logits=False)
    else:  # scores already N×K (the model builder expands binary logits)
        scores = keras.ops.cast(rest[0], "float32")
    return activations, scores, output


def _selected_score(scores: Any, output: Any, class_indices: Any) -> Any:
    """Sum over the batch of ``scores[i, class_i]``; ``-1`` picks the predicted class.

    ``class_indices`` of the same rank as ``scores`` are per-score weights instead (a
    region of a segmentation output, Seg-Grad-CAM): the score is ``sum(scores · weights)``.
    """
    if len(class_indices.shape) == len(scores.shape) and len(scores.shape) > 1:
        return keras.ops.sum(scores * keras.ops.cast(class_indices, scores.dtype))
    probabilities = _expand_binary(keras.ops.cast(output, "float32"), logits=False)
    predicted = keras.ops.cast(keras.ops.argmax(probabilities, axis=-1), "int32")
    class_indices = keras.ops.cast(class_indices, "int32")
    chosen = keras.ops.where(class_indices < 0, predicted, class_indices)
    picked = keras.ops.take_along_axis(scores, keras.ops.expand_dims(chosen, -1), axis=-1)
    # Images are independent (inference mode), so d(sum)/d(delta_i) = d(score_i)/d(delta_i).
    return keras.ops.sum(picked)


def _delta_shape(grad_model: keras.Model) -> tuple[int, ...]:
    shape = tuple(grad_model.inputs[1].shape[1:])
    if any(size is None for size in shape):
        raise ValueError(
            f"gradient model {grad_model.name!r} has activations of unknown shape {shape}; "
            "build it for a fixed image size"
        )
    return shape


def _tensorflow_step(grad_model: keras.Model) -> Callable[..., Any]:
    import tensorflow as tf

    model_ref = weakref.ref(grad_model)
    delta_shape = list(_delta_shape(grad_model))
    delta_dtype = grad_model.inputs[1].dtype

    @tf.function(reduce_retracing=True)
    def step(images: tf.Tensor, class_indices: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        model = model_ref()
        delta = tf.zeros(tf.concat([tf.shape(images)[:1], delta_shape], axis=0), dtype=delta_dtype)
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(delta)
            activations, scores, output = _split_outputs(model([images, delta], training=False))
            score = _selected_score(scores, output, class_indices)
        gradients = tape.gradient(score, delta)
        return activations, gradients, output

    def run(images: np.ndarray, class_indices: np.ndarray) -> tuple[Any, Any, Any]:
        return step(tf.convert_to_tensor(images), tf.convert_to_tensor(class_indices))

    return run


def _jax_step(grad_model: keras.Model) -> Callable[..., Any]:
    import jax
    import jax.numpy as jnp

    model_ref = weakref.ref(grad_model)
    delta_shape = _delta_shape(grad_model)
    delta_dtype = grad_model.inputs[1].dtype

    def score_of_delta(
        delta: jax.Array, trainable: list, non_trainable: list, images: jax.Array, class_indices: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        outputs, _ = model_ref().stateless_call(trainable, non_trainable, [images, delta], training=False)
        activations, scores, output = _split_outputs(outputs)
        return _selected_score(scores, output, class_indices), (activations, output)

    gradient_of_delta = jax.grad(score_of_delta, has_aux=True)

    @jax.jit
    def step(trainable: list, non_trainable: list, images: jax.Array, class_indices: jax.Array) -> tuple:
        delta = jnp.zeros((images.shape[0], *delta_shape), dtype=delta_dtype)
        gradients, (activations, output) = gradient_of_delta(
            delta, trainable, non_trainable, images, class_indices
        )
        return activations, gradients, output

    def run(images: np.ndarray, class_indices: np.ndarray) -> tuple[Any, Any, Any]:
        model = model_ref()
        trainable = [variable.value for variable in model.trainable_variables]
        non_trainable = [variable.value for variable in model.non_trainable_variables]
        return step(trainable, non_trainable, jnp.asarray(images), jnp.asarray(class_indices))

    return run


def _torch_step(grad_model: keras.Model) -> Callable[..., Any]:
    import torch

    model_ref = weakref.ref(grad_model)
    delta_shape = _delta_shape(grad_model)

    def run(images: np.ndarray, class_indices: np.ndarray) -> tuple[Any, Any, Any]:
        model = model_ref()
        pixels = keras.ops.convert_to_tensor(images)
        indices = keras.ops.convert_to_tensor(class_indices)
        delta = torch.zeros(
            (images.shape[0], *delta_shape),
            dtype=getattr(torch, str(model.inputs[1].dtype)),
            device=pixels.device,
            requires_grad=True,
        )
        with torch.enable_grad():
            activations, scores, output = _split_outputs(model([pixels, delta], training=False))
            score = _selected_score(scores, output, indices)
            (gradients,) = torch.autograd.grad(score, delta)
        return activations.detach(), gradients.detach(), output.detach()

    return run


_BACKEND_STEPS = {"tensorflow": _tensorflow_step, "jax": _jax_step, "torch": _torch_step}


def _compiled_step(grad_model: keras.Model) -> Callable[..., Any]:
    backend = keras.backend.backend()
    cached = _STEPS.get(grad_model)
    if cached is not None and cached[0] == backend:
        return cached[1]
    if backend not in _BACKEND_STEPS:
        raise NotImplementedError(f"Grad-CAM gradients are not implemented for the {backend!r} backend")
    if len(grad_model.inputs) != 2 or len(grad_model.outputs) not in (2, 3):
        raise ValueError(
            f"gradient model {grad_model.name!r} must map [images, delta] to "
            "[activations, (scores,) output]; build it with build_gradient_model"
        )
    logger.debug("compiling the %s gradient step of %s", backend, grad_model.name)
    step = _BACKEND_STEPS[backend](grad_model)
    _STEPS[grad_model] = (backend, step)
    return step


def class_score_gradients(
    grad_model: keras.Model,
    images: np.ndarray,
    class_indices: Sequence[int] | np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Target activations, d(class score)/d(activations) and the model output.

    Args:
        grad_model: A gradient model (see the module docstring), e.g. from
            :func:`medlens.pipelines.explain.gradcam.build_gradient_model`.
        images: N×H×W×C model-ready images.
        class_indices: N class indices, one per image; ``-1`` (:data:`PREDICTED`)
            for the predicted class.

    Returns:
        ``(activations, gradients, output)`` as ``float32`` numpy arrays: the
        N×h×w×c target activations, the gradients of each image's class score with
        respect to them (same shape), and the model's output (N×K or N×1
        probabilities; turn it into N×K with
        :func:`medlens.pipelines.evaluation.probabilities.to_probabilities`).

    Raises:
        ValueError: ``class_indices`` does not hold one index per image, or the
            gradient model does not follow the contract.
        NotImplementedError: A Keras backend other than TensorFlow, JAX, PyTorch.

    Example:
        >>> from medlens.models.classifier import build_classifier
        >>> from medlens.pipelines.explain.gradcam import build_gradient_model
        >>> model = build_classifier("small_cnn", 3, (32, 32, 3), weights="none")
        >>> grad_model = build_gradient_model(model)
        >>> _, grads, output = class_score_gradients(grad_model, np.ones((1, 32, 32, 3)), [2])
        >>> output.shape
        (1, 3)
    """
    indices = np.asarray(class_indices, dtype=np.int32).reshape(-1)
    if indices.shape[0] != len(images):
        raise ValueError(f"got {indices.shape[0]} class indices for {len(images)} images")
    return _gradients(grad_model, images, indices)


def region_score_gradients(
    grad_model: keras.Model,
    images: np.ndarray,
    weights: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`class_score_gradients`, for a score summed over a region of a dense output.

    The score of image ``i`` is ``sum(scores[i] · weights[i])``: for a segmentation
    model whose scores are ``N×H×W×K`` (per-pixel class logits), ``weights`` with the
    region in channel ``k`` explains "class ``k`` in this region" (Seg-Grad-CAM,
    Vinogradova et al. 2020).

    Args:
        grad_model: A gradient model whose scores have the shape of ``weights``.
        images: N×H×W×C model-ready images.
        weights: ``float32`` array of the scores' shape.

    Raises:
        ValueError: ``weights`` does not match the batch.
    """
    weights = np.asarray(weights, dtype=np.float32)
    if weights.ndim < 2 or weights.shape[0] != len(images):
        raise ValueError(f"weights must hold one array per image; got shape {weights.shape} for {len(images)} images")
    return _gradients(grad_model, images, weights)


def region_targets(regions: Any, shape: Sequence[int], score_units: int, output_units: int,
                   class_index: int = 0) -> np.ndarray:
    """Weights for :func:`region_score_gradients`: ``regions`` in the explained score channel.

    Args:
        regions: N×H×W (or H×W, for every image) weights, 1 inside the region.
        shape: ``(N, H, W)`` of the batch.
        score_units: Score channels of the gradient model (a one-sigmoid output has 2: ``[-z, z]``).
        output_units: Channels of the model's own output.
        class_index: Output channel explained (0 for one sigmoid channel: its score channel is 1).

    Raises:
        ValueError: ``class_index`` is not an output channel, or ``regions`` is not the batch's size.

    Example:
        >>> region_targets(np.ones((2, 2)), (1, 2, 2), 2, 1).shape
        (1, 2, 2, 2)
    """
    if not 0 <= class_index < max(1, output_units):
        raise ValueError(f"class_index must be in 0..{max(1, output_units) - 1}, got {class_index}")
    count, height, width = (int(v) for v in shape)
    region = np.asarray(regions, np.float32)
    if region.shape[-2:] != (height, width) or region.ndim not in (2, 3):
        raise ValueError(f"regions are {region.shape}, the images {height}×{width}")
    channel = 1 if score_units == 2 and output_units == 1 else class_index
    weights = np.zeros((count, height, width, score_units), np.float32)
    weights[..., channel] = np.broadcast_to(region, (count, height, width))
    return weights


def _gradients(grad_model: keras.Model, images: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, ...]:
    step = _compiled_step(grad_model)
    pixels = np.asarray(images, dtype=grad_model.inputs[0].dtype)
    activations, gradients, output = step(pixels, targets)
    return tuple(  # type: ignore[return-value]
        keras.ops.convert_to_numpy(value).astype(np.float32) for value in (activations, gradients, output)
    )
