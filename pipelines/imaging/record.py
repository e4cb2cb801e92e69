"""The one form every reader returns (:class:`ImageRecord`), the limits, and the readers' shared helpers."""


from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medlens.pipelines.errors import ImageReadError, MedlensError

__all__ = ["ImageRecord", "MAX_IMAGE_PIXELS", "SUPPORTED_SUFFIXES", "Normalize"]

logger = logging.getLogger(__name__)

#: File suffixes :func:`list_images` picks up (matched case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".dcm", ".dicom", ".nii", ".nii.gz",
)

#: Largest image (width × height) the readers decode; larger files are refused
#: as possible decompression bombs. 100 MP is ~1.2 GB as float32 RGB.
MAX_IMAGE_PIXELS: int = 100_000_000

Normalize = Literal["minmax", "dtype"]

_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}
_RASTER_FORMATS = frozenset(_PILLOW_FORMATS)
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_HEADER_BYTES = 352


@dataclass
class ImageRecord:
    """One 2D image, ready for the rest of the pipeline.

    Attributes:
        pixels: ``float32`` array ``H×W×C`` with ``C`` 1 (grey) or 3 (RGB), values in ``[0, 1]``.
        path: The file the image came from.
        spacing: Physical pixel size ``(row, column)`` in millimetres, or ``None`` when unknown.
        meta: Format-specific facts (format, original dtype, DICOM tags, window used...).
        frame: Frame (DICOM) or slice (NIfTI) index within the file, or ``None`` for single images.
    """

    pixels: np.ndarray
    path: str
    spacing: tuple[float, float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    frame: int | None = None


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """Return the first line of an exception message, shortened, for an error reason.

    A first line that ends in ``:`` only announces the detail (pydicom's "exceptions were
    raised by all available plugins:"), so the next line is kept with it.
    """
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _minmax(values: np.ndarray, finite_only: bool = False) -> tuple[np.ndarray, float, float]:
    """Scale ``values`` linearly to ``[0, 1]``; a constant image becomes all zeros."""
    data = np.asarray(values, dtype=np.float64)
    finite = data[np.isfinite(data)] if finite_only else data
    if finite.size == 0:
        return np.zeros(data.shape, dtype=np.float32), 0.0, 0.0
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(data.shape, dtype=np.float32), low, high
    scaled = (data - low) / (high - low)
    return np.clip(scaled, 0.0, 1.0).astype(np.float32), low, high


def _as_hwc(array: np.ndarray) -> np.ndarray:
    """Give a 2D or ``H×W×C`` array the ``H×W×C`` float32 layout, ``C ∈ {1, 3}``."""
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array, dtype=np.float32)


def _channels_equal(rgb: np.ndarray) -> bool:
    """True when the first three channels of ``rgb`` are identical (a grey image stored as RGB)."""
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse images above :data:`MAX_IMAGE_PIXELS` before decoding them."""
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageReadError(
            path, f"image is {width}×{height} pixels, above the limit of {MAX_IMAGE_PIXELS} pixels"
        )


def _check_axis(axis: int) -> None:
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, not {axis!r}.")


@contextlib.contextmanager
def _wrap_errors(path: Path, fmt: str) -> Iterator[None]:
    """Turn any unexpected decoder exception into a one-line :class:`ImageReadError`."""
    try:
        yield
    except MedlensError:
        raise
    except Exception as exc:  # noqa: BLE001 - no decoder traceback may reach the user
        logger.debug("reading %s failed", path, exc_info=True)
        raise ImageReadError(
            path, f"cannot read {fmt} file ({type(exc).__name__}: {_one_line(exc)})"
        ) from exc


def _check_normalize(normalize: str) -> None:
    if normalize not in ("minmax", "dtype"):
        raise ValueError(f"normalize must be 'minmax' or 'dtype', not {normalize!r}.")


def _name_endswith(path: Path, *suffixes: str) -> bool:
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in suffixes)
