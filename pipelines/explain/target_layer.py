"""The layer a class activation map explains, and a gradient model that exposes it.

A medlens classifier nests its backbone as one layer (``"backbone"``), so a layer inside it
is not part of the outer model's graph ("Graph disconnected", ``None`` gradients).
:func:`build_gradient_model` re-runs the outer graph on a new input, *inlining* every nested
model on the way to the target layer (same layer objects, so same weights), and exposes the
target activations as an output. :func:`find_target_layer` picks the Grad-CAM convention's
layer: the last 4-D output that is not a pooling, padding, cropping or dropout layer, inside
the last nested model with a 4-D output (the backbone), else in the model itself.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import keras

from medlens.pipelines.errors import ConfigError

__all__ = ["build_gradient_model", "find_target_layer"]

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
    added to the target activations; see :mod:`medlens.pipelines.explain.gradients`.

    Args:
        model: A single-output classifier (output N×K softmax or N×1 sigmoid).
        target_layer: Layer name, or ``None`` for :func:`find_target_layer`'s choice.
        image_shape: ``(H, W, C)`` of the images; default the model's input shape
            (required when the model accepts any size).
        inline_all: Also inline nested models after the target layer, so the scores are the
            output layer's logits even when the target lies outside them (input saliency).
        replace: Called with each layer on the way; a layer it returns is called instead
            (sharing the original's weights: guided backprop's ReLUs, :mod:`medlens.pipelines.explain.guided`).

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
