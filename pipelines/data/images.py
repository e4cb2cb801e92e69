"""Pixels on their way to a model: resizing, channel conversion, compact cache storage.

Every task's batches and every inference path go through these, so a model sees the same
input in training and in use.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["resize_image", "prepare_image", "to_model_channels", "to_store", "from_store"]


def resize_image(pixels: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Resize ``H×W×C`` to ``image_size`` = ``(height, width)``, keeping dtype and channels.

    ``cv2.INTER_AREA`` when shrinking (no aliasing), ``cv2.INTER_LINEAR`` when growing.
    """
    height, width = int(image_size[0]), int(image_size[1])
    image = np.asarray(pixels)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[..., None]
    return resized


def prepare_image(pixels: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Model-ready pixels: resized to ``(height, width)``, 3 channels, ``float32`` in ``[0, 255]``.

    Args:
        pixels: ``float32`` ``H×W×C`` (or ``H×W``) in ``[0, 1]`` as returned by the readers.
        image_size: ``(height, width)``.

    Returns:
        ``float32`` ``height×width×3`` in ``[0, 255]``, ready for a backbone's ``preprocess_input``.
    """
    image = resize_image(np.asarray(pixels, dtype=np.float32), image_size)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {image.shape}")
    return np.clip(image * np.float32(255.0), 0.0, 255.0).astype(np.float32, copy=False)



def to_model_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An image in ``[0, 1]`` as ``float32`` ``H×W×channels`` in ``0..255``: grey repeated, colour greyed.

    Training batches and inference (:mod:`medlens.pipelines.segtrain`) both go through this,
    so a model sees the same input either way.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] != channels:
        if channels == 3:
            image = np.repeat(image[..., :1], 3, axis=-1)
        else:
            image = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)[..., None]
    return np.clip(image * np.float32(255.0), 0.0, 255.0).astype(np.float32, copy=False)


def to_store(pixels: np.ndarray) -> np.ndarray:
    """Pixels in ``[0, 1]`` kept compactly: ``uint8`` when the image is 8-bit (lossless), ``float16`` otherwise."""
    scaled = pixels * np.float32(255.0)
    rounded = np.rint(scaled)
    if np.max(np.abs(scaled - rounded), initial=0.0) < 1e-3:
        return rounded.clip(0, 255).astype(np.uint8)
    return pixels.astype(np.float16)


def from_store(stored: np.ndarray) -> np.ndarray:
    """:func:`to_store`'s pixels back as ``float32`` in ``[0, 1]``."""
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)
