"""Heatmap overlays: explanation maps coloured and blended onto the original image.

Explanation maps come at the model's input size; overlays are drawn at the
*original* image's resolution, so the map is resized (bilinear) to the image,
never the image to the map. Everything returned is ``uint8`` RGB.

OpenCV's ``applyColorMap`` returns BGR; :func:`colorize` converts to RGB, so
with the ``"jet"`` map high values are red and low values blue.

Example:
    >>> import numpy as np
    >>> original = np.zeros((37, 53), np.uint16)
    >>> heatmap_overlay(original, np.ones((7, 7))).shape
    (37, 53, 3)
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np

from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["to_rgb_uint8", "colorize", "heatmap_overlay", "signed_overlay", "mask_overlay", "save_png", "save_npy"]

logger = logging.getLogger(__name__)

_POSITIVE = np.array([0.0, 255.0, 0.0], np.float32)  # green
_NEGATIVE = np.array([255.0, 0.0, 0.0], np.float32)  # red


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Any 2-D image as displayable ``uint8`` ``H×W×3`` RGB.

    Args:
        image: ``H×W``, ``H×W×1``, ``H×W×3`` or ``H×W×4`` (alpha dropped), as
            ``uint8``; float in ``[0, 1]`` (float with values above 1 is taken as
            ``0..255``); bool; or wider integers such as ``uint16``, which are
            stretched from their own minimum to maximum (medical 16-bit images rarely
            use the full range, so dividing by 65535 would show black).

    Returns:
        ``uint8`` ``H×W×3``.

    Raises:
        ValueError: Unsupported shape.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[:, :, :3]
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"image must be H×W, H×W×1, H×W×3 or H×W×4; got shape {np.shape(image)}")
    if array.dtype == np.uint8:
        result = array
    elif array.dtype == np.bool_:
        result = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.integer):
        low, high = float(array.min()), float(array.max())
        scaled = (array.astype(np.float64) - low) / (high - low) if high > low else np.zeros(array.shape)
        result = np.rint(scaled * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        values = np.nan_to_num(array.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.size and values.max() > 1.0:
            logger.debug("float image with values above 1: treated as 0..255")
            values = values / 255.0
        result = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        raise ValueError(f"unsupported image dtype {array.dtype}")
    if result.ndim == 2:
        result = np.repeat(result[:, :, None], 3, axis=2)
    return np.ascontiguousarray(result)


def _colormap(name: str) -> int:
    code = getattr(cv2, f"COLORMAP_{name.upper()}", None)
    if not isinstance(code, int):
        raise ValueError(f"unknown colormap {name!r}; use an OpenCV name such as 'jet', 'turbo', 'inferno'")
    return code


def _resized(heatmap: np.ndarray, height: int, width: int) -> np.ndarray:
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"heatmap must be 2-D; got shape {np.shape(heatmap)}")
    array = np.nan_to_num(array, nan=0.0, posinf=0.0, neginf=0.0)
    if array.shape != (height, width):
        array = cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)
    return array


def colorize(heatmap: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Colour a ``[0, 1]`` map with an OpenCV colour map, returned in RGB order.

    Values outside ``[0, 1]`` are clipped, NaN counts as 0.

    Args:
        heatmap: ``H×W`` float map in ``[0, 1]``.
        colormap: OpenCV colour map name (``"jet"``, ``"turbo"``, ``"inferno"``, ...).

    Returns:
        ``uint8`` ``H×W×3`` RGB.

    Example:
        >>> colorize(np.array([[1.0]]))[0, 0].tolist()  # jet: high is red
        [128, 0, 0]
    """
    array = np.asarray(heatmap, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"heatmap must be 2-D; got shape {np.shape(heatmap)}")
    levels = np.rint(np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    bgr = cv2.applyColorMap(levels, _colormap(colormap))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _check_alpha(alpha: float) -> float:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return float(alpha)


def heatmap_overlay(
    original: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, colormap: str = "jet"
) -> np.ndarray:
    """Blend a coloured heatmap onto the original image, at the original's resolution.

    Args:
        original: The image as read (see :func:`to_rgb_uint8` for accepted forms).
        heatmap: 2-D map in ``[0, 1]`` of any size; resized bilinearly to the original.
        alpha: Weight of the heatmap colour (0: the original alone, 1: the colour alone).
        colormap: OpenCV colour map name.

    Returns:
        ``uint8`` ``H×W×3`` RGB with the original's height and width.

    Raises:
        ValueError: Bad shapes, alpha or colour map.
    """
    alpha = _check_alpha(alpha)
    rgb = to_rgb_uint8(original)
    height, width = rgb.shape[:2]
    colour = colorize(_resized(heatmap, height, width), colormap)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * colour.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def signed_overlay(original: np.ndarray, signed_map: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """Tint a signed map in ``[-1, 1]`` (LIME's ``map``) onto the original: green positive, red negative.

    The tint's strength is ``alpha × |value|``, so regions with zero weight show
    the original unchanged.

    Args:
        original: The image as read (see :func:`to_rgb_uint8`).
        signed_map: 2-D map in ``[-1, 1]`` of any size; resized bilinearly.
        alpha: Tint strength at ``|value| = 1``.

    Returns:
        ``uint8`` ``H×W×3`` RGB at the original's resolution.
    """
    alpha = _check_alpha(alpha)
    rgb = to_rgb_uint8(original).astype(np.float32)
    height, width = rgb.shape[:2]
    values = np.clip(_resized(signed_map, height, width), -1.0, 1.0)
    colour = np.where((values >= 0)[..., None], _POSITIVE, _NEGATIVE)
    strength = (alpha * np.abs(values))[..., None]
    blended = (1.0 - strength) * rgb + strength * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def mask_overlay(original: np.ndarray, mask: np.ndarray, alpha: float = 0.4,
                 colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """Tint a binary mask onto the original and outline it, at the original's resolution.

    Args:
        original: The image as read (see :func:`to_rgb_uint8`).
        mask: ``H×W`` mask of the original's size (nonzero is foreground).
        alpha: Tint strength inside the mask.
        colour: RGB tint and outline colour.

    Returns:
        ``uint8`` ``H×W×3`` RGB.

    Raises:
        ValueError: The mask's size differs from the image's.
    """
    alpha = _check_alpha(alpha)
    rgb = to_rgb_uint8(original)
    inside = np.asarray(mask) > 0
    if inside.shape != rgb.shape[:2]:
        raise ValueError(f"mask is {inside.shape}, the image {rgb.shape[:2]}")
    tint = np.array(colour, np.float32)
    blended = rgb.astype(np.float32)
    blended[inside] = (1.0 - alpha) * blended[inside] + alpha * tint
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    contours, _ = cv2.findContours(inside.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in colour), max(1, round(max(out.shape[:2]) / 400)))
    return out


def save_png(path: str | Path, rgb_uint8: np.ndarray) -> Path:
    """Write a ``uint8`` RGB (or ``uint8``/``uint16`` grey ``H×W``) image as PNG, atomically.

    Raises:
        ValueError: Not ``uint8`` or not ``H×W``/``H×W×3``.
    """
    array = np.asarray(rgb_uint8)
    if array.dtype == np.uint16 and array.ndim == 2:
        pass  # 16-bit grey, e.g. a probability map scaled to 0..65535
    elif array.dtype != np.uint8:
        raise ValueError(f"save_png needs uint8 pixels; got {array.dtype} (use to_rgb_uint8 first)")
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(np.ascontiguousarray(array), cv2.COLOR_RGB2BGR)
    elif array.ndim != 2:
        raise ValueError(f"save_png needs H×W or H×W×3; got shape {array.shape}")
    ok, encoded = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise ValueError(f"{path}: could not encode PNG")
    return atomic_write_bytes(path, encoded.tobytes())


def save_npy(path: str | Path, array: np.ndarray) -> Path:
    """Write an array in ``.npy`` format to exactly ``path``, atomically (no pickles)."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())
