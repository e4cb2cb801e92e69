"""Medical images from disk into one common form: every format a hospital hands over.

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

Modules: :mod:`~medlens.pipelines.imaging.readers` (the public readers),
:mod:`~medlens.pipelines.imaging.sniff` (format from magic bytes),
:mod:`~medlens.pipelines.imaging.raster`, :mod:`~medlens.pipelines.imaging.dicom`,
:mod:`~medlens.pipelines.imaging.nifti` (one per family), :mod:`~medlens.pipelines.imaging.record`
(:class:`ImageRecord`, limits, shared helpers). Everything public is importable from
``medlens.pipelines.imaging``.

Example:
    from medlens.pipelines.imaging import read_image
    record = read_image("scan.dcm")
    record.pixels.shape, record.pixels.dtype
    # ((512, 512, 1), dtype('float32'))
"""

from __future__ import annotations

from medlens.pipelines.imaging.nifti import MAX_VOLUME_VOXELS
from medlens.pipelines.imaging.readers import list_images, read_frames, read_image, read_mask, read_npz
from medlens.pipelines.imaging.record import MAX_IMAGE_PIXELS, SUPPORTED_SUFFIXES, ImageRecord
from medlens.pipelines.imaging.sniff import sniff_format

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
