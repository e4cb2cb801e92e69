"""Read medical images from disk into one common form.

Every reader returns an :class:`ImageRecord` whose ``pixels`` are ``float32``
``H×W×C`` with ``C ∈ {1, 3}`` and values in ``[0, 1]``. The format of a file is
sniffed from its content (magic bytes), never trusted from its extension, so a
PNG named ``.jpg`` reads as the PNG it is.

Supported inputs:

- PNG, JPEG, BMP, TIFF, GIF through Pillow (tifffile for TIFFs whose samples are
  wider than 8 bits, which Pillow would reduce to 8 bits, or that Pillow cannot
  open; OpenCV for 16-bit colour PNGs for the same reason);
- DICOM through pydicom (modality LUT / rescale, then VOI LUT or window, then
  MONOCHROME1 inversion);
- NIfTI (``.nii``, ``.nii.gz``) through nibabel, one 2D slice at a time;
- MedMNIST ``.npz`` archives through :func:`read_npz` (whole datasets, not images).

Every failure a user can cause (a missing, empty, truncated or unsupported file)
raises :class:`~medlens.pipelines.errors.ImageReadError` with a one-line reason;
Pillow, pydicom and nibabel exceptions never escape.

Example:
    from medlens.pipelines.io import read_image
    record = read_image("scan.dcm")
    record.pixels.shape, record.pixels.dtype
    # ((512, 512, 1), dtype('float32'))
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import math
import os
import re
import stat
import struct
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medlens.pipelines.errors import ImageReadError, MedlensError

__all__ = [
    "ImageRecord",
    "MAX_IMAGE_PIXELS",
    "MAX_VOLUME_VOXELS",
    "SUPPORTED_SUFFIXES",
    "list_images",
    "read_frames",
    "read_image",
    "read_mask",
    "read_npz",
    "sniff_format",
]

logger = logging.getLogger(__name__)

#: File suffixes :func:`list_images` picks up (matched case-insensitively).
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    ".dcm",
    ".dicom",
    ".nii",
    ".nii.gz",
)

#: Largest image (width × height) the readers decode; larger files are refused
#: as possible decompression bombs. 100 MP is ~1.2 GB as float32 RGB.
MAX_IMAGE_PIXELS: int = 100_000_000

#: Largest NIfTI volume (voxels of the one 3D volume read) the reader loads; a 512×512×1000
#: CT is 262 M voxels. Larger headers are refused before any voxel is read.
MAX_VOLUME_VOXELS: int = 1_000_000_000

Normalize = Literal["minmax", "dtype"]

_PILLOW_FORMATS = {"png": "PNG", "jpeg": "JPEG", "bmp": "BMP", "tiff": "TIFF", "gif": "GIF"}
_RASTER_FORMATS = frozenset(_PILLOW_FORMATS)
_BMP_DIB_HEADER_SIZES = frozenset({12, 16, 40, 52, 56, 64, 108, 124})
_NPZ_SPLITS = ("train", "val", "test")
_HEADER_BYTES = 352
#: pydicom names some decoder dependencies by import name; pip knows them as these.
_PIP_NAMES = {"gdcm": "python-gdcm"}


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


# --------------------------------------------------------------------------- helpers


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


# --------------------------------------------------------------------------- sniffing


def _read_header(path: Path) -> bytes:
    """Read the first bytes of ``path``, turning OS errors into :class:`ImageReadError`.

    Only regular files (or symlinks to them) are opened: a FIFO would block forever.
    """
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ImageReadError(path, "symbolic link loop (the link leads back to itself)") from None
        if path.is_symlink():
            raise ImageReadError(
                path, f"broken symbolic link (its target {os.readlink(path)} does not exist)"
            ) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ImageReadError(path, "file not found") from None
        raise ImageReadError(path, f"cannot open file ({exc.strerror or _one_line(exc)})") from None
    if stat.S_ISDIR(info.st_mode):
        raise ImageReadError(path, "is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise ImageReadError(path, "not a regular file (a FIFO, socket or device); give an image file")
    try:
        with open(path, "rb") as handle:
            return handle.read(_HEADER_BYTES)
    except OSError as exc:
        raise ImageReadError(path, f"cannot open file ({exc.strerror or _one_line(exc)})") from exc


def _is_gzipped_nifti(path: Path) -> bool:
    try:
        with gzip.open(path, "rb") as handle:
            header = handle.read(_HEADER_BYTES)
    except (OSError, EOFError, zlib.error):
        return False
    return _nifti_magic(header)


def _nifti_magic(header: bytes) -> bool:
    return header[344:348] in (b"n+1\x00", b"ni1\x00") or header[4:8] in (b"n+2\x00", b"ni2\x00")


def _dicom_without_preamble(path: Path) -> bool:
    """True when pydicom can force-read ``path`` as a DICOM data set with image tags."""
    import pydicom

    try:
        dataset = pydicom.dcmread(path, force=True, stop_before_pixels=True)
    except Exception:  # noqa: BLE001 - any failure just means "not DICOM"
        return False
    try:
        return any(tag in dataset for tag in ("SOPClassUID", "Rows", "Modality", "PatientID"))
    except Exception:  # noqa: BLE001 - a garbled data set is not DICOM either
        return False


def sniff_format(path: str | os.PathLike[str]) -> str:
    """Tell a file's format from its content.

    Args:
        path: The file to inspect.

    Returns:
        One of ``"png"``, ``"jpeg"``, ``"bmp"``, ``"tiff"``, ``"gif"``, ``"dicom"``, ``"nifti"``, ``"npz"``.

    Raises:
        ImageReadError: The file is missing, empty, unreadable or of no supported format.

    Example:
        sniff_format("no/No15.jpg")  # a PNG named .jpg
        # 'png'
    """
    path = Path(path)
    header = _read_header(path)
    if not header:
        raise ImageReadError(path, "file is empty (0 bytes)")
    # DICOM first: its 128-byte preamble may itself hold a TIFF header (dual-format files).
    if header[128:132] == b"DICM":
        return "dicom"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if header.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if header[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if header[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if header[:2] == b"BM" and len(header) >= 18:
        if int.from_bytes(header[14:18], "little") in _BMP_DIB_HEADER_SIZES:
            return "bmp"
    if _nifti_magic(header):
        return "nifti"
    if header.startswith(b"\x1f\x8b"):
        if _name_endswith(path, ".nii.gz") and _is_gzipped_nifti(path):
            return "nifti"
        raise ImageReadError(path, "gzip-compressed file that is not a readable NIfTI image (.nii.gz)")
    if header[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        if _name_endswith(path, ".npz"):
            return "npz"
        raise ImageReadError(path, "zip archive, not an image (only .npz archives are supported)")
    if _name_endswith(path, ".dcm", ".dicom") and _dicom_without_preamble(path):
        return "dicom"
    claimed = "".join(path.suffixes[-2:]) if path.suffix else "no extension"
    raise ImageReadError(
        path,
        f"content is not a supported image format (file named {claimed}, starts with {header[:8]!r})",
    )


# --------------------------------------------------------------------------- raster formats


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


# --------------------------------------------------------------------------- DICOM


def _dicom_text(dataset: Any, keyword: str) -> str | None:
    value = dataset.get(keyword)
    return None if value is None or value == "" else str(value)


def _dicom_spacing(dataset: Any) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = dataset.get(keyword)
        try:
            if value is not None and len(value) == 2:
                return (float(value[0]), float(value[1])), keyword
        except (TypeError, ValueError):
            continue
    return None, None


def _open_dicom(path: Path) -> Any:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        dataset = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on bad files
        raise ImageReadError(path, f"corrupt DICOM file ({_one_line(exc)})") from exc
    if "TransferSyntaxUID" not in dataset.file_meta:
        # Preamble-less files carry no file meta; use the encoding pydicom detected.
        implicit = getattr(dataset, "original_encoding", (True, True))[0]
        dataset.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return dataset


#: DICOM objects that carry pixels but are not images to classify or segment (a medlens result, say).
_NOT_IMAGES = {"1.2.840.10008.5.1.4.1.1.66.4": "a DICOM Segmentation (SEG)",
               "1.2.840.10008.5.1.4.1.1.66.5": "a DICOM Surface Segmentation",
               "1.2.840.10008.5.1.4.1.1.30": "a DICOM Parametric Map",
               "1.2.840.10008.5.1.4.1.1.481.3": "an RT Structure Set"}


def _decode_dicom(path: Path, dataset: Any) -> np.ndarray:
    kind = _NOT_IMAGES.get(str(dataset.get("SOPClassUID", "")))
    if kind:
        raise ImageReadError(path, f"is {kind}, not an image to read")
    if not any(tag in dataset for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageReadError(path, "DICOM file has no pixel data")
    syntax = dataset.file_meta.TransferSyntaxUID
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise ImageReadError(path, "DICOM file has pixel data but no Rows/Columns") from exc
    _check_size(path, columns, rows)
    try:
        return np.asarray(dataset.pixel_array)
    except Exception as exc:  # noqa: BLE001 - decoder plugins raise RuntimeError, ValueError...
        if getattr(syntax, "is_compressed", False) and not _decoder_available(syntax):
            raise ImageReadError(
                path,
                f"cannot decode {syntax.name} ({syntax}) pixel data: no decoder installed; "
                f"{_decoder_install_hint(syntax)}",
            ) from exc
        name = f"{syntax.name} " if getattr(syntax, "is_compressed", False) else ""
        raise ImageReadError(path, f"corrupt DICOM {name}pixel data ({_one_line(exc)})") from exc


def _decoder_available(syntax: Any) -> bool:
    """True when pydicom has a working decoder plugin for ``syntax``."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(syntax).is_available)
    except Exception:  # noqa: BLE001 - unknown transfer syntax: no decoder
        return False


