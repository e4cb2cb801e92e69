"""The backbone registry: how to build, preprocess, load and split each architecture.

``BACKBONES`` records, per architecture, how to build it, how to preprocess ``0..255`` RGB
images for it, which Keras ImageNet weights file it uses, and how its layers group into
ordered *blocks* (bottom to top) so training can unfreeze the top blocks only.
:mod:`medlens.models.backbones` builds them; :mod:`medlens.models.weights` loads their files.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import keras
import numpy as np

from medlens.pipelines.errors import ConfigError

__all__ = ["BACKBONES", "BackboneSpec", "preprocess_function", "small_cnn", "spec_of"]

logger = logging.getLogger(__name__)

_KERAS_APPS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


def small_cnn(
    input_shape: Sequence[int | None] = (28, 28, 3),
    width: int = 16,
    name: str = "small_cnn",
) -> keras.Model:
    """A tiny VGG-like CNN for tests, the demo and from-scratch training on MedMNIST.

    Four blocks of ``Conv2D(3x3) → BatchNormalization → ReLU → MaxPooling2D``
    with ``width, 2·width, 4·width, 8·width`` filters. Layers are named like VGG
    (``block{i}_conv1``, ``block{i}_bn``, ``block{i}_relu``, ``block{i}_pool``) so
    the block split works the same way. Pools use ``padding="same"``, so any
    input of 8 px or more works (28 px → 14 → 7 → 4 → 2); the output is a 4-D
    feature map and ``block4_conv1`` is the last convolution (a Grad-CAM target).

    Args:
        input_shape: ``(height, width, channels)``; spatial sizes may be ``None``.
        width: Filters in the first block; doubled in each following block.
        name: Model name.

    Returns:
        An uncompiled Functional model with randomly initialised weights.

    Raises:
        ConfigError: ``width`` is not positive.

    Example:
        >>> model = small_cnn((32, 32, 3), width=8)
        >>> model.output.shape
        (None, 2, 2, 64)
    """
    if width < 1:
        raise ConfigError(f"small_cnn width must be a positive integer, got {width}")
    inputs = keras.Input(tuple(input_shape))
    x = inputs
    for block in range(1, 5):
        filters = width * 2 ** (block - 1)
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{block}_conv1")(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"block{block}_bn")(x)
        x = keras.layers.Activation("relu", name=f"block{block}_relu")(x)
        x = keras.layers.MaxPooling2D(2, padding="same", name=f"block{block}_pool")(x)
    return keras.Model(inputs, x, name=name)


def _scale_to_unit(images: np.ndarray) -> np.ndarray:
    return images / np.float32(255.0)


@dataclass(frozen=True)
class BackboneSpec:
    """How to build, preprocess, load and split one backbone architecture.

    Attributes:
        name: Registry key, e.g. ``"vgg16"``.
        constructor: Called as ``constructor(include_top=False, weights=None,
            input_shape=..., name=...)`` (the Keras applications signature).
        preprocess: Array function from ``0..255`` RGB to the backbone's input range.
        weights_filename: Keras cache file name of the ImageNet notop weights,
            ``None`` when the architecture has none.
        weights_hash: MD5 of the official file, as in the Keras source.
        weights_url: Where Keras downloads the file from.
        blocks: ``(block name, regular expression)`` pairs, bottom to top; a layer
            belongs to the first block whose expression matches its name.
        min_size: Smallest spatial input size the architecture accepts.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess: Callable[[np.ndarray], np.ndarray]
    weights_filename: str | None
    weights_hash: str | None
    weights_url: str | None
    blocks: tuple[tuple[str, str], ...]
    min_size: int = 32

    @property
    def has_imagenet(self) -> bool:
        """Whether ImageNet weights exist for this architecture."""
        return self.weights_filename is not None


def _small_cnn_constructor(
    include_top: bool = False,
    weights: str | None = None,
    input_shape: Sequence[int | None] = (28, 28, 3),
    name: str = "small_cnn",
) -> keras.Model:
    del include_top, weights  # small_cnn is always headless and randomly initialised
    return small_cnn(input_shape, name=name)


