"""NIfTI volumes (``.nii``, ``.nii.gz``) through nibabel, one 2D slice at a time."""


from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging.record import ImageRecord, _as_hwc, _minmax, _name_endswith, _one_line

__all__ = ["MAX_VOLUME_VOXELS"]

logger = logging.getLogger(__name__)

#: Largest NIfTI volume (voxels of the one 3D volume read) the reader loads; a 512×512×1000
#: CT is 262 M voxels. Larger headers are refused before any voxel is read.
MAX_VOLUME_VOXELS: int = 1_000_000_000


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
