"""The segmentation GAN's discriminator: a PatchGAN on the image and a mask, stacked.

It answers, per patch, whether the mask is the expert's or the generator's; see
:class:`medlens.models.seggan.SegGAN` for how it trains against the U-Net generator.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from medlens.pipelines.errors import ConfigError

__all__ = ["build_discriminator"]


def build_discriminator(
    input_shape: Sequence[int | None],
    filters: int = 32,
    depth: int = 4,
    patch: bool = True,
    mask_channels: int = 1,
    name: str = "discriminator",
) -> keras.Model:
    """A convolutional discriminator of (image, mask) pairs, returning logits.

    ``depth`` blocks of ``Conv2D(4×4, stride 2) → [BatchNorm] → LeakyReLU(0.2)``
    with ``filters · 2**i`` filters (no BatchNorm in the first block, as in
    pix2pix), then a 3×3 convolution to one logit per patch (``patch=True``,
    output ``(B, H/2**depth, W/2**depth, 1)``) or global average pooling and a dense
    logit (``patch=False``, output ``(B, 1)``).

    Args:
        input_shape: The *image* shape ``(H, W, C)``; sizes may be ``None``. The
            model input is the pair concatenated on channels,
            ``(H, W, C + mask_channels)``.
        filters: Filters of the first block.
        depth: Number of stride-2 blocks.
        patch: PatchGAN logit map (``True``) or one logit per image.
        mask_channels: Channels of the mask (the generator's ``num_classes``).
        name: Model name.

    Returns:
        An uncompiled Functional model with output layer ``"logits"``.

    Raises:
        ConfigError: Invalid sizes.

    Example:
        >>> build_discriminator((32, 32, 3), filters=8, depth=2).output_shape
        (None, 8, 8, 1)
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ConfigError(f"input_shape must be (height, width, channels), got {shape}")
    if filters < 1 or depth < 1 or mask_channels < 1:
        raise ConfigError(
            f"filters, depth and mask_channels must be positive, got {filters}, {depth}, {mask_channels}"
        )
    inputs = keras.Input((shape[0], shape[1], shape[2] + mask_channels), name="pair")
    x = inputs
    for level in range(depth):
        x = keras.layers.Conv2D(
            filters * 2**level, 4, strides=2, padding="same", use_bias=level == 0, name=f"d{level}_conv"
        )(x)
        if level:
            x = keras.layers.BatchNormalization(name=f"d{level}_bn")(x)
        x = keras.layers.LeakyReLU(0.2, name=f"d{level}_lrelu")(x)
    if patch:
        outputs = keras.layers.Conv2D(1, 3, padding="same", dtype="float32", name="logits")(x)
    else:
        x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = keras.layers.Dense(1, dtype="float32", name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
