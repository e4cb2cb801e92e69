"""Albumentations augmentation presets per imaging modality.

Each preset is a :class:`albumentations.Compose` built by :func:`build_augmentation`;
:func:`augment` applies one to a ``float32`` ``H×W×C`` image in ``[0, 1]`` and, optionally,
an integer mask, with the *same* geometric transform on both (masks use nearest-neighbour
interpolation so labels stay integers). Augmentation is reproducible when a seed is given.

This module uses numpy, OpenCV and albumentations only (no Keras), so it can run in
data-loading workers.
"""

from __future__ import annotations

import logging
from typing import Any

import albumentations as A
import cv2
import numpy as np

from medlens.pipelines.names import AUGMENT_PRESETS

__all__ = ["PRESETS", "build_augmentation", "augment"]

logger = logging.getLogger(__name__)

PRESETS: tuple[str, ...] = AUGMENT_PRESETS

# Transforms that need three colour channels (albumentations warns on grey images).
_COLOUR_TRANSFORMS = (A.HueSaturationValue, A.ColorJitter)


def _xray() -> list[A.BasicTransform]:
    return [
        A.Affine(
            rotate=(-10, 10),
            translate_percent=(-0.05, 0.05),
            scale=(0.95, 1.05),
            interpolation=cv2.INTER_LINEAR,
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            p=0.7,
        ),
        A.CLAHE(clip_limit=(1.0, 2.0), tile_grid_size=(8, 8), p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
    ]


def _tumour() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(
            rotate=(-15, 15),
            scale=(0.9, 1.1),
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            p=0.5,
        ),
        A.ElasticTransform(alpha=30.0, sigma=6.0, mask_interpolation=cv2.INTER_NEAREST, p=0.3),
        A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
    ]


def _fundus() -> list[A.BasicTransform]:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.Rotate(
            limit=(-180, 180),
            mask_interpolation=cv2.INTER_NEAREST,
            border_mode=cv2.BORDER_CONSTANT,
            p=0.7,
        ),
        A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    ]


_BUILDERS = {"xray": _xray, "tumour": _tumour, "fundus": _fundus}


def build_augmentation(preset: str, *, seed: int | None = None) -> A.Compose | None:
    """Build the augmentation pipeline of a modality preset.

    Presets:
        - ``none``: no augmentation; returns ``None``.
        - ``xray``: small rotation (±10°), shift (±5 %) and scale (±5 %), CLAHE (p=0.3),
          mild brightness/contrast. **No flips**: chest anatomy is lateralised (heart on the
          left), so a horizontal flip makes anatomically impossible images and a vertical
          flip never happens in acquisition.
        - ``tumour``: horizontal and vertical flips, 90° rotations, small rotation/scale,
          elastic deformation (p=0.3), brightness/contrast. Brain/breast lesions have no
          preferred orientation.
        - ``fundus``: flips, rotation by any angle (the retina is roughly circular) and
          colour jitter (brightness, contrast, saturation, small hue shifts).

    Args:
        preset: one of :data:`PRESETS`.
        seed: optional seed for the pipeline's random state.

    Returns:
        An ``albumentations.Compose`` (image + ``mask`` targets), or ``None`` for ``none``.

    Raises:
        ValueError: unknown preset name.

    Example:
        >>> transform = build_augmentation("xray", seed=0)
        >>> image, _ = augment(transform, np.zeros((32, 32, 1), np.float32), seed=1)
    """
    if preset == "none":
        return None
    if preset not in _BUILDERS:
        raise ValueError(f"unknown augmentation preset {preset!r}; choose one of {', '.join(PRESETS)}")
    return A.Compose(_BUILDERS[preset](), seed=seed)


def _iter_transforms(transform: Any) -> list[Any]:
    found = [transform]
    for child in getattr(transform, "transforms", []) or []:
        found.extend(_iter_transforms(child))
    return found


def _needs_rgb(transform: A.Compose) -> bool:
    return any(isinstance(t, _COLOUR_TRANSFORMS) for t in _iter_transforms(transform))


def augment(
    transform: A.Compose | None,
    image: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Apply ``transform`` to an image and (optionally) its mask with the same geometry.

    The whole pipeline runs on ``float32`` (albumentations converts to ``uint8`` internally
    for CLAHE). Grey images meet colour transforms as three identical channels and are
    averaged back to one channel.

    Args:
        transform: pipeline from :func:`build_augmentation`; ``None`` returns the inputs.
        image: ``float32`` ``H×W×C`` (``C`` 1 or 3) in ``[0, 1]``; ``H×W`` is accepted as ``C=1``.
        mask: optional integer label mask ``H×W`` (or ``H×W×1``); warped with nearest neighbour.
        seed: reseeds ``transform`` before this call, so the same seed gives the same result.
        rng: alternative to ``seed``: a seed is drawn from this generator.

    Returns:
        ``(image, mask)``: image ``float32`` ``H×W×C`` in ``[0, 1]`` (same shape as given,
        unless the transform changes the size), mask with its input dtype, or ``None``.

    Raises:
        ValueError: image is not ``H×W``/``H×W×1``/``H×W×3`` or mask size differs.
    """
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.ndim != 3 or pixels.shape[-1] not in (1, 3):
        raise ValueError(f"augment expects an H×W×C image with C in (1, 3), got shape {pixels.shape}")
    if mask is not None and tuple(np.shape(mask)[:2]) != pixels.shape[:2]:
        raise ValueError(f"mask shape {np.shape(mask)} does not match image shape {pixels.shape}")
    if transform is None:
        return pixels.astype(np.float32, copy=False), mask

    if seed is None and rng is not None:
        seed = int(rng.integers(0, 2**31 - 1))
    if seed is not None:
        transform.set_random_seed(int(seed))

    channels = pixels.shape[-1]
    work = np.ascontiguousarray(pixels, dtype=np.float32)
    grey_as_rgb = channels == 1 and _needs_rgb(transform)
    if grey_as_rgb:
        work = np.repeat(work, 3, axis=-1)

    inputs: dict[str, np.ndarray] = {"image": work}
    mask_array: np.ndarray | None = None
    if mask is not None:
        mask_array = np.asarray(mask)
        inputs["mask"] = np.ascontiguousarray(mask_array)

    result = transform(**inputs)
    out = np.asarray(result["image"], dtype=np.float32)
    if out.ndim == 2:
        out = out[..., None]
    if grey_as_rgb:
        out = out.mean(axis=-1, keepdims=True)
    out = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)

    out_mask: np.ndarray | None = None
    if mask_array is not None:
        out_mask = np.asarray(result["mask"])
        if mask_array.ndim == 3 and out_mask.ndim == 2:
            out_mask = out_mask[..., None]
        elif mask_array.ndim == 2 and out_mask.ndim == 3:
            out_mask = out_mask[..., 0]
        out_mask = out_mask.astype(mask_array.dtype, copy=False)
    return out, out_mask
