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

A classifier resizes every input to its own input size, so what it needs matched is the *field*
the input covers: ``image_size_px`` (the training images' median size) divided by the factor is
the part of the input that shows what a training image showed. ``medlens predict --match-scale``
crops (or pads, with black) each input to that box — :func:`field_box`, centred on the field of
view, or on the image when the factor came from the spacing — predicts on it, and puts every
explanation map back in the input's own frame (:func:`paste_from_box`).

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

__all__ = ["fov_diameter", "fov_circle", "training_scale", "source_scale", "scale_factor", "require_scale",
           "field_box", "field_pixels", "to_input_frame", "crop_to_box", "paste_from_box", "MAX_FACTOR"]

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
    circle = fov_circle(pixels)
    return None if circle is None else circle[0]


def fov_circle(pixels: np.ndarray) -> tuple[float, tuple[float, float]] | None:
    """:func:`fov_diameter` and the field's centre ``(row, column)``, or ``None``."""
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
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    area = int(stats[largest, cv2.CC_STAT_AREA])
    if area > 0.95 * grey.size or area < 0.05 * grey.size:
        return None
    rows, columns = np.nonzero(labels == largest)
    return float(2.0 * np.sqrt(area / np.pi)), (float(rows.mean()), float(columns.mean()))


def training_scale(images: Iterable[tuple[np.ndarray, tuple[float, float] | None]]) -> dict[str, Any]:
    """The run's ``input_scale`` from (pixels, spacing) of up to 64 training images (medians)."""
    diameters, spacings, sizes, seen = [], [], [], 0
    for pixels, spacing in images:
        if seen >= _MAX_TRAINING_IMAGES:
            break
        seen += 1
        sizes.append(np.asarray(pixels).shape[:2])
        diameter = fov_diameter(pixels)
        if diameter is not None:
            diameters.append(diameter)
        if spacing:
            spacings.append(float(np.mean(spacing)))
    return {
        "fov_diameter_px": round(float(np.median(diameters)), 2) if diameters else None,
        "pixel_spacing_mm": round(float(np.median(spacings)), 5) if spacings else None,
        "image_size_px": [int(np.median([h for h, _ in sizes])), int(np.median([w for _, w in sizes]))] if sizes else None,
        "images": seen,
    }


def scale_factor(record: ImageRecord, scale: dict[str, Any], *,
                 circle: tuple[float, tuple[float, float]] | None = None) -> tuple[float, str]:
    """The resampling factor that brings ``record`` to the training scale, and how it was found.

    ``circle``: the record's :func:`fov_circle`, when the caller has it (else found here if needed).

    Returns:
        ``(factor, method)``: factor > 1 enlarges; method ``spacing``, ``fov`` or ``none``
        (the input or the run says nothing usable: factor 1).
    """
    trained_spacing, trained_fov = scale.get("pixel_spacing_mm"), scale.get("fov_diameter_px")
    factor, method = 1.0, "none"
    if trained_spacing and record.spacing:
        factor, method = float(np.mean(record.spacing)) / float(trained_spacing), "spacing"
    elif trained_fov:
        circle = circle or fov_circle(record.pixels)
        if circle is not None:
            factor, method = float(trained_fov) / circle[0], "fov"
    if not 1.0 / MAX_FACTOR <= factor <= MAX_FACTOR:
        log.warning("%s: scale factor %.2f (by %s) is implausible; predicting at the input's own scale",
                    record.path, factor, method)
        return 1.0, "none"
    return factor, method


def source_scale(source: Any) -> dict[str, Any]:
    """:func:`training_scale` of training images: a sequence of files (read with their spacing), or a
    source of arrays (``len`` and ``load(index)``; no spacing)."""
    from medlens.pipelines.errors import MedlensError
    from medlens.pipelines.imaging import read_image

    paths = source if isinstance(source, (list, tuple)) else getattr(source, "paths", None)

    def images() -> Iterable[tuple[np.ndarray, tuple[float, float] | None]]:
        for index in range(min(len(source), _MAX_TRAINING_IMAGES)):
            try:
                if paths is None:
                    yield source.load(index), None
                else:
                    record = read_image(paths[index])
                    yield record.pixels, record.spacing
            except MedlensError:
                continue  # training read it; a file gone since is not this summary's business

    return training_scale(images())


def require_scale(run_root: Any, scale: dict[str, Any] | None, *, field: bool = False) -> dict[str, Any]:
    """The run's ``input_scale``, or the one-line error ``--match-scale`` gives when there is none to match.

    ``field``: a classifier also needs the training images' size (recorded since 2026-12-07).
    """
    scale = scale or {}
    if not (scale.get("pixel_spacing_mm") or scale.get("fov_diameter_px")) or (field and not scale.get("image_size_px")):
        from medlens.pipelines.errors import ConfigError

        raise ConfigError(f"{run_root}: the run recorded no training scale (no pixel spacing, no field of view in "
                          "its images, or trained before medlens recorded it); --match-scale needs one")
    return scale


def field_box(record: ImageRecord, scale: dict[str, Any]) -> tuple[tuple[int, int, int, int] | None, float, str]:
    """The part of ``record`` that shows what a training image of a classifier showed.

    Returns:
        ``(box, factor, method)``: ``box`` is ``(top, left, height, width)`` in the record's pixels
        (it may reach past the image: that part is padded), ``None`` when there is nothing to match
        (method ``none``) or the run recorded no training image size.
    """
    size = scale.get("image_size_px")
    by_spacing = bool(scale.get("pixel_spacing_mm") and record.spacing)
    circle = None if by_spacing or not scale.get("fov_diameter_px") else fov_circle(record.pixels)
    factor, method = scale_factor(record, scale, circle=circle)
    if method == "none" or not size:
        return None, 1.0, "none"
    height, width = (max(1, round(float(v) / factor)) for v in size)
    rows, columns = record.pixels.shape[:2]
    centre = circle[1] if method == "fov" and circle else ((rows - 1) / 2.0, (columns - 1) / 2.0)
    top, left = round(centre[0] - (height - 1) / 2.0), round(centre[1] - (width - 1) / 2.0)
    return (int(top), int(left), int(height), int(width)), factor, method


def crop_to_box(pixels: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """``pixels[top:top+height, left:left+width]``, black where the box reaches past the image."""
    top, left, height, width = box
    out = np.zeros((height, width, *pixels.shape[2:]), dtype=pixels.dtype)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(pixels.shape[0], top + height), min(pixels.shape[1], left + width)
    if r1 > r0 and c1 > c0:
        out[r0 - top:r1 - top, c0 - left:c1 - left] = pixels[r0:r1, c0:c1]
    return out


def paste_from_box(array: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
                   interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """A map of the box (any size) back in the image's frame ``shape``: resized to the box, zero outside it."""
    top, left, height, width = box
    resized = cv2.resize(np.asarray(array, np.float32), (width, height), interpolation=interpolation)
    out = np.zeros((*shape, *resized.shape[2:]), np.float32)
    r0, c0 = max(0, top), max(0, left)
    r1, c1 = min(shape[0], top + height), min(shape[1], left + width)
    if r1 > r0 and c1 > c0:
        out[r0:r1, c0:c1] = resized[r0 - top:r1 - top, c0 - left:c1 - left]
    return out


def field_pixels(record: ImageRecord) -> np.ndarray:
    """The pixels a classifier sees: the record's matched field (``meta["field_box"]``), else the whole image."""
    box = record.meta.get("field_box")
    return record.pixels if box is None else crop_to_box(record.pixels, box)


def to_input_frame(array: np.ndarray, record: ImageRecord, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """A map made at the model's size, in the frame of the record's own pixels (through its field box, if any)."""
    shape = record.pixels.shape[:2]
    box = record.meta.get("field_box")
    if box is not None:
        return paste_from_box(array, box, shape, interpolation)
    return cv2.resize(np.asarray(array, np.float32), (shape[1], shape[0]), interpolation=interpolation)
