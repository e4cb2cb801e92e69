"""Inputs at another scale than training: what a run was trained at, and the factor to match it.

Fundus cameras, scanners and exports differ in resolution: the same vessel can be 6 px wide in
training and 10 px in a hospital's images, and a model that learned one width misses the other.
A segmentation run records its training scale (``run.json: input_scale``):

- ``pixel_spacing_mm``: the median physical pixel size of the training images, when their
  files say it (DICOM ``PixelSpacing``, NIfTI voxel size);
- ``fov_diameter_px``: the median diameter of the field of view (the bright disc of a fundus
  photograph on its black surround), estimated by :func:`fov_diameter` — the same estimator
  at training and at inference, so its bias cancels.

``medlens segment --match-scale`` resamples every input by :func:`scale_factor` (spacing when
both the run and the input know it, else the FOV diameter), predicts, and resamples the
probabilities back to the input's own size, so outputs always match the input.

Example:
    factor, how = scale_factor(record, run_state["input_scale"])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import cv2
import numpy as np

from medlens.pipelines.imaging import ImageRecord

__all__ = ["fov_diameter", "training_scale", "scale_factor", "MAX_FACTOR"]

log = logging.getLogger(__name__)

#: Factors outside [1/MAX_FACTOR, MAX_FACTOR] are refused as implausible (a wrong tag, not a camera).
MAX_FACTOR = 4.0
_MAX_TRAINING_IMAGES = 64


def fov_diameter(pixels: np.ndarray) -> float | None:
    """Diameter (px) of the bright field of view on a dark surround, or ``None`` when there is none.

    The FOV is the largest connected region brighter than 15 % of the image's 99th-percentile
    luminance (after a light blur); its diameter is that of the disc of the same area. An image
    that is bright nearly everywhere (a chest X-ray, an MRI slice) has no such surround: ``None``.
    """
    grey = np.asarray(pixels, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    grey = cv2.GaussianBlur(grey, (0, 0), max(1.0, min(grey.shape) / 200))
    top = float(np.percentile(grey, 99))
    if top <= 0:
        return None
    inside = (grey > 0.15 * top).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(inside, connectivity=8)
    if count < 2:
        return None
    area = int(stats[1:, cv2.CC_STAT_AREA].max())
    if area > 0.95 * grey.size or area < 0.05 * grey.size:
        return None
    return float(2.0 * np.sqrt(area / np.pi))


def training_scale(images: Iterable[tuple[np.ndarray, tuple[float, float] | None]]) -> dict[str, Any]:
    """The run's ``input_scale`` from (pixels, spacing) of up to 64 training images."""
    diameters, spacings, seen = [], [], 0
    for pixels, spacing in images:
        if seen >= _MAX_TRAINING_IMAGES:
            break
        seen += 1
        diameter = fov_diameter(pixels)
        if diameter is not None:
            diameters.append(diameter)
        if spacing:
            spacings.append(float(np.mean(spacing)))
    return {
        "fov_diameter_px": round(float(np.median(diameters)), 2) if diameters else None,
        "pixel_spacing_mm": round(float(np.median(spacings)), 5) if spacings else None,
        "images": seen,
    }


def scale_factor(record: ImageRecord, scale: dict[str, Any]) -> tuple[float, str]:
    """The resampling factor that brings ``record`` to the training scale, and how it was found.

    Returns:
        ``(factor, method)``: factor > 1 enlarges; method ``spacing``, ``fov`` or ``none``
        (the input or the run says nothing usable: factor 1).
    """
    trained_spacing, trained_fov = scale.get("pixel_spacing_mm"), scale.get("fov_diameter_px")
    factor, method = 1.0, "none"
    if trained_spacing and record.spacing:
        factor, method = float(np.mean(record.spacing)) / float(trained_spacing), "spacing"
    elif trained_fov:
        diameter = fov_diameter(record.pixels)
        if diameter is not None:
            factor, method = float(trained_fov) / diameter, "fov"
    if not 1.0 / MAX_FACTOR <= factor <= MAX_FACTOR:
        log.warning("%s: scale factor %.2f (by %s) is implausible; predicting at the input's own scale",
                    record.path, factor, method)
        return 1.0, "none"
    return factor, method
