"""The public readers: :func:`read_image`, :func:`read_frames`, :func:`read_mask`, :func:`read_npz`, :func:`list_images`."""


from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging.dicom import _read_dicom
from medlens.pipelines.imaging.nifti import _read_nifti
from medlens.pipelines.imaging.raster import _read_raster
from medlens.pipelines.imaging.record import (
    _PILLOW_FORMATS,
    _RASTER_FORMATS,
    SUPPORTED_SUFFIXES,
    ImageRecord,
    Normalize,
    _channels_equal,
    _check_axis,
    _check_normalize,
    _check_size,
    _name_endswith,
    _one_line,
    _wrap_errors,
)
from medlens.pipelines.imaging.sniff import sniff_format

__all__ = ["read_image", "read_frames", "read_mask", "read_npz", "list_images"]

logger = logging.getLogger(__name__)

_NPZ_SPLITS = ("train", "val", "test")


def _image_format(path: Path, axis: int, what: str) -> str:
    """The file's format, once the axis is valid and the file is not a dataset archive."""
    _check_axis(axis)
    fmt = sniff_format(path)
    if fmt == "npz":
        raise ImageReadError(path, f"is a .npz dataset archive, not {what}; use read_npz()")
    return fmt


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
    fmt = _image_format(path, axis, "a single image")
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
    fmt = _image_format(path, axis, "an image")
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
