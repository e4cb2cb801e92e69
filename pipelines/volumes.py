"""Volumes as one case: NIfTI volumes, multi-frame DICOM and DICOM series in; NIfTI and DICOM SEG out.

A batch sees three kinds of volume:

- a **NIfTI** file with more than one slice (slices along the third axis);
- a **multi-frame DICOM** file (its frames, in file order);
- a **DICOM series**: the single-frame DICOM files of one batch that share a
  ``SeriesInstanceUID`` and carry geometry (``ImagePositionPatient``,
  ``ImageOrientationPatient``), ordered along the slice normal, whatever their file names.
  Two slices at one position, or orientations that differ, make the series an error (named),
  never a silently wrong volume.

:func:`group_series` turns a batch's file list into cases (a file, or a :class:`Series`);
:func:`read_volume` gives a case's slices (``ImageRecord`` per slice, in order) with its
geometry; :func:`write_mask_volume` writes per-slice masks back as **one NIfTI** on the input's
own voxel grid (a NIfTI input's affine and header are kept, so the mask overlays the scan in
3D Slicer or ITK-SNAP voxel for voxel); :mod:`medlens.pipelines.dicom_results` writes the
DICOM SEG and its measurement report of a DICOM case.

Example:
    cases = group_series(files)
    volume = read_volume(cases[0])
"""

from __future__ import annotations

import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import ImageReadError, MedlensError
from medlens.pipelines.imaging import ImageRecord, read_frames, sniff_format
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["Series", "Volume", "group_series", "read_volume", "volume_digest", "write_mask_volume",
           "dicom_affine", "from_grid", "voxel_ml"]

log = logging.getLogger(__name__)

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_POSITION_TOLERANCE_MM = 1e-3


@dataclass
class Series:
    """The single-frame DICOM files of one series, in slice order.

    Attributes:
        files: The slice files, ordered along the slice normal.
        series_uid: Their ``SeriesInstanceUID``.
        positions: Each slice's distance along the normal, in mm.
    """

    files: list[Path]
    series_uid: str
    positions: list[float] = field(default_factory=list)

    @property
    def path(self) -> str:
        """How rows and errors name the series: its folder and UID."""
        return f"{self.files[0].parent}#{self.series_uid}"


@dataclass
class Volume:
    """A case's slices, with the geometry needed to write results back on its voxel grid.

    Attributes:
        kind: ``nifti``, ``dicom-frames`` or ``dicom-series``.
        path: The file (or :attr:`Series.path`).
        records: One ``ImageRecord`` per slice, in order.
        affine: 4×4 voxel → RAS (mm) matrix of the output NIfTI.
        nifti_header: A NIfTI input's header (kept on the outputs), else ``None``.
        sources: DICOM inputs' datasets (the one multi-frame file, or every slice in order).
        geometry: ``False`` when the input says nothing about its geometry (the affine is then
            the pixel spacing alone).
    """

    kind: str
    path: str
    records: list[ImageRecord]
    affine: np.ndarray
    nifti_header: Any = None
    sources: list[Any] = field(default_factory=list)
    geometry: bool = True


def _normal(orientation: list[float]) -> np.ndarray:
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    return np.cross(row, col)


