"""U-Net segmentation models: the classic U-Net and U-Nets on pretrained encoders.

The plain U-Net (Ronneberger et al. 2015) stacks ``depth`` encoder levels of
``Conv2D(3x3) → [BatchNorm] → ReLU`` twice, each followed by a 2×2 max pool, a
bottleneck block, and ``depth`` decoder levels that upsample (``Conv2DTranspose``
or bilinear ``UpSampling2D`` + conv), concatenate the encoder output of the same
resolution and run a block. Its spatial input size may be ``None``, so one model
segments tiles or whole images of any size divisible by ``2**depth``.

With ``encoder="vgg16"`` or ``"resnet50"`` the encoder is a Keras application built
by :func:`~medlens.models.backbones.build_backbone` (weights ``"imagenet"``,
``"none"`` or a file, with the same errors as the classifiers) and nested as the
layer ``"encoder"``, a Functional model whose outputs are the skip features and the
bottleneck. These encoders need 3-channel input already passed through their own
``preprocess_input``: the data pipeline applies
``medlens.models.backbones.preprocess_function(encoder)`` (see :func:`encoder_name`).
A plain U-Net takes whatever the pipeline feeds it (e.g. ``[0, 1]`` pixels).

The output layer is named ``"mask"``: one sigmoid channel for ``num_classes=1``
(foreground probability), otherwise a softmax over ``num_classes`` channels.
Every model is a plain Functional model, so it saves to ``.keras`` and loads with
``keras.saving.load_model`` without custom objects.

Example:
    >>> model = build_unet((None, None, 1), num_classes=1, depth=3, filters=8)
    >>> model.output_shape
    (None, None, None, 1)
    >>> unet = build_unet((64, 64, 3), encoder="vgg16", encoder_weights="none")
    >>> freeze_encoder(unet)
    >>> get_encoder(unet).trainable
    False
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import keras

from medlens.models import names
from medlens.models.backbones import build_backbone, guess_backbone_name
from medlens.pipelines.errors import ConfigError

__all__ = [
    "ENCODERS",
    "ENCODER_LAYER",
    "build_unet",
    "encoder_name",
    "freeze_encoder",
    "get_encoder",
    "unfreeze_encoder",
]

logger = logging.getLogger(__name__)

ENCODER_LAYER = "encoder"

#: Per encoder: the skip layers (finest first), the bottleneck layer, and how many
#: extra ×2 upsamplings the decoder needs after the last skip to reach full resolution.
ENCODERS: dict[str, tuple[tuple[str, ...], str, int]] = {
    "vgg16": (
        ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3"),
        "block5_conv3",
        0,
    ),
    "resnet50": (
        ("conv1_relu", "conv2_block3_out", "conv3_block4_out", "conv4_block6_out"),
        "conv5_block3_out",
        1,
    ),
}
_UPSAMPLING = names.UPSAMPLING
assert set(ENCODERS) | {"none"} == set(names.ENCODER_NAMES), "models/names.py lists the encoders"


def _conv_block(x, filters: int, prefix: str, batch_norm: bool, dropout: float = 0.0):
    """``(Conv2D 3×3 → [BatchNorm] → ReLU) × 2``, then optional dropout."""
    for index in (1, 2):
        x = keras.layers.Conv2D(
            filters,
            3,
            padding="same",
            use_bias=not batch_norm,
            kernel_initializer="he_normal",
            name=f"{prefix}_conv{index}",
        )(x)
        if batch_norm:
            # momentum 0.9, not Keras's 0.99: with few steps per epoch and a high learning rate the
            # slow moving statistics lagged the weights, and in inference mode the demo's U-Net
            # scored validation Dice 0.00-0.17 where the same weights on batch statistics scored
            # 0.88-0.93 (docs/training.md, "Segmentation: validation Dice 0 while training improves").
            x = keras.layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn{index}")(x)
        x = keras.layers.Activation("relu", name=f"{prefix}_relu{index}")(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name=f"{prefix}_dropout")(x)
    return x


def _upsample(x, filters: int, prefix: str, mode: str):
    if mode == "transpose":
        return keras.layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{prefix}_up")(x)
    x = keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"{prefix}_upsample")(x)
    return keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"{prefix}_up")(x)


def _check_shape(input_shape: Sequence[int | None], multiple: int, what: str) -> tuple[int | None, ...]:
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ConfigError(f"input_shape must be (height, width, channels), got {shape}")
    if shape[-1] is None or shape[-1] < 1:
        raise ConfigError(f"input_shape needs a known number of channels, got {shape}")
    for size in shape[:2]:
        if size is not None and (size < multiple or size % multiple):
            raise ConfigError(f"{what} needs image sizes divisible by {multiple}, got input_shape {shape}")
    return shape


def _build_encoder(
    encoder: str, input_shape: tuple[int | None, ...], weights: str | os.PathLike[str] | None
) -> keras.Model:
    skips, bottleneck, _ = ENCODERS[encoder]
    backbone = build_backbone(encoder, input_shape, weights)
    outputs = [backbone.get_layer(name).output for name in (*skips, bottleneck)]
    return keras.Model(backbone.inputs, outputs, name=ENCODER_LAYER)


def build_unet(
    input_shape: Sequence[int | None] = (None, None, 3),
    num_classes: int = 1,
    depth: int = 4,
    filters: int = 32,
    batch_norm: bool = True,
    dropout: float = 0.0,
    encoder: str | None = None,
    encoder_weights: str | os.PathLike[str] | None = "none",
    name: str = "unet",
    *,
    level_dropout: float = 0.0,
    upsampling: str = "transpose",
) -> keras.Model:
    """Build a U-Net, plain or on a pretrained VGG16/ResNet50 encoder.

    Decoder level ``i`` (``0`` = full resolution) has ``filters * 2**i`` filters;
    the plain bottleneck has ``filters * 2**depth``.

    Args:
        input_shape: ``(height, width, channels)``. Sizes may be ``None``; known
            sizes must be divisible by ``2**depth`` (16 for VGG16, 32 for ResNet50).
            Encoders need 3 channels.
        num_classes: 1 for a binary mask (sigmoid), else the number of classes
            including background (softmax).
        depth: Number of pooling levels of the plain U-Net. With an encoder the
            depth is fixed by the encoder (4 skip levels) and this is ignored.
        filters: Filters of the first (full-resolution) level.
        batch_norm: BatchNormalization after every convolution (of the decoder,
            with an encoder).
        dropout: Dropout rate at the bottleneck (the encoder output with an encoder).
        encoder: ``None``, ``"vgg16"`` or ``"resnet50"``.
        encoder_weights: ``"imagenet"``, ``"none"``/``None`` or a weights file path,
            as for :func:`~medlens.models.backbones.build_backbone`.
        name: Model name.
        level_dropout: Dropout rate after every encoder and decoder block of the
            plain U-Net and every decoder block with an encoder; 0 for none.
        upsampling: ``"transpose"`` (``Conv2DTranspose``) or ``"bilinear"``
            (``UpSampling2D`` followed by a 3×3 convolution).

    Returns:
        An uncompiled Functional model with input ``"image"`` and output layer
        ``"mask"`` of shape ``(batch, height, width, num_classes)``.

    Raises:
        ConfigError: Invalid settings, unknown encoder or unusable input shape.
        WeightsError: Encoder weights unavailable or unfit.

    Example:
        >>> model = build_unet((32, 32, 1), num_classes=3, depth=2, filters=4)
        >>> model.output_shape
        (None, 32, 32, 3)
    """
    if num_classes < 1:
        raise ConfigError(f"num_classes must be at least 1, got {num_classes}")
    if filters < 1:
        raise ConfigError(f"filters must be a positive integer, got {filters}")
    if not 0.0 <= dropout < 1.0 or not 0.0 <= level_dropout < 1.0:
        raise ConfigError(f"dropout rates must be in [0, 1), got {dropout} and {level_dropout}")
    if upsampling not in _UPSAMPLING:
        raise ConfigError(f"upsampling must be one of {', '.join(_UPSAMPLING)}, got {upsampling!r}")

    if encoder is None:
        if depth < 1:
            raise ConfigError(f"depth must be at least 1, got {depth}")
        shape = _check_shape(input_shape, 2**depth, f"a U-Net of depth {depth}")
        inputs = keras.Input(shape, name="image")
        x = inputs
        skips = []
        for level in range(depth):
            x = _conv_block(x, filters * 2**level, f"enc{level}", batch_norm, level_dropout)
            skips.append(x)
            x = keras.layers.MaxPooling2D(2, name=f"enc{level}_pool")(x)
        x = _conv_block(x, filters * 2**depth, "bottleneck", batch_norm)
        if dropout:
            x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)
        extra_levels = 0
    else:
        if encoder not in ENCODERS:
            raise ConfigError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
        if depth != 4:
            logger.info("depth=%d ignored: the %s encoder fixes the U-Net depth", depth, encoder)
        _, _, extra_levels = ENCODERS[encoder]
        multiple = 2 ** (4 + extra_levels)
        shape = _check_shape(input_shape, multiple, f"a U-Net on {encoder}")
        if shape[-1] != 3:
            raise ConfigError(f"encoder {encoder} needs 3-channel (RGB) input, got input_shape {shape}")
        encoder_model = _build_encoder(encoder, shape, encoder_weights)
        inputs = keras.Input(shape, name="image")
        *skips, x = encoder_model(inputs)
        if dropout:
            x = keras.layers.Dropout(dropout, name="bottleneck_dropout")(x)

    for level in reversed(range(len(skips))):
        prefix = f"dec{level + extra_levels}"
        x = _upsample(x, filters * 2 ** (level + extra_levels), prefix, upsampling)
        x = keras.layers.Concatenate(name=f"{prefix}_concat")([x, skips[level]])
        x = _conv_block(x, filters * 2 ** (level + extra_levels), prefix, batch_norm, level_dropout)
    for level in reversed(range(extra_levels)):
        # ResNet's finest skip is at half resolution: upsample once more without a skip.
        x = _upsample(x, filters * 2**level, f"dec{level}", upsampling)
        x = _conv_block(x, filters * 2**level, f"dec{level}", batch_norm, level_dropout)

    activation = "sigmoid" if num_classes == 1 else "softmax"
    # float32 output so losses stay stable under a mixed-precision policy.
    outputs = keras.layers.Conv2D(num_classes, 1, activation=activation, dtype="float32", name="mask")(x)
    model = keras.Model(inputs, outputs, name=name)
    logger.debug("built %s (encoder=%s, classes=%d)", model.name, encoder, num_classes)
    return model


def get_encoder(model: keras.Model) -> keras.Model:
    """The pretrained encoder nested in a U-Net as the layer ``"encoder"``.

    Args:
        model: A U-Net from :func:`build_unet` with an encoder (or loaded from file).

    Returns:
        The nested encoder model.

    Raises:
        ConfigError: ``model`` has no layer named ``"encoder"`` (a plain U-Net).

    Example:
        >>> unet = build_unet((32, 32, 3), encoder="vgg16")
        >>> get_encoder(unet).name
        'encoder'
    """
    try:
        return model.get_layer(ENCODER_LAYER)
    except ValueError:
        raise ConfigError(
            f"model {model.name!r} has no pretrained encoder (no layer named {ENCODER_LAYER!r})"
        ) from None


def encoder_name(model: keras.Model) -> str | None:
    """Which encoder architecture a U-Net uses, ``None`` for a plain U-Net.

    The data pipeline uses it to pick ``preprocess_function(encoder_name(model))``.

    Example:
        >>> encoder_name(build_unet((32, 32, 3), depth=2, filters=4)) is None
        True
    """
    try:
        encoder = model.get_layer(ENCODER_LAYER)
    except ValueError:
        return None
    return guess_backbone_name(encoder)


def freeze_encoder(model: keras.Model) -> None:
    """Freeze the whole encoder; the decoder stays trainable. Recompile afterwards.

    Args:
        model: A U-Net with an encoder.

    Raises:
        ConfigError: ``model`` has no encoder.

    Example:
        >>> unet = build_unet((32, 32, 3), encoder="vgg16")
        >>> freeze_encoder(unet)
        >>> get_encoder(unet).trainable
        False
    """
    get_encoder(model).trainable = False


def unfreeze_encoder(model: keras.Model) -> None:
    """Make the encoder trainable except its BatchNorm layers. Recompile afterwards.

    BatchNormalization layers stay frozen, so they keep their ImageNet statistics
    and run in inference mode (Keras 3 semantics for non-trainable BatchNorm).

    Args:
        model: A U-Net with an encoder.

    Raises:
        ConfigError: ``model`` has no encoder.

    Example:
        >>> unet = build_unet((64, 64, 3), encoder="resnet50")
        >>> unfreeze_encoder(unet)
        >>> get_encoder(unet).get_layer("conv1_bn").trainable
        False
    """
    encoder = get_encoder(model)
    # Setting the model flag first resets every nested layer to trainable.
    encoder.trainable = True
    for layer in encoder.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
