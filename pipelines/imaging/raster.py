"""PNG, JPEG, BMP, TIFF and GIF: Pillow, with tifffile and OpenCV where Pillow would drop bits."""


from __future__ import annotations

import logging
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging.record import (
    _PILLOW_FORMATS,
    ImageRecord,
    _as_hwc,
    _channels_equal,
    _check_size,
    _minmax,
    _one_line,
)
from medlens.pipelines.imaging.sniff import _read_header

__all__: list[str] = []

logger = logging.getLogger(__name__)

def _scale_integer(array: np.ndarray, normalize: str, meta: dict[str, Any]) -> np.ndarray:
    """Scale an integer array wider than 8 bits (or float) to ``[0, 1]``."""
    meta["original_dtype"] = str(array.dtype)
    finite = array[np.isfinite(array)] if np.issubdtype(array.dtype, np.floating) else array
    meta["original_min"] = float(finite.min()) if finite.size else 0.0
    meta["original_max"] = float(finite.max()) if finite.size else 0.0
    if normalize == "dtype" and np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        meta["scaling"] = "dtype"
        scaled = (array.astype(np.float64) - info.min) / (float(info.max) - info.min)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)
    meta["scaling"] = "minmax"
    nonfinite = int(array.size - finite.size)
    if nonfinite:
        meta["nan_replaced"] = nonfinite
    scaled, _, _ = _minmax(array, finite_only=True)
    scaled[~np.isfinite(array)] = 0.0
    return scaled


def _composite_on_black(array: np.ndarray) -> np.ndarray:
    """Drop the last (alpha) channel of a uint8 array by compositing onto black."""
    colour = array[..., :-1].astype(np.float32)
    alpha = array[..., -1:].astype(np.float32) / 255.0
    return colour * alpha


def _pil_to_pixels(image: Any, normalize: str, meta: dict[str, Any]) -> np.ndarray:
    """Turn a loaded Pillow image into ``float32`` ``H×W×C`` in ``[0, 1]``."""
    mode = image.mode
    meta["mode"] = mode
    if mode == "P":
        has_alpha = "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
        array = np.asarray(image)
        rgb = _composite_on_black(array) if has_alpha else array.astype(np.float32)
        if _channels_equal(rgb):
            rgb = rgb[..., :1]  # a grey palette is a grey image
        return _as_hwc(rgb / 255.0)
    if mode == "1":
        return _as_hwc(np.asarray(image.convert("L"), dtype=np.float32) / 255.0)
    if mode == "L":
        return _as_hwc(np.asarray(image, dtype=np.float32) / 255.0)
    if mode in ("LA", "RGBA"):
        return _as_hwc(_composite_on_black(np.asarray(image)) / 255.0)
    if mode in ("La", "RGBa", "PA"):
        return _pil_to_pixels(image.convert("RGBA" if mode != "La" else "LA"), normalize, meta)
    if mode == "RGB":
        return _as_hwc(np.asarray(image, dtype=np.float32) / 255.0)
    if mode.startswith("I;16") or mode in ("I", "F"):
        array = np.asarray(image)
        if mode == "I" and array.size and array.min() >= 0 and array.max() <= 65535:
            array = array.astype(np.uint16)  # Pillow's "I" mode often holds 16-bit samples
        return _as_hwc(_scale_integer(array, normalize, meta))
    # CMYK, YCbCr, LAB, HSV and anything exotic: let Pillow make it RGB.
    return _as_hwc(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)


def _array_to_pixels(array: np.ndarray, normalize: str, meta: dict[str, Any]) -> np.ndarray:
    """Turn a decoded array (tifffile / OpenCV) into ``float32`` ``H×W×C`` in ``[0, 1]``."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (S, H, W) → (H, W, S)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (2, 3, 4)):
        raise ValueError(f"unsupported image array shape {array.shape}")
    meta["original_dtype"] = str(array.dtype)
    if array.ndim == 3 and array.shape[-1] in (2, 4):
        alpha_max = float(np.iinfo(array.dtype).max) if array.dtype.kind in "iu" else 1.0
        colour = array[..., :-1].astype(np.float64) * (array[..., -1:].astype(np.float64) / alpha_max)
        array = colour.astype(array.dtype) if np.issubdtype(array.dtype, np.integer) else colour
        if array.shape[-1] == 1:
            array = array[..., 0]
    if array.dtype == np.uint8:
        return _as_hwc(array.astype(np.float32) / 255.0)
    if array.dtype == np.bool_:
        return _as_hwc(array.astype(np.float32))
    return _as_hwc(_scale_integer(array, normalize, meta))


def _read_png16_colour(path: Path, normalize: str, meta: dict[str, Any]) -> np.ndarray:
    """Decode a 16-bit colour PNG with OpenCV, which keeps the full 16 bits."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise ImageReadError(path, "truncated or corrupt PNG data")
    if array.ndim == 3:
        order = [2, 1, 0, 3][: array.shape[-1]]  # BGR(A) → RGB(A)
        array = array[..., order]
    meta["decoder"] = "opencv"
    return _array_to_pixels(array, normalize, meta)