def group_series(files: list[Path]) -> tuple[list[Path | Series], list[tuple[str, str]]]:
    """Collapse the single-frame DICOM slices of each series into one :class:`Series` case.

    A series needs two or more slices with ``ImagePositionPatient`` and
    ``ImageOrientationPatient``; other files stay single cases, in their place.

    Returns:
        ``(cases, errors)``; a series with duplicate slice positions or mixed orientations is
        an error naming it, and its files are not segmented one by one either.
    """
    import pydicom

    headers: dict[Path, Any] = {}
    groups: dict[str, list[Path]] = {}
    for path in files:
        try:
            if not path.is_file() or sniff_format(path) != "dicom":
                continue
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, MedlensError, pydicom.errors.InvalidDicomError, ValueError, AttributeError):
            continue  # the reader names the problem when the file is read as a single case
        if int(ds.get("NumberOfFrames", 1) or 1) != 1 or "SeriesInstanceUID" not in ds:
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            continue
        headers[path] = ds
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(path)
    first: dict[Path, Series | None] = {}
    errors: list[tuple[str, str]] = []
    for uid, members in groups.items():
        if len(members) < 2:
            continue
        orientations = {tuple(round(float(v), 4) for v in headers[p].ImageOrientationPatient) for p in members}
        series = Series(members, uid)
        if len(orientations) > 1:
            errors.append((series.path, f"DICOM series has {len(orientations)} different slice orientations; "
                                        "cannot stack it as one volume"))
            first.update({p: None for p in members})
            continue
        normal = _normal(list(next(iter(orientations))))
        distance = {p: float(np.dot(normal, np.asarray(headers[p].ImagePositionPatient, float))) for p in members}
        ordered = sorted(members, key=lambda p: (distance[p], str(p)))
        gaps = np.diff([distance[p] for p in ordered])
        if np.any(gaps < _POSITION_TOLERANCE_MM):
            k = int(np.argmin(gaps))
            errors.append((series.path, f"DICOM series has two slices at one position ({ordered[k].name}, "
                                        f"{ordered[k + 1].name}); cannot stack it as one volume"))
            first.update({p: None for p in members})
            continue
        if gaps.size > 1 and np.ptp(gaps) > max(0.01, 0.01 * float(np.median(gaps))):
            log.warning("%s: slice spacing varies (%.3f–%.3f mm); the NIfTI uses the mean", series.path,
                        float(gaps.min()), float(gaps.max()))
        series = Series(ordered, uid, [distance[p] for p in ordered])
        first.update({p: None for p in members})
        first[ordered[0]] = series
    cases: list[Path | Series] = []
    for path in files:
        if path not in first:
            cases.append(path)
        elif first[path] is not None:
            cases.append(first[path])  # the series takes the place of its first slice
    return cases, errors


def volume_digest(digests: list[str]) -> str:
    """A case's content digest: its one file's SHA-256, or for a series the SHA-256 of its slices' digests in order."""
    if len(digests) == 1:
        return digests[0]
    import hashlib

    return hashlib.sha256("".join(digests).encode()).hexdigest()


def dicom_affine(datasets: list[Any]) -> np.ndarray:
    """Voxel ``(column, row, slice)`` → RAS affine from DICOM geometry (slices in order).

    ``ImageOrientationPatient`` gives the row and column directions,
    ``PixelSpacing`` the in-plane spacing, and the first and last
    ``ImagePositionPatient`` the slice step (the mean spacing).
    """
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_spacing, col_spacing = (float(v) for v in first.get("PixelSpacing", [1.0, 1.0]))
    origin = np.asarray(first.ImagePositionPatient, float)
    if len(datasets) > 1:
        step = (np.asarray(datasets[-1].ImagePositionPatient, float) - origin) / (len(datasets) - 1)
    else:
        step = _normal(list(orientation)) * float(first.get("SliceThickness", 1.0) or 1.0)
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * col_spacing  # along a row: the column index grows
    affine[:3, 1] = orientation[3:] * row_spacing
    affine[:3, 2] = step
    affine[:3, 3] = origin
    return _LPS_TO_RAS @ affine


def _spacing_affine(record: ImageRecord) -> np.ndarray:
    row, col = record.spacing or (1.0, 1.0)
    return np.diag([float(col), float(row), 1.0, 1.0])


def _frame_geometry(ds: Any) -> list[Any] | None:
    """Per-frame ``(position, orientation, spacing)`` datasets of an enhanced multi-frame DICOM."""
    shared = ds.get("SharedFunctionalGroupsSequence", [None])[0]
    frames = ds.get("PerFrameFunctionalGroupsSequence")
    if not frames:
        return None
    out = []
    for item in frames:
        def find(keyword: str, sequence: str, item=item) -> Any:
            for group in (item, shared):
                if group is not None and sequence in group and keyword in group[sequence][0]:
                    return group[sequence][0].data_element(keyword).value
            return None

        position = find("ImagePositionPatient", "PlanePositionSequence")
        orientation = find("ImageOrientationPatient", "PlaneOrientationSequence")
        spacing = find("PixelSpacing", "PixelMeasuresSequence")
        if position is None or orientation is None:
            return None
        from pydicom.dataset import Dataset

        geometry = Dataset()
        geometry.ImagePositionPatient, geometry.ImageOrientationPatient = list(position), list(orientation)
        geometry.PixelSpacing = list(spacing) if spacing is not None else [1.0, 1.0]
        out.append(geometry)
    return out