_VGG_BLOCKS = tuple((f"block{i}", rf"block{i}_") for i in range(1, 6))
# ResNet stages: stem (conv1 + pool1), then the four residual stages.
_RESNET_BLOCKS = (
    ("stem", r"conv1_|pool1_"),
    ("conv2", r"conv2_"),
    ("conv3", r"conv3_"),
    ("conv4", r"conv4_"),
    ("conv5", r"conv5_"),
)
# ResNet50V2 ends with post_bn/post_relu: they belong to the top stage.
_RESNET_V2_BLOCKS = (*_RESNET_BLOCKS[:-1], ("conv5", r"conv5_|post_"))
# DenseNet: each dense block takes the transition layer that follows it
# (pool2..pool4); the final bn/relu belong to the top dense block.
_DENSENET_BLOCKS = (
    ("stem", r"conv1_|pool1$|zero_padding2d"),
    ("conv2", r"conv2_|pool2_"),
    ("conv3", r"conv3_|pool3_"),
    ("conv4", r"conv4_|pool4_"),
    ("conv5", r"conv5_|bn$|relu$"),
)


def _notop(arch: str, folder: str) -> tuple[str, str]:
    filename = f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return filename, f"{_KERAS_APPS_URL}{folder}/{filename}"


BACKBONES: dict[str, BackboneSpec] = {
    "vgg16": BackboneSpec(
        "vgg16",
        keras.applications.VGG16,
        keras.applications.vgg16.preprocess_input,
        _notop("vgg16", "vgg16")[0],
        "6d6bbae143d832006294945121d1f1fc",
        _notop("vgg16", "vgg16")[1],
        _VGG_BLOCKS,
    ),
    "vgg19": BackboneSpec(
        "vgg19",
        keras.applications.VGG19,
        keras.applications.vgg19.preprocess_input,
        _notop("vgg19", "vgg19")[0],
        "253f8cb515780f3b799900260a226db6",
        _notop("vgg19", "vgg19")[1],
        _VGG_BLOCKS,
    ),
    "resnet50": BackboneSpec(
        "resnet50",
        keras.applications.ResNet50,
        keras.applications.resnet50.preprocess_input,
        _notop("resnet50", "resnet")[0],
        "4d473c1dd8becc155b73f8504c6f6626",
        _notop("resnet50", "resnet")[1],
        _RESNET_BLOCKS,
    ),
    "resnet50v2": BackboneSpec(
        "resnet50v2",
        keras.applications.ResNet50V2,
        keras.applications.resnet_v2.preprocess_input,
        _notop("resnet50v2", "resnet")[0],
        "fac2f116257151a9d068a22e544a4917",
        _notop("resnet50v2", "resnet")[1],
        _RESNET_V2_BLOCKS,
    ),
    "densenet121": BackboneSpec(
        "densenet121",
        keras.applications.DenseNet121,
        keras.applications.densenet.preprocess_input,
        _notop("densenet121", "densenet")[0],
        "30ee3e1110167f948a6b9946edeeb738",
        _notop("densenet121", "densenet")[1],
        _DENSENET_BLOCKS,
    ),
    "small_cnn": BackboneSpec(
        "small_cnn",
        _small_cnn_constructor,
        _scale_to_unit,
        None,
        None,
        None,
        tuple((f"block{i}", rf"block{i}_") for i in range(1, 5)),
        min_size=8,
    ),
}


def spec_of(name: str) -> BackboneSpec:
    """The registry entry of backbone ``name``; ``ConfigError`` listing the known ones otherwise."""
    try:
        return BACKBONES[name]
    except KeyError:
        known = ", ".join(BACKBONES)
        raise ConfigError(f"unknown backbone {name!r}; choose one of: {known}") from None



def preprocess_function(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The function turning ``0..255`` RGB arrays into backbone ``name``'s input.

    The returned function copies its input (Keras' ``preprocess_input`` may work
    in place) and returns a ``float32`` array of the same shape.

    Args:
        name: A key of :data:`BACKBONES`.

    Returns:
        A numpy-in, numpy-out function for ``H×W×3`` or ``N×H×W×3`` arrays.

    Raises:
        ConfigError: Unknown backbone name.

    Example:
        >>> preprocess = preprocess_function("small_cnn")
        >>> float(preprocess(np.full((2, 2, 3), 255.0)).max())
        1.0
    """
    raw = spec_of(name).preprocess

    def preprocess(images: np.ndarray) -> np.ndarray:
        array = np.array(images, dtype=np.float32, copy=True)
        return np.asarray(raw(array), dtype=np.float32)

    preprocess.__name__ = f"preprocess_{name}"
    return preprocess

