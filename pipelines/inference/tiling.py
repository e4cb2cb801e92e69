"""Tiled prediction of images of any size: overlapping tiles blended with a Gaussian weight.

:func:`sliding_window_predict` runs a model on overlapping tiles of an image of any size
and blends the tiles with a smooth Gaussian weight, so there are no seams;
:func:`whole_image_predict` pads an image to a size the network accepts and crops back.
NumPy and OpenCV only: ``predict_fn`` may wrap any Keras model
(``lambda batch: model.predict(batch, verbose=0)``).

Example:
    >>> probability = sliding_window_predict(lambda b: b[..., :1], np.zeros((97, 131, 3)), tile=64)
    >>> probability.shape
    (97, 131)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["sliding_window_predict", "whole_image_predict", "gaussian_window", "tile_starts", "PredictFn"]

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], Any]


def gaussian_window(tile: int, sigma_scale: float = 0.125, floor: float = 1e-3) -> np.ndarray:
    """A smooth ``tile×tile`` blending weight, 1 in the centre, falling towards the edges.

    Args:
        tile: Tile side.
        sigma_scale: Gaussian sigma as a fraction of ``tile`` (nnU-Net uses 1/8).
        floor: Smallest weight, so pixels seen only by a tile's edge still count.

    Returns:
        ``float64`` array ``tile×tile`` in ``[floor, 1]``.
    """
    centre = (tile - 1) / 2.0
    sigma = max(tile * sigma_scale, 1e-6)
    line = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    window = np.outer(line, line)
    return np.maximum(window / window.max(), floor)


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets of tiles covering ``0..length``; the last tile ends flush with the edge.

    Args:
        length: Side to cover (at least ``tile``).
        tile: Tile side.
        stride: Step between tiles.

    Returns:
        Sorted start offsets.
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile + 1, stride))
    if starts[-1] + tile < length:
        starts.append(length - tile)
    return starts


def _as_hwc(image: np.ndarray) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise ValueError(f"expected an H×W or H×W×C image, got shape {array.shape}")
    return array


def _pad_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad bottom/right by reflection (edge copy for 1-pixel sides) up to ``height×width``."""
    pad_h, pad_w = height - image.shape[0], width - image.shape[1]
    if pad_h <= 0 and pad_w <= 0:
        return image
    padding = ((0, max(pad_h, 0)), (0, max(pad_w, 0)), (0, 0))
    mode = "reflect" if min(image.shape[:2]) > 1 else "edge"
    return np.pad(image, padding, mode=mode)


def _run(predict_fn: PredictFn, batch: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    output = predict_fn(batch)
    if hasattr(output, "numpy") and not isinstance(output, np.ndarray):
        output = output.numpy()
    output = np.asarray(output, dtype=np.float32)
    if output.ndim == 3:
        output = output[..., None]
    if output.ndim != 4 or output.shape[0] != batch.shape[0] or output.shape[1:3] != tile_hw:
        raise ValueError(
            f"predict_fn returned shape {output.shape} for a batch of shape {batch.shape}; "
            f"expected ({batch.shape[0]}, {tile_hw[0]}, {tile_hw[1]}, C)"
        )
    return output


def _squeeze(prob: np.ndarray) -> np.ndarray:
    return prob[..., 0] if prob.shape[-1] == 1 else prob


def sliding_window_predict(
    predict_fn: PredictFn,
    image: np.ndarray,
    *,
    tile: int = 128,
    overlap: float = 0.25,
    batch_size: int = 8,
    multiple: int = 16,
) -> np.ndarray:
    """Predict an image of any size tile by tile, blending overlapping tiles smoothly.

    The image is padded (reflection, bottom/right) to at least one tile; tiles sit on a grid
    with stride ``tile·(1 − overlap)`` whose last tile is flush with the edge, so every pixel
    is covered. Each tile's output is weighted by :func:`gaussian_window` and the weighted sum
    divided by the summed weights, so a model that outputs a constant gives that constant and
    a translation-equivariant model gives its whole-image output up to edge effects.

    Args:
        predict_fn: ``batch (B, tile, tile, C) float32 -> (B, tile, tile, C')`` probabilities
            (a NumPy array or a tensor with ``.numpy()``).
        image: ``H×W×C`` (or ``H×W``) model-ready pixels (already preprocessed).
        tile: Tile side; must be a multiple of ``multiple``.
        overlap: Fraction of a tile shared with its neighbour, in ``[0, 1)``.
        batch_size: Tiles per ``predict_fn`` call.
        multiple: The network's size divisor (``2**depth`` for a U-Net).

    Returns:
        ``float32`` probability map ``H×W`` (one output channel) or ``H×W×C'``.

    Raises:
        ValueError: Bad arguments, or ``predict_fn`` output of the wrong shape.

    Example:
        >>> out = sliding_window_predict(lambda b: np.ones(b.shape[:3] + (1,)), np.zeros((50, 70, 3)), tile=32)
        >>> float(out.min()), float(out.max())
        (1.0, 1.0)
    """
    if tile < 1 or (multiple > 1 and tile % multiple):
        raise ValueError(f"tile {tile} must be a positive multiple of {multiple}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    pixels = _as_hwc(image)
    height, width = pixels.shape[:2]
    padded = _pad_to(pixels, max(height, tile), max(width, tile))
    stride = max(1, int(round(tile * (1.0 - overlap))))
    positions = [
        (top, left)
        for top in tile_starts(padded.shape[0], tile, stride)
        for left in tile_starts(padded.shape[1], tile, stride)
    ]
    window = gaussian_window(tile)
    total: np.ndarray | None = None
    weights = np.zeros(padded.shape[:2], dtype=np.float64)
    for first in range(0, len(positions), batch_size):
        chunk = positions[first : first + batch_size]
        batch = np.stack([padded[top : top + tile, left : left + tile] for top, left in chunk])
        output = _run(predict_fn, batch, (tile, tile))
        if total is None:
            total = np.zeros(padded.shape[:2] + (output.shape[-1],), dtype=np.float64)
        for (top, left), prediction in zip(chunk, output, strict=True):
            total[top : top + tile, left : left + tile] += prediction * window[..., None]
            weights[top : top + tile, left : left + tile] += window
    if total is None:  # unreachable: there is always at least one tile
        raise RuntimeError("no tiles were predicted")
    logger.debug("sliding window: %d tiles of %d px, stride %d", len(positions), tile, stride)
    blended = total / weights[..., None]
    return _squeeze(blended[:height, :width].astype(np.float32))


def whole_image_predict(predict_fn: PredictFn, image: np.ndarray, multiple: int = 16) -> np.ndarray:
    """Predict a whole image at once, padded (reflection) to a multiple of ``multiple``.

    Args:
        predict_fn: ``batch (1, H', W', C) -> (1, H', W', C')``.
        image: ``H×W×C`` (or ``H×W``) model-ready pixels.
        multiple: Size divisor of the network.

    Returns:
        ``float32`` probability map ``H×W`` or ``H×W×C'``, cropped back to the image.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    pixels = _as_hwc(image)
    height, width = pixels.shape[:2]
    padded = _pad_to(pixels, -(-height // multiple) * multiple, -(-width // multiple) * multiple)
    output = _run(predict_fn, padded[None], padded.shape[:2])[0]
    return _squeeze(output[:height, :width])