def read_volume(case: Path | Series) -> Volume | None:
    """The slices and geometry of a case, or ``None`` when it is a single 2D image.

    Raises:
        ImageReadError: A file of the case cannot be read (the reader's message, naming it).
    """
    import pydicom

    if isinstance(case, Series):
        records, sources = [], []
        for path in case.files:
            record = read_frames(path)[0]
            record.frame = len(records)
            records.append(record)
            sources.append(pydicom.dcmread(path))
        shapes = {r.pixels.shape[:2] for r in records}
        if len(shapes) > 1:
            raise ImageReadError(Path(case.path), f"DICOM series slices differ in size {sorted(shapes)}")
        return Volume("dicom-series", case.path, records, dicom_affine(sources), sources=sources)
    fmt = sniff_format(case)
    if fmt not in ("nifti", "dicom"):
        return None
    records = read_frames(case)
    if len(records) < 2:
        return None
    if fmt == "nifti":
        import nibabel

        image = nibabel.load(str(case))
        if len(image.shape) < 3:
            return None
        return Volume("nifti", str(case), records, np.asarray(image.affine, float), nifti_header=image.header)
    ds = pydicom.dcmread(case)
    geometry = _frame_geometry(ds)
    if geometry is not None:
        return Volume("dicom-frames", str(case), records, dicom_affine(geometry), sources=[ds])
    return Volume("dicom-frames", str(case), records, _spacing_affine(records[0]), sources=[ds], geometry=False)


def _to_grid(volume: Volume, slices: list[np.ndarray]) -> np.ndarray:
    """Per-slice ``H×W`` arrays (as the reader showed them) → the input's voxel array."""
    if volume.kind == "nifti":
        # The reader showed np.rot90 of each slice along the third axis; undo it.
        return np.stack([np.rot90(s, -1) for s in slices], axis=2)
    return np.stack([s.T for s in slices], axis=2)  # (column, row, slice), as dicom_affine says


def from_grid(volume: Volume, data: np.ndarray) -> list[np.ndarray]:
    """The inverse of the writer: a NIfTI voxel array → per-slice ``H×W`` arrays as the reader shows them."""
    if volume.kind == "nifti":
        return [np.rot90(data[:, :, k]) for k in range(data.shape[2])]
    return [data[:, :, k].T for k in range(data.shape[2])]


def _nifti_bytes(image: Any) -> bytes:
    return gzip.compress(image.to_bytes(), compresslevel=6, mtime=0)


def write_mask_volume(volume: Volume, slices: list[np.ndarray], path: str | Path, *,
                      dtype: type = np.uint8, intent: str = "label") -> Path:
    """Write per-slice arrays as one ``.nii.gz`` on the input's voxel grid, atomically.

    A NIfTI input's affine and header (orientation codes, units, description) are kept; only
    the data type and scaling change. DICOM inputs get the affine of :func:`dicom_affine`.

    Args:
        volume: The case the slices came from.
        slices: One ``H×W`` array per slice (class indices, 0/1, or probabilities).
        path: The ``.nii.gz`` to write.
        dtype: Voxel type (``uint8`` masks, ``float32`` probabilities).
        intent: ``label`` (masks) or ``estimate`` (probabilities): the NIfTI intent code.
    """
    import nibabel

    data = _to_grid(volume, [np.asarray(s) for s in slices]).astype(dtype)
    if volume.nifti_header is not None:
        header = volume.nifti_header.copy()
        image = nibabel.Nifti1Image(data, volume.affine, header=header)
        image.header.set_data_dtype(dtype)
        image.header.set_slope_inter(1.0, 0.0)
        image.set_qform(volume.affine, code=int(header["qform_code"]) or 1)
        image.set_sform(volume.affine, code=int(header["sform_code"]) or 1)
    else:
        image = nibabel.Nifti1Image(data, volume.affine)
        image.header.set_xyzt_units("mm")
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
    image.header.set_intent(intent)
    if dtype == np.uint8:
        image.header["cal_min"], image.header["cal_max"] = 0, max(1, int(data.max(initial=0)))
    return atomic_write_bytes(path, _nifti_bytes(image))


def voxel_ml(volume: Volume) -> float | None:
    """One voxel's volume in millilitres, or ``None`` when the input gives no geometry."""
    if not volume.geometry:
        return None
    return float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