def _png_ihdr(path: Path) -> tuple[int, int, int, int] | None:
    """``(width, height, bit depth, colour type)`` from a PNG's IHDR chunk, or None when it has none."""
    header = _read_header(path)
    if len(header) < 26 or header[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", header[16:24])
    return width, height, header[24], header[25]


def _tiff_needs_tifffile(path: Path, page_index: int) -> bool:
    """True when a TIFF page holds samples wider than 8 bits, which Pillow would truncate."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if page_index >= len(tif.pages):
                return False
            page = tif.pages[page_index]
            return page.bitspersample > 8 or page.dtype.kind == "f"
    except Exception:  # noqa: BLE001 - let Pillow report on files tifffile cannot parse
        return False


def _read_tifffile(path: Path, page_index: int, normalize: str, meta: dict[str, Any]) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        if page_index >= len(tif.pages):
            raise ImageReadError(
                path, f"frame {page_index} out of range: the TIFF has {len(tif.pages)} pages"
            )
        page = tif.pages[page_index]
        _check_size(path, int(page.imagewidth), int(page.imagelength))
        array = page.asarray()
    meta["decoder"] = "tifffile"
    return _array_to_pixels(array, normalize, meta)


def _read_raster(path: Path, fmt: str, frame: int | None, normalize: str) -> ImageRecord:
    """Read PNG/JPEG/BMP/TIFF/GIF into an :class:`ImageRecord`."""
    from PIL import Image, ImageOps

    meta: dict[str, Any] = {"format": fmt}
    page = frame or 0
    ihdr = _png_ihdr(path) if fmt == "png" else None
    if ihdr is not None:
        # Checked here, before any decoder runs: OpenCV allocates the whole image up front.
        _check_size(path, ihdr[0], ihdr[1])
        # IHDR colour type 2 = RGB, 4 = grey+alpha, 6 = RGBA.
        if ihdr[2] == 16 and ihdr[3] in (2, 4, 6):
            pixels = _read_png16_colour(path, normalize, meta)
            return ImageRecord(pixels=pixels, path=str(path), meta=meta, frame=frame)
    if fmt == "tiff" and _tiff_needs_tifffile(path, page):
        try:
            pixels = _read_tifffile(path, page, normalize, meta)
            return ImageRecord(pixels=pixels, path=str(path), meta=meta, frame=frame)
        except ImageReadError:
            raise
        except Exception as exc:  # noqa: BLE001 - fall back to Pillow below
            logger.debug("tifffile could not read %s (%s); trying Pillow", path, exc)

    label = _PILLOW_FORMATS[fmt]
    try:
        with warnings.catch_warnings():
            # Our own MAX_IMAGE_PIXELS check replaces Pillow's warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[label]) as image:
                _check_size(path, *image.size)
                n_frames = int(getattr(image, "n_frames", 1))
                if page >= n_frames:
                    raise ImageReadError(
                        path, f"frame {page} out of range: the {label} has {n_frames} frame(s)"
                    )
                if page:
                    image.seek(page)
                image.load()
                orientation = image.getexif().get(0x0112) if fmt in ("jpeg", "tiff", "png") else None
                if orientation and orientation != 1:
                    meta["exif_orientation"] = int(orientation)
                    image = ImageOps.exif_transpose(image)
                meta["size"] = image.size
                pixels = _pil_to_pixels(image, normalize, meta)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image is too large to decode safely ({_one_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error...
        if fmt == "tiff":
            try:
                pixels = _read_tifffile(path, page, normalize, meta)
                return ImageRecord(pixels=pixels, path=str(path), meta=meta, frame=frame)
            except ImageReadError:
                raise
            except Exception:  # noqa: BLE001 - report Pillow's reason, it is the usual decoder
                pass
        raise ImageReadError(path, f"truncated or corrupt {label} data ({_one_line(exc)})") from exc
    return ImageRecord(pixels=pixels, path=str(path), meta=meta, frame=frame)