def _decoder_install_hint(syntax: Any) -> str:
    """``pip install`` commands that add a decoder for ``syntax`` (from the plugins pydicom lists as missing)."""
    from pydicom.pixels import get_decoder

    generic = (
        "install pylibjpeg (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg) "
        "or gdcm (pip install python-gdcm)"
    )
    try:
        missing = list(get_decoder(syntax).missing_dependencies)
    except Exception:  # noqa: BLE001 - unknown transfer syntax: no plugin list
        return generic
    commands = []
    for entry in missing:  # e.g. "pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0"
        _, _, needs = entry.partition(" - requires ")
        names = [re.split(r"[<>=!~ ]", part.strip(), maxsplit=1)[0] for part in needs.split(" and ")]
        names = [_PIP_NAMES.get(name, name) for name in names if name and name != "numpy"]
        if names:
            commands.append("pip install " + " ".join(names))
    return ", or ".join(commands) if commands else generic


def _unit_range(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map ``[low, high]`` (a VOI output range) linearly onto ``[0, 1]``."""
    if high <= low:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _dicom_grey(path: Path, dataset: Any, frames: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Modality LUT, VOI (LUT or window, else min–max over all frames) and MONOCHROME1 inversion."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, apply_windowing

    values = apply_modality_lut(frames, dataset)
    if "ModalityLUTSequence" in dataset:
        meta["modality_lut"] = "sequence"
    elif "RescaleSlope" in dataset or "RescaleIntercept" in dataset:
        meta["modality_lut"] = {
            "slope": float(dataset.get("RescaleSlope", 1.0) or 1.0),
            "intercept": float(dataset.get("RescaleIntercept", 0.0) or 0.0),
        }
    # Float pixel data or a NaN rescale can hold NaN/inf: scale over the finite values, then 0.
    nonfinite = ~np.isfinite(values) if values.dtype.kind == "f" else None
    if nonfinite is not None and nonfinite.any():
        if nonfinite.all():
            rescale = meta.get("modality_lut")
            if isinstance(rescale, dict):
                raise ImageReadError(
                    path,
                    f"DICOM pixel values are all NaN or infinite after rescale "
                    f"(slope {rescale['slope']}, intercept {rescale['intercept']})",
                )
            raise ImageReadError(path, "DICOM pixel values are all NaN or infinite")
        meta["nan_replaced"] = int(nonfinite.sum())
        values = np.where(nonfinite, values[~nonfinite].min(), values)
    else:
        nonfinite = None
    scaled: np.ndarray | None = None
    try:
        voi_sequence = dataset.get("VOILUTSequence")
        if voi_sequence:
            item = voi_sequence[0]
            count, first = int(item.LUTDescriptor[0]) or 65536, int(item.LUTDescriptor[1])
            lut_input = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
            out = apply_voi_lut(lut_input, dataset, index=0, prefer_lut=True)
            # The LUT's output range: run every input it maps (first value read unsigned or signed).
            starts = {first, first - 65536 if first >= 32768 else first}
            probe = np.concatenate([np.arange(start, start + count, dtype=np.int64) for start in starts])
            lut_out = apply_voi_lut(probe, dataset, index=0, prefer_lut=True)
            low, high = float(lut_out.min()), float(lut_out.max())
            meta["window"] = {
                "voi_lut": str(item.get("LUTExplanation", "")) or "VOI LUT 0",
                "range": (low, high),
            }
            scaled = _unit_range(out, low, high)
        elif "WindowCenter" in dataset and "WindowWidth" in dataset:
            center_value, width_value = dataset.WindowCenter, dataset.WindowWidth
            center = float(center_value[0] if dataset["WindowCenter"].VM > 1 else center_value)
            width = float(width_value[0] if dataset["WindowWidth"].VM > 1 else width_value)
            if width <= 0:
                raise ValueError(f"window width {width} is not positive")
            out = apply_windowing(values, dataset, 0)
            # pydicom maps the window onto the stored bit range; probe far outside it to read that range.
            reach = 50.0 * max(width, 1.0) + abs(center)
            bounds = apply_windowing(np.array([center - reach, center + reach]), dataset, 0)
            function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
            meta["window"] = {"center": center, "width": width, "function": function}
            scaled = _unit_range(out, float(bounds.min()), float(bounds.max()))
    except Exception as exc:  # noqa: BLE001 - a broken VOI never stops reading; min–max instead
        logger.warning("%s: ignoring unusable VOI LUT/window (%s); using min-max", path, _one_line(exc))
        meta["voi_error"] = _one_line(exc)
        scaled = None
    if scaled is None:
        scaled, low, high = _minmax(values)
        meta["window"] = {"minmax": (low, high)}
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    invert = photometric == "MONOCHROME1"
    if str(dataset.get("PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    if invert:
        scaled = 1.0 - scaled
        meta["inverted"] = True
    scaled = np.array(scaled, dtype=np.float32)
    if nonfinite is not None:
        scaled[nonfinite] = 0.0
    return scaled


def _dicom_colour(dataset: Any, frames: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Scale colour DICOM samples (already RGB after pydicom's decoding) to ``[0, 1]``."""
    from pydicom.pixels import apply_color_lut

    photometric = str(dataset.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        frames = apply_color_lut(frames, dataset)
        bits = 8 if frames.dtype == np.uint8 else 16
    else:
        bits = int(dataset.get("BitsStored", 8) or 8)
        if photometric.startswith("YBR") and photometric not in ("YBR_ICT", "YBR_RCT"):
            meta["colour_converted"] = "pydicom"
    return np.clip(frames.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)


def _read_dicom(path: Path, frame: int | None, all_frames: bool) -> list[ImageRecord]:
    dataset = _open_dicom(path)
    array = _decode_dicom(path, dataset)
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    n_frames = int(dataset.get("NumberOfFrames", 1) or 1)
    frames = array if n_frames > 1 else array[None]
    meta: dict[str, Any] = {
        "format": "dicom",
        "modality": _dicom_text(dataset, "Modality"),
        "photometric": photometric,
        "patient_id": _dicom_text(dataset, "PatientID"),
        "study_instance_uid": _dicom_text(dataset, "StudyInstanceUID"),
        "series_instance_uid": _dicom_text(dataset, "SeriesInstanceUID"),
        "sop_instance_uid": _dicom_text(dataset, "SOPInstanceUID"),
        "number_of_frames": n_frames,
        "transfer_syntax": str(dataset.file_meta.TransferSyntaxUID.name),
        "original_dtype": str(array.dtype),
    }
    wanted = list(range(n_frames)) if all_frames else [0 if frame is None else frame]
    for index in wanted:
        if not 0 <= index < n_frames:
            raise ImageReadError(path, f"frame {index} out of range: the DICOM has {n_frames} frame(s)")
    if samples == 1 and photometric != "PALETTE COLOR":
        # Min–max (when no window is given) runs over every frame, so frames share one scale.
        pixels = _dicom_grey(path, dataset, frames, meta)[..., None]
    else:
        pixels = _dicom_colour(dataset, frames, meta)
        if pixels.ndim == 3:
            pixels = pixels[..., None]
    spacing, source = _dicom_spacing(dataset)
    if source:
        meta["spacing_source"] = source
    single = n_frames == 1 and not all_frames and frame is None
    return [
        ImageRecord(
            pixels=np.ascontiguousarray(pixels[index]),
            path=str(path),
            spacing=spacing,
            meta=dict(meta),
            frame=None if single else index,
        )
        for index in wanted
    ]


# --------------------------------------------------------------------------- NIfTI


def _check_nifti_size(path: Path, image: Any, shape: tuple[int, ...]) -> None:
    """Refuse, from the header alone, volumes above :data:`MAX_VOLUME_VOXELS` and truncated ``.nii`` files."""
    volume = shape[:3]
    voxels = math.prod(volume)
    if voxels > MAX_VOLUME_VOXELS:
        raise ImageReadError(
            path,
            f"volume is {'×'.join(map(str, volume))} voxels, above the limit of {MAX_VOLUME_VOXELS} voxels",
        )
    if _name_endswith(path, ".gz"):
        return  # the uncompressed size is only known by decompressing; the voxel limit bounds it
    needed = int(image.header.get_data_offset()) + math.prod(shape) * image.header.get_data_dtype().itemsize
    size = path.stat().st_size
    if size < needed:
        raise ImageReadError(
            path, f"truncated NIfTI file: the header promises {needed} bytes, the file has {size}"
        )


def _read_nifti(path: Path, axis: int, index: int | None, all_slices: bool) -> list[ImageRecord]:
    import nibabel

    meta: dict[str, Any] = {"format": "nifti"}
    try:
        image = nibabel.load(str(path))
        shape = tuple(int(s) for s in image.shape)
        zooms = tuple(float(z) for z in image.header.get_zooms())
        _check_nifti_size(path, image, shape)
        if len(shape) > 4 and all(s == 1 for s in shape[4:]):
            shape = shape[:4]
        if len(shape) == 4:
            meta["n_volumes"] = shape[3]
            meta["volume"] = 0
            logger.info("%s: 4D NIfTI with %d volumes; reading the first", path, shape[3])
            data = np.asanyarray(image.dataobj[..., 0], dtype=np.float64)
        elif len(shape) in (2, 3):
            data = np.asanyarray(image.dataobj, dtype=np.float64).reshape(shape)
        else:
            raise ImageReadError(path, f"NIfTI image has {len(shape)} dimensions {shape}; expected 2, 3 or 4")
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad files
        raise ImageReadError(path, f"corrupt NIfTI file ({_one_line(exc)})") from exc
    if data.ndim == 2:
        data = data[:, :, None]
        axis = 2
    meta["shape"] = tuple(data.shape)
    nonfinite = int(np.count_nonzero(~np.isfinite(data)))
    if nonfinite and nonfinite == data.size:
        raise ImageReadError(path, "NIfTI volume has no finite voxel values (all NaN or infinite)")
    if nonfinite:
        meta["nan_replaced"] = nonfinite
    # One scale for the whole volume, so slices stay comparable.
    scaled, low, high = _minmax(data, finite_only=True)
    scaled[~np.isfinite(data)] = 0.0
    meta["window"] = {"minmax": (low, high)}
    count = data.shape[axis]
    wanted = list(range(count)) if all_slices else [count // 2 if index is None else index]
    for position in wanted:
        if not 0 <= position < count:
            raise ImageReadError(path, f"slice {position} out of range 0..{count - 1} along axis {axis}")
    others = [a for a in range(3) if a != axis]
    spacing = None
    if len(zooms) >= 3 or (len(zooms) == 2 and axis == 2):
        padded = (*zooms, 1.0, 1.0)
        # np.rot90 turns the (first, second) remaining axes into (rows, columns) = (second, first).
        spacing = (padded[others[1]], padded[others[0]])
    meta["axis"] = axis
    records = []
    for position in wanted:
        # Rotating 90° puts the second in-plane axis on rows, as radiology viewers display it.
        plane = np.rot90(np.take(scaled, position, axis=axis))
        records.append(
            ImageRecord(
                pixels=_as_hwc(plane),
                path=str(path),
                spacing=spacing,
                meta=dict(meta),
                frame=position,
            )
        )
    return records


# --------------------------------------------------------------------------- public readers


def read_image(
    path: str | os.PathLike[str],
    *,
    frame: int | None = None,
    axis: int = 2,
    index: int | None = None,
    normalize: Normalize = "minmax",
) -> ImageRecord:
    """Read one 2D image from any supported file.

    8-bit images are divided by 255. Wider samples (16-bit PNG/TIFF, float TIFF)
    are min–max scaled per image by default because medical 16-bit files often
    hold 10–12 significant bits; ``normalize="dtype"`` divides by the dtype's
    maximum (65535) instead. The original dtype, minimum and maximum are kept in
    ``meta``. Alpha is composited onto black, palettes become RGB (grey palettes
    grey), CMYK becomes RGB and JPEG EXIF orientation is applied.

    DICOM: modality LUT (rescale or LUT sequence), then the first VOI LUT or
    window (scaled so the window's bounds map to 0 and 1), otherwise min–max over
    all frames; MONOCHROME1 is inverted; NaN/inf samples (float pixel data) become 0.
    NIfTI: the slice ``index`` along ``axis`` (default: middle slice) of the first
    volume (a 4D file's later volumes are ignored), min–max scaled over the volume's
    finite values (NaN/inf become 0) and rotated 90° for display. A DICOM or NIfTI
    file with no finite value at all is refused; no NaN ever reaches a model.

    Any image with at least one pixel is read, a 1×1 image included; resizing it to
    a model's input size is the caller's business. Images above
    :data:`MAX_IMAGE_PIXELS` (volumes above :data:`MAX_VOLUME_VOXELS`) are refused
    from their header, before decoding. Only regular files are read: a symlink
    loop, a broken link or a FIFO is refused without blocking.

    Args:
        path: The image file.
        frame: Frame of a multi-frame DICOM (or page of a TIFF/GIF); default 0.
        axis: NIfTI axis to slice along (0, 1 or 2).
        index: NIfTI slice index; default the middle slice.
        normalize: ``"minmax"`` or ``"dtype"``, for raster samples wider than 8 bits.

    Returns:
        An :class:`ImageRecord` with ``float32`` ``H×W×C`` pixels in ``[0, 1]``.

    Raises:
        ImageReadError: The file is missing, empty, corrupt, unsupported, or the frame/slice is out of range.
        ValueError: ``axis`` or ``normalize`` is not a valid choice.

    Example:
        record = read_image("chest.png")
        record.pixels.shape
        # (224, 224, 1)
    """
    _check_normalize(normalize)
    path = Path(path)
    if frame is not None and frame < 0:
        raise ImageReadError(path, f"frame {frame} out of range: frames are numbered from 0")
    _check_axis(axis)
    fmt = sniff_format(path)
    if fmt == "npz":
        raise ImageReadError(path, "is a .npz dataset archive, not a single image; use read_npz()")
    with _wrap_errors(path, fmt):
        if fmt == "dicom":
            record = _read_dicom(path, frame, all_frames=False)[0]
        elif fmt == "nifti":
            record = _read_nifti(path, axis, index, all_slices=False)[0]
        else:
            record = _read_raster(path, fmt, frame, normalize)
    if record.pixels.size == 0:
        raise ImageReadError(path, f"image has no pixels (shape {record.pixels.shape[:2]})")
    return record


def read_frames(path: str | os.PathLike[str], *, axis: int = 2) -> list[ImageRecord]:
    """Read every frame (DICOM) or slice along ``axis`` (NIfTI) of a file.

    Args:
        path: The image file.
        axis: NIfTI axis to slice along (0, 1 or 2).

    Returns:
        One :class:`ImageRecord` per frame/slice, with ``frame`` set; a single
        record (``frame`` 0) for other formats.

    Raises:
        ImageReadError: The file cannot be read as an image.
    """
    path = Path(path)
    _check_axis(axis)
    fmt = sniff_format(path)
    if fmt == "npz":
        raise ImageReadError(path, "is a .npz dataset archive, not an image; use read_npz()")
    with _wrap_errors(path, fmt):
        if fmt == "dicom":
            return _read_dicom(path, None, all_frames=True)
        if fmt == "nifti":
            return _read_nifti(path, axis, None, all_slices=True)
        record = _read_raster(path, fmt, None, "minmax")
    record.frame = 0
    return [record]


def read_npz(path: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read a MedMNIST-style ``.npz`` archive.

    The archive holds ``{split}_images`` and ``{split}_labels`` for the splits
    ``train``, ``val``, ``test`` (any present split must have both keys).

    Args:
        path: The ``.npz`` file.

    Returns:
        ``{split: (images, labels)}``: images ``uint8`` ``N×H×W`` or ``N×H×W×3``;
        labels ``int64`` ``(N,)``, or ``(N, K)`` for multi-label data.

    Raises:
        ImageReadError: The file is not a readable ``.npz`` or lacks the expected keys.

    Example:
        splits = read_npz("breastmnist.npz")
        splits["train"][0].shape
        # (546, 28, 28)
    """
    path = Path(path)
    if sniff_format(path) != "npz":
        raise ImageReadError(path, "is not a .npz archive")
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = sorted(archive.files)
            present = [s for s in _NPZ_SPLITS if f"{s}_images" in keys or f"{s}_labels" in keys]
            if not present:
                raise ImageReadError(
                    path, f"no MedMNIST keys such as 'train_images'/'train_labels'; keys are {keys}"
                )
            arrays = {}
            for split in present:
                missing = [k for k in (f"{split}_images", f"{split}_labels") if k not in keys]
                if missing:
                    raise ImageReadError(path, f"missing key(s) {missing}; keys are {keys}")
                arrays[split] = (archive[f"{split}_images"], archive[f"{split}_labels"])
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip/npy errors, pickled arrays
        raise ImageReadError(path, f"corrupt .npz archive ({_one_line(exc)})") from exc

    result: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for split, (images, labels) in arrays.items():
        result[split] = (_npz_images(path, split, images), _npz_labels(path, split, labels, len(images)))
    return result


def _npz_images(path: Path, split: str, images: np.ndarray) -> np.ndarray:
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ImageReadError(path, f"{split}_images has shape {images.shape}; expected N×H×W or N×H×W×3")
    if images.dtype != np.uint8:
        lossless = images.size == 0 or (
            np.all(np.isfinite(images))
            and images.min() >= 0
            and images.max() <= 255
            and np.array_equal(images, np.round(images))
        )
        if not lossless:
            raise ImageReadError(
                path, f"{split}_images is {images.dtype} with values outside 0..255 integers"
            )
        images = images.astype(np.uint8)
    return images


def _npz_labels(path: Path, split: str, labels: np.ndarray, count: int) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim not in (1, 2) or labels.shape[0] != count:
        raise ImageReadError(
            path, f"{split}_labels has shape {labels.shape}; expected ({count},) for {count} images"
        )
    if labels.dtype.kind == "f" and not np.array_equal(labels, np.round(labels)):
        raise ImageReadError(path, f"{split}_labels holds non-integer values")
    if labels.dtype.kind not in "biuf":
        raise ImageReadError(path, f"{split}_labels has dtype {labels.dtype}; expected integers")
    return labels.astype(np.int64)


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a segmentation mask as an ``H×W`` ``uint8`` label image.

    Values are kept as stored (0/255, 0/1 or class indices): colour-palette
    ("P") masks return their palette indices, grey-palette masks (GIFs) their
    grey levels, 1-bit masks 0/1, RGB masks their first channel when all
    channels are equal (otherwise Pillow's grey conversion). Alpha is ignored. Lossy JPEG masks are returned as decoded; threshold them
    downstream.

    Args:
        path: A PNG, GIF, TIFF, BMP or JPEG file.

    Returns:
        ``uint8`` array ``H×W``.

    Raises:
        ImageReadError: The file is unreadable, not a raster image, or holds values outside 0..255.
    """
    from PIL import Image

    path = Path(path)
    fmt = sniff_format(path)
    if fmt not in _RASTER_FORMATS:
        raise ImageReadError(path, f"masks must be PNG/GIF/TIFF/BMP/JPEG files, not {fmt}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=[_PILLOW_FORMATS[fmt]]) as image:
                _check_size(path, *image.size)
                image.load()
                array = _mask_array(image)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"image is too large to decode safely ({_one_line(exc)})") from exc
    except Exception as exc:  # noqa: BLE001 - try tifffile for TIFFs, then report
        if fmt != "tiff":
            raise ImageReadError(
                path, f"truncated or corrupt {_PILLOW_FORMATS[fmt]} data ({_one_line(exc)})"
            ) from exc
        try:
            import tifffile

            array = np.asarray(tifffile.imread(path, key=0))
            if array.ndim == 3:
                array = array[..., 0] if array.shape[-1] in (1, 2, 3, 4) else array[0]
        except Exception as tiff_exc:  # noqa: BLE001
            raise ImageReadError(
                path, f"truncated or corrupt TIFF data ({_one_line(tiff_exc)})"
            ) from tiff_exc
    if array.ndim != 2 or array.size == 0:
        raise ImageReadError(path, f"mask has shape {array.shape}; expected a non-empty H×W image")
    if array.dtype != np.uint8:
        finite = np.all(np.isfinite(array)) if array.dtype.kind == "f" else True
        if not finite or array.min() < 0 or array.max() > 255 or not np.array_equal(array, np.round(array)):
            raise ImageReadError(path, f"mask values must be integers in 0..255, found {array.dtype} data")
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array)


def _mask_array(image: Any) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        indices = np.asarray(image)
        palette = np.asarray(image.convert("RGB"))
        if _channels_equal(palette):
            return palette[..., 0].copy()  # a grey palette: the displayed grey levels are the labels
        return indices.astype(np.uint8)  # a colour palette (VOC style): the indices are the labels
    if mode in ("L", "1"):
        return np.asarray(image).astype(np.uint8)
    if mode in ("LA", "La", "PA"):
        return np.asarray(image)[..., 0].astype(np.uint8)
    if mode in ("RGB", "RGBA", "RGBa"):
        rgb = np.asarray(image)[..., :3]
        if _channels_equal(rgb):
            return rgb[..., 0].copy()
        return np.asarray(image.convert("RGB").convert("L"))
    if mode.startswith("I") or mode == "F":
        return np.asarray(image)
    return np.asarray(image.convert("L"))


def list_images(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """List the supported image files in a folder.

    Hidden files and folders (names starting with ``.``) are skipped. Symlinked
    folders are followed, each real folder visited once, so symlink loops end.

    Args:
        folder: The folder to scan.
        recursive: Also scan sub-folders.

    Returns:
        Sorted paths whose names end in one of :data:`SUPPORTED_SUFFIXES` (any case).

    Raises:
        ImageReadError: ``folder`` does not exist or is not a folder.
    """
    root = Path(folder)
    if not root.exists():
        raise ImageReadError(root, "folder not found")
    if not root.is_dir():
        raise ImageReadError(root, "is not a folder")
    found: list[Path] = []
    seen: set[str] = set()
    for current, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(current)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recursive else []
        for name in filenames:
            if name.startswith("."):
                continue
            candidate = Path(current) / name
            if _name_endswith(candidate, *SUPPORTED_SUFFIXES) and candidate.is_file():
                found.append(candidate)
    return sorted(found)
