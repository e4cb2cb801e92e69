"""Grad-CAM (Selvaraju et al. 2017) for medlens classifiers and plain Keras CNNs.

Construct once with the model, call many times with batches of model-ready
images (``N×H×W×3``, already passed through the backbone's ``preprocess_input``)::

    cam = GradCAM(model)            # target layer found automatically
    result = cam(images)            # each image explained for its predicted class
    result.maps                     # N×H×W float32 in [0, 1]

Why this works where the usual recipe fails on transfer models: a medlens
classifier nests its backbone as one layer (``"backbone"``), so a layer inside it
is not part of the outer model's graph ("Graph disconnected", ``None``
gradients). :func:`build_gradient_model` instead re-runs the outer graph on a
new input, *inlining* every nested model on the way to the target layer (same
layer objects, so same weights), and exposes the target activations as an
output. The target activations get a zero ``delta`` input added, and gradients
are taken with respect to that input (:mod:`medlens.pipelines.gradients`), which
works on TensorFlow, JAX and PyTorch and needs no trainable variables.

Automatic target layer: the last layer with a 4-D output that is not a pooling,
padding, cropping or dropout layer, searched inside the last nested model with a
4-D output (the backbone), else in the model itself. That is the rectified output
of the last convolution, the Grad-CAM convention:

=============  ==================
backbone       target layer
=============  ==================
vgg16          ``block5_conv3``
vgg19          ``block5_conv4``
resnet50       ``conv5_block3_out``
resnet50v2     ``post_relu``
densenet121    ``relu``
small_cnn      ``block4_relu`` (BatchNorm + ReLU after ``block4_conv1``)
=============  ==================

Class scores are the pre-activation logits when the model ends in a
``Dense``/``Activation``/``Softmax`` layer with a softmax or sigmoid (as in the
paper; no saturation when a probability rounds to 1), else the output
probabilities. For one sigmoid unit the class 1 score is the logit ``z`` and the
class 0 score ``-z``.

Maps are normalised per image (``raw / max``), so one image never dims another's
map. An image with no positive evidence for its class gets an all-zero map and
``empty[i] = True``, never NaN.

Example:
    >>> import numpy as np
    >>> from medlens.models.classifier import build_classifier
    >>> model = build_classifier("vgg16", 2, (32, 32, 3), weights="none")
    >>> cam = GradCAM(model)
    >>> cam.layer
    'block5_conv3'
    >>> result = cam(np.random.default_rng(0).uniform(-100, 100, (2, 32, 32, 3)))
    >>> result.maps.shape, result.raw.shape
    ((2, 32, 32), (2, 2, 2))
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import keras
import numpy as np

from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.gradients import PREDICTED, class_score_gradients

__all__ = ["CamResult", "GradCAM", "build_gradient_model", "find_target_layer"]

logger = logging.getLogger(__name__)

# Layers that only resample or perturb a feature map: never the Grad-CAM target.
_NOT_TARGETS: tuple[type, ...] = (
    keras.layers.InputLayer,
    keras.layers.MaxPooling2D,
    keras.layers.AveragePooling2D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping2D,
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
)
_SQUASHING = ("softmax", "sigmoid")


@dataclass
class CamResult:
    """Class activation maps for a batch.

    Attributes:
        maps: N×H×W ``float32`` in ``[0, 1]`` at the model input size, each image
            normalised by its own maximum (bilinear upsampling with OpenCV).
        raw: N×h×w ``float32`` ≥ 0 maps at the target layer's resolution, after
            ReLU and before normalisation (comparable between images of one model).
        class_index: ``(N,)`` the class each image was explained for.
        probabilities: N×K outputs of the model as probabilities (a single sigmoid as ``[1 - p, p]``).
        layer: Name of the target layer.
        empty: ``(N,)`` bool, True where the map is all zero: no positive evidence
            for the class at that layer.
    """

    maps: np.ndarray
    raw: np.ndarray
    class_index: np.ndarray
    probabilities: np.ndarray
    layer: str
    empty: np.ndarray


def _output_rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError, TypeError):  # never called, or several outputs
        return None


def _is_model(layer: Any) -> bool:
    return isinstance(layer, keras.Model)


def _feature_layers(model: keras.Model) -> list[str]:
    """Names of every 4-D output layer in ``model`` and its nested models, in order."""
    names: list[str] = []
    for layer in model.layers:
        if _is_model(layer):
            names += _feature_layers(layer)
        if _output_rank(layer) == 4 and not isinstance(layer, keras.layers.InputLayer):
            names.append(layer.name)
    return names


def _auto_path(model: keras.Model) -> list[Any] | None:
    for layer in reversed(model.layers):
        if _is_model(layer) and _output_rank(layer) == 4:
            inner = _auto_path(layer)
            return [layer, *inner] if inner else [layer]
        if _output_rank(layer) == 4 and not isinstance(layer, _NOT_TARGETS):
            return [layer]
    return None


def _named_path(model: keras.Model, name: str) -> list[Any] | None:
    for layer in model.layers:
        if layer.name == name:
            return [layer]
    for layer in model.layers:
        if _is_model(layer):
            inner = _named_path(layer, name)
            if inner:
                return [layer, *inner]
    return None


def find_target_layer(model: keras.Model, target_layer: str | None = None) -> list[keras.Layer]:
    """Locate the Grad-CAM target layer, looking inside nested models.

    Args:
        model: A classifier (a medlens one with a nested ``"backbone"``, or a plain
            Sequential/Functional CNN).
        target_layer: A layer name in the model or in a nested model; ``None``
            for the automatic choice (see the module docstring).

    Returns:
        The path to the layer: the nested models that contain it, outermost
        first, then the layer itself (just ``[layer]`` at the top level).

    Raises:
        ConfigError: No such layer (the message lists candidates), its output is
            not a 4-D feature map, or the model has no 4-D layer at all.

    Example:
        >>> from medlens.models.classifier import build_classifier
        >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
        >>> [layer.name for layer in find_target_layer(model)]
        ['backbone', 'block4_relu']
    """
    candidates = _feature_layers(model)
    if target_layer is None:
        path = _auto_path(model)
        if path is None:
            raise ConfigError(f"model {model.name!r} has no layer with a 4-D (N×h×w×c) output for Grad-CAM")
        return path
    path = _named_path(model, target_layer)
    if path is None:
        close = difflib.get_close_matches(target_layer, candidates, n=3, cutoff=0.5)
        suggestions = list(dict.fromkeys(close + candidates[-3:]))
        raise ConfigError(
            f"model {model.name!r} has no layer named {target_layer!r}; "
            f"candidates: {', '.join(suggestions) or 'none'}"
        )
    layer = path[-1]
    rank = _output_rank(layer)
    if rank != 4:
        raise ConfigError(
            f"Grad-CAM target layer {target_layer!r} must output a 4-D feature map (N×h×w×c), "
            f"its output has rank {rank}; try one of: {', '.join(candidates[-3:])}"
        )
    return path


class _ClassScores(keras.layers.Layer):
    """N×K class scores: logits of the output layer, or the output probabilities.

    With ``dense`` set, computes ``x @ kernel + bias`` of that (shared) ``Dense``
    layer, its output before the softmax/sigmoid. A single unit is expanded to two
    classes: ``[-z, z]`` (logits) or ``[1 - p, p]`` (probabilities).
    """

    def __init__(self, dense: keras.layers.Layer | None = None, logits: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        # The Dense layer is shared with the model, not copied: Keras deduplicates its
        # variables, so the gradient model (and JAX's stateless_call) holds them once.
        self._dense = [dense] if dense is not None else []
        self._logits = logits

    def call(self, inputs: Any) -> Any:
        values = keras.ops.cast(inputs, "float32")
        if self._dense:
            dense = self._dense[0]
            kernel = dense.kernel
            if len(kernel.shape) == 4:  # a 1×1 Conv2D (a segmentation head): per-pixel logits
                kernel = kernel[0, 0]
            values = keras.ops.matmul(values, keras.ops.cast(kernel, "float32"))
            if dense.use_bias:
                values = values + keras.ops.cast(dense.bias, "float32")
        if values.shape[-1] == 1:
            other = -values if self._logits else 1.0 - values
            values = keras.ops.concatenate([other, values], axis=-1)
        return values

    def compute_output_shape(self, input_shape: tuple) -> tuple:
        units = (getattr(self._dense[0], "units", None) or self._dense[0].filters) if self._dense else input_shape[-1]
        return (*input_shape[:-1], 2 if units == 1 else units)


def _activation_name(layer: Any) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def build_gradient_model(
    model: keras.Model,
    target_layer: str | None = None,
    image_shape: Sequence[int] | None = None,
    *,
    inline_all: bool = False,
    replace: Callable[[Any], Any] | None = None,
) -> keras.Model:
    """A model ``[images, delta] → [activations, class scores, output]`` for Grad-CAM.

    The outer graph is re-run on a new input; nested models on the way to the
    target layer are inlined (their layers are reused, so weights are shared and
    later training shows through). ``delta`` (zeros, the activations' shape) is
    added to the target activations; see :mod:`medlens.pipelines.gradients`.

    Args:
        model: A single-output classifier (output N×K softmax or N×1 sigmoid).
        target_layer: Layer name, or ``None`` for :func:`find_target_layer`'s choice.
        image_shape: ``(H, W, C)`` of the images; default the model's input shape
            (required when the model accepts any size).
        inline_all: Also inline nested models after the target layer, so the scores are the
            output layer's logits even when the target lies outside them (input saliency).
        replace: Called with each layer on the way; a layer it returns is called instead
            (sharing the original's weights: guided backprop's ReLUs, :mod:`medlens.pipelines.guided`).

    Returns:
        The gradient model; its first output layer name is ``target_layer``'s.

    Raises:
        ConfigError: Bad target layer, several inputs/outputs, or an unknown
            image size.

    Example:
        >>> from medlens.models.classifier import build_classifier
        >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
        >>> [tuple(t.shape) for t in build_gradient_model(model).outputs]
        [(None, 4, 4, 128), (None, 2), (None, 1)]
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ConfigError(
            f"Grad-CAM needs a model with one input and one output; {model.name!r} has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs"
        )
    path = find_target_layer(model, target_layer)
    shape = tuple(image_shape) if image_shape is not None else tuple(model.inputs[0].shape[1:])
    if len(shape) != 3 or any(size is None for size in shape):
        raise ConfigError(f"Grad-CAM needs a fixed image shape (H, W, C); got {shape} for {model.name!r}")

    target, containers = path[-1], {id(layer) for layer in path[:-1]}
    if inline_all:
        containers |= {id(layer) for layer in _nested_models(model)}
    images = keras.Input(shape=shape, dtype=model.inputs[0].dtype, name="images")
    found: dict[str, Any] = {}

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is target:
            activations = layer(*args, **kwargs)
            delta = keras.Input(shape=tuple(activations.shape[1:]), dtype=activations.dtype, name="delta")
            found.update(activations=activations, delta=delta)
            return keras.layers.Add(name="gradcam_delta")([activations, delta])
        if id(layer) in containers:
            return run(layer, args[0])
        stand_in = replace(layer) if replace is not None else None
        outputs = (stand_in or layer)(*args, **kwargs)
        found["last"] = (layer, args, outputs)
        return outputs

    def run(graph: keras.Model, inputs: Any) -> Any:
        if isinstance(graph, keras.Sequential):
            for layer in graph.layers:
                inputs = call(layer, inputs)
            return inputs
        # Keras' own graph walk (the one clone_model uses), with our call hook.
        outputs = graph._run_through_graph([inputs], operation_fn=lambda op: op, call_fn=call)
        return outputs[0] if isinstance(outputs, (list, tuple)) else outputs

    output = run(model, images)
    last_layer, last_args, last_output = found["last"]
    squashing = _activation_name(last_layer) if last_output is output else None
    one_by_one = isinstance(last_layer, keras.layers.Conv2D) and tuple(last_layer.kernel_size) == (1, 1)
    if squashing in _SQUASHING and (isinstance(last_layer, keras.layers.Dense) or one_by_one):
        scores = _ClassScores(last_layer, name="class_scores")(last_args[0])
    elif squashing in _SQUASHING and isinstance(last_layer, (keras.layers.Activation, keras.layers.Softmax)):
        scores = _ClassScores(name="class_scores")(last_args[0])
    else:
        logger.debug("%s: no logits found, Grad-CAM scores are output probabilities", model.name)
        scores = _ClassScores(logits=False, name="class_scores")(output)
    return keras.Model(
        [images, found["delta"]],
        [found["activations"], scores, output],
        name=f"{model.name}_gradcam_{target.name}",
    )


def _nested_models(model: keras.Model) -> list[keras.Model]:
    found = []
    for layer in getattr(model, "layers", []):
        if _is_model(layer):
            found += [layer, *_nested_models(layer)]
    return found


def _upsample_and_normalise(raw: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-image ``raw / max`` at ``size`` (H, W), bilinear; all-zero maps stay zero."""
    height, width = size
    maps = np.zeros((raw.shape[0], height, width), np.float32)
    empty = np.zeros(raw.shape[0], bool)
    for i, cam in enumerate(raw):
        resized = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
        peak = float(resized.max())
        if not np.isfinite(peak) or peak <= 0.0:
            empty[i] = True
            continue
        maps[i] = np.clip(resized / peak, 0.0, 1.0)
    return maps, empty


class GradCAM:
    """Grad-CAM explainer: construct once with a model, call with batches.

    Args:
        model: A medlens classifier (backbone nested as ``"backbone"``) or a plain
            Sequential/Functional CNN with one input and a softmax (N×K) or
            sigmoid (N×1) output.
        target_layer: Layer name in the model or inside a nested model; ``None``
            picks the last convolutional feature map (see the module docstring).
        batch_size: Images per compiled gradient step; larger batches are split.

    Attributes:
        layer: Name of the target layer.

    Raises:
        ConfigError: Unknown target layer (the message lists candidates), a layer
            whose output is not 4-D, or an unusable model.

    Example:
        >>> import numpy as np
        >>> from medlens.models.classifier import build_classifier
        >>> model = build_classifier("small_cnn", 3, (32, 32, 3), weights="none")
        >>> cam = GradCAM(model)
        >>> result = cam(np.ones((4, 32, 32, 3), np.float32), class_index=[0, 1, 2, 0])
        >>> result.maps.shape, result.class_index.tolist(), cam.layer
        ((4, 32, 32), [0, 1, 2, 0], 'block4_relu')
    """

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, batch_size: int = 32):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model
        self.batch_size = batch_size
        self.layer: str = find_target_layer(model, target_layer)[-1].name
        self._gradient_models: dict[tuple[int, ...], keras.Model] = {}
        input_shape = tuple(model.inputs[0].shape[1:])
        if all(size is not None for size in input_shape):
            self.gradient_model(input_shape)  # fail early on an unusable model

    def gradient_model(self, image_shape: Sequence[int] | None = None) -> keras.Model:
        """The (cached) gradient model for images of ``image_shape`` (default: the model's)."""
        image_shape = tuple(image_shape or self.model.inputs[0].shape[1:])
        if image_shape not in self._gradient_models:
            self._gradient_models[image_shape] = build_gradient_model(self.model, self.layer, image_shape)
        return self._gradient_models[image_shape]

    def _channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """N×c channel weights: the spatial mean of the gradients (Grad-CAM)."""
        return gradients.mean(axis=(1, 2))

    def _cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """N×h×w map before the ReLU: the activations summed with the channel weights."""
        return np.einsum("nhwc,nc->nhw", activations, self._channel_weights(activations, gradients))

    def _check_images(self, images: Any) -> np.ndarray:
        pixels = np.asarray(images, dtype=np.float32)
        expected = tuple(self.model.inputs[0].shape[1:])
        if pixels.ndim != 4:
            raise ValueError(
                f"images must be a batch N×H×W×C, got an array of shape {pixels.shape} "
                "(add a batch axis for one image: images[None])"
            )
        if pixels.shape[0] == 0:
            raise ValueError("images is an empty batch")
        for got, want in zip(pixels.shape[1:], expected, strict=True):
            if want is not None and got != want:
                raise ValueError(f"images have shape {pixels.shape[1:]}, the model expects {expected}")
        return pixels

    def _class_indices(self, class_index: int | Sequence[int] | np.ndarray | None, count: int) -> np.ndarray:
        if class_index is None:
            return np.full(count, PREDICTED, np.int32)
        indices = np.asarray(class_index)
        if indices.ndim == 0:
            indices = np.full(count, int(indices))
        if indices.shape != (count,) or not np.issubdtype(indices.dtype, np.integer):
            raise ValueError(f"class_index must be None, an int or {count} ints; got {class_index!r}")
        units = self.model.outputs[0].shape[-1]
        num_classes = 2 if units in (1, None) else units
        if indices.min() < 0 or indices.max() >= num_classes:
            raise ValueError(f"class_index must be in 0..{num_classes - 1}; got {indices.tolist()}")
        return indices.astype(np.int32)

    def __call__(
        self, images: np.ndarray, class_index: int | Sequence[int] | np.ndarray | None = None
    ) -> CamResult:
        """Explain a batch, each image for its own class.

        Args:
            images: N×H×W×C model-ready images (preprocessed for the backbone).
            class_index: ``None`` for each image's predicted class (argmax of the
                probabilities), one int for all images, or one int per image.

        Returns:
            A :class:`CamResult`.

        Raises:
            ValueError: ``images`` is not a 4-D batch of the model's size, or a
                class index is out of range.
        """
        pixels = self._check_images(images)
        indices = self._class_indices(class_index, pixels.shape[0])
        grad_model = self.gradient_model(tuple(pixels.shape[1:]))
        raw_parts, output_parts = [], []
        for start in range(0, pixels.shape[0], self.batch_size):
            chunk = slice(start, start + self.batch_size)
            activations, gradients, output = class_score_gradients(grad_model, pixels[chunk], indices[chunk])
            cam = self._cam(activations, gradients)
            raw_parts.append(np.maximum(cam, 0.0).astype(np.float32))
            output_parts.append(output)
        raw = np.concatenate(raw_parts)
        outputs = np.concatenate(output_parts)
        # One sigmoid unit becomes [1 - p, p]; K outputs (softmax, or one sigmoid per finding) stay as they are.
        probabilities = (to_probabilities(outputs) if outputs.ndim == 1 or outputs.shape[-1] == 1
                         else np.asarray(outputs, np.float64))
        if class_index is None:
            indices = probabilities.argmax(axis=1).astype(np.int32)
        maps, empty = _upsample_and_normalise(raw, pixels.shape[1:3])
        if empty.any():
            logger.info(
                "%s: %d of %d maps are empty (no positive evidence at %s)",
                type(self).__name__,
                int(empty.sum()),
                len(empty),
                self.layer,
            )
        return CamResult(maps, raw, indices, probabilities, self.layer, empty)
