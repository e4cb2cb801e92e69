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
are taken with respect to that input (:mod:`medlens.pipelines.explain.gradients`), which
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

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import keras
import numpy as np

from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.explain.gradients import PREDICTED, class_score_gradients
from medlens.pipelines.explain.target_layer import build_gradient_model, find_target_layer

__all__ = ["CamResult", "GradCAM", "build_gradient_model", "find_target_layer"]

logger = logging.getLogger(__name__)



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
