"""A predicted mask described and cleaned: thresholding, small-component removal, statistics."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

__all__ = ["binarize", "postprocess", "mask_stats"]


def binarize(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Binary mask ``uint8`` (0/1) where ``prob >= threshold``."""
    return (np.asarray(prob) >= threshold).astype(np.uint8)


def postprocess(mask: np.ndarray, min_size: int = 0) -> np.ndarray:
    """Remove 8-connected foreground components smaller than ``min_size`` pixels.

    Args:
        mask: Binary ``H×W`` mask (nonzero is foreground).
        min_size: Smallest component kept; 0 or 1 keeps everything.

    Returns:
        ``uint8`` 0/1 mask.
    """
    binary = (np.asarray(mask) > 0).astype(np.uint8)
    if min_size <= 1 or not binary.any():
        return binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    keep = stats[:, cv2.CC_STAT_AREA] >= min_size
    keep[0] = False
    return keep[labels].astype(np.uint8)


def mask_stats(binary_mask: np.ndarray) -> dict[str, Any]:
    """Foreground fraction and 8-connected components of a binary mask.

    Returns:
        ``{"foreground_fraction", "foreground_pixels", "components", "largest_component"}``
        (the largest component's area in pixels, 0 for an empty mask).
    """
    binary = (np.asarray(binary_mask) > 0).astype(np.uint8)
    if binary.ndim != 2:
        raise ValueError(f"mask_stats expects an H×W mask, got shape {binary.shape}")
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    return {
        "foreground_fraction": float(binary.mean()) if binary.size else 0.0,
        "foreground_pixels": int(binary.sum()),
        "components": int(count - 1),
        "largest_component": int(areas.max()) if areas.size else 0,
    }
