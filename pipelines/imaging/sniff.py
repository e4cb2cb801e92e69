"""What a file is, from its first bytes: never from its extension (a PNG named ``.jpg`` is a PNG)."""


from __future__ import annotations

import errno
import gzip
import logging
import os
import stat
import zlib
from pathlib import Path

from medlens.pipelines.errors import ImageReadError
from medlens.pipelines.imaging.record import _BMP_DIB_HEADER_SIZES, _HEADER_BYTES, _name_endswith, _one_line

__all__ = ["sniff_format"]

logger = logging.getLogger(__name__)

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
