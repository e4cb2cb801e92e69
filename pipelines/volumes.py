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
3D Slicer or ITK-SNAP voxel for voxel), and :func:`write_dicom_seg` writes a **DICOM
Segmentation** (highdicom) that references every source instance, so a PACS files it with
the study and a viewer maps each frame to its source slice, and beside it a TID 1500
measurement report (:func:`measurement_report`) of each segment's volume.

Example:
    cases = group_series(files)
    volume = read_volume(cases[0])
"""

from __future__ import annotations

import copy
import gzip
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medlens.pipelines.errors import ImageReadError, MedlensError
from medlens.pipelines.imaging import ImageRecord, read_frames, sniff_format
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["Series", "Volume", "group_series", "read_volume", "volume_digest", "write_mask_volume",
           "write_dicom_seg", "SegOutputs", "software_version", "imaging_measurement_report", "measurement_report", "dicom_affine", "from_grid", "voxel_ml"]

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


def software_version() -> str:
    """The installed medlens version (Software Versions of the DICOM objects medlens writes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("medlens")
    except PackageNotFoundError:
        return "0+unknown"


class SegOutputs(NamedTuple):
    """What :func:`write_dicom_seg` wrote: the SEG, the measurement report (if asked and made), a note."""

    seg: Path
    report: Path | None
    note: str


def write_dicom_seg(volume: Volume, slices: list[np.ndarray], path: str | Path, *, labels: list[str],
                    model_name: str, series_number: int = 9100, identity: str | None = None,
                    deidentifier: Any = None, report: str | Path | None = None) -> SegOutputs:
    """Write a DICOM Segmentation (binary, one segment per label) referencing the source instances.

    With ``report``, also a TID 1500 measurement report there (:func:`measurement_report`): each
    segment's volume, referencing the SEG's segment and the source slices; SEG and report are
    de-identified by the same ``deidentifier``, so the report's references still resolve. A
    report that cannot be made (no voxel size) is a ``note``; the SEG is written all the same.

    Returns:
        :class:`SegOutputs`: the SEG's path, the report's (or ``None``) and a note.

    Args:
        volume: A DICOM case (``dicom-series`` or ``dicom-frames``).
        slices: Per-slice label maps (0 background, ``k`` segment ``k``), as the reader showed them.
        path: The ``.dcm`` to write (atomically).
        labels: Segment labels, one per non-zero value.
        model_name: The run's name (Manufacturer's Model Name, algorithm name).
        series_number: The new series' number.
        identity: The run's identity (:meth:`~medlens.pipelines.rundir.RunDir.identity`): the
            series UID derives from it and the source series, the instance UID also from the
            mask, so the same run on the same input writes the same SEG (no PACS duplicates).
        deidentifier: A :class:`~medlens.pipelines.deidentify.Deidentifier` to apply before
            writing (default: the SEG keeps the source's patient and study).

    Raises:
        MedlensError: The source cannot carry a SEG (no geometry, unsupported), named, in one line.
    """
    import io

    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    if not volume.sources:
        raise MedlensError(f"{volume.path}: not a DICOM input; no DICOM SEG is written for it")
    labelmap = np.stack([np.asarray(s, dtype=np.uint8) for s in slices])
    source_series = str(volume.sources[0].get("SeriesInstanceUID", volume.path))
    if identity:
        import hashlib

        series_uid = generate_uid(entropy_srcs=[identity, "seg-series", source_series])
        sop_uid = generate_uid(entropy_srcs=[identity, "seg", source_series, hashlib.sha256(labelmap).hexdigest()])
    else:
        series_uid, sop_uid = generate_uid(), generate_uid()
    version = software_version()
    algorithm = hd.AlgorithmIdentificationSequence(name=f"medlens {model_name}"[:64], version=version,
                                                   family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label[:64],
            segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for number, label in enumerate(labels, start=1)
    ]
    try:
        seg = hd.seg.Segmentation(
            source_images=volume.sources, pixel_array=labelmap,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
            series_instance_uid=series_uid, series_number=series_number, sop_instance_uid=sop_uid,
            instance_number=1, manufacturer="medlens", manufacturer_model_name=model_name[:64],
            software_versions=version, device_serial_number=model_name[:64],
            series_description=f"medlens {model_name} segmentation (decision support, not a diagnosis)"[:64],
            omit_empty_frames=False)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise MedlensError(f"{volume.path}: cannot make a DICOM SEG from this input "
                           f"({str(exc).splitlines()[0][:160]})") from exc
    sr, note = None, ""
    if report is not None:
        try:
            sr = measurement_report(volume, seg, labelmap, labels=labels, model_name=model_name,
                                    series_number=series_number + 1, identity=identity)
        except MedlensError as exc:
            note = str(exc).split(": ", 1)[-1]
            log.warning("%s", exc)
    if deidentifier is not None:
        deidentifier.apply(seg)
        if sr is not None:
            deidentifier.apply(sr)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    written = atomic_write_bytes(path, buffer.getvalue())
    if sr is None:
        return SegOutputs(written, None, note)
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    return SegOutputs(written, atomic_write_bytes(report, buffer.getvalue()), note)


def measurement_report(volume: Volume, seg: Any, labelmap: np.ndarray, *, labels: list[str], model_name: str,
                       series_number: int = 9101, identity: str | None = None) -> Any:
    """A TID 1500 *Imaging Measurement Report* (Comprehensive 3D SR) of the segments' volumes.

    One *Volumetric ROI measurements* group per segment (tracking identifier ``segment K:
    LABEL``): the segment referenced in ``seg`` with every source slice it was derived from, and
    its volume in mm³ (voxels × the voxel volume of the series geometry), measured by the named
    algorithm; the observer is the medlens device. The report keeps the source's patient and
    study, in a new series; its UIDs derive from ``identity``, the source series and the mask,
    as the SEG's do.

    Args:
        volume: The DICOM case (with geometry: a volume needs a voxel size).
        seg: The highdicom ``Segmentation`` the report refers to.
        labelmap: ``N×H×W`` label map (0 background, ``k`` segment ``k``), as in the SEG.
        labels: Segment labels, one per non-zero value.
        model_name: The run's name (algorithm and device names).
        series_number: The report series' number.
        identity: The run's identity (deterministic UIDs: a re-run writes the same report).

    Raises:
        MedlensError: The input has no voxel size, or highdicom refuses the content (named).
    """
    import hashlib

    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    ml = voxel_ml(volume)
    if ml is None:
        raise MedlensError(f"{volume.path}: no voxel size in the input; no measurement report is written")
    source_series = str(volume.sources[0].get("SeriesInstanceUID", volume.path))
    mask_hash = hashlib.sha256(np.ascontiguousarray(labelmap)).hexdigest()

    def uid(*parts: str) -> str:
        return generate_uid(entropy_srcs=[identity, *parts]) if identity else generate_uid()

    version = software_version()
    algorithm = hd.sr.AlgorithmIdentification(name=f"medlens {model_name}"[:64], version=version)
    try:
        sources = [hd.sr.SourceImageForSegmentation.from_source_image(s) for s in volume.sources]
        groups = [
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=uid("sr-segment", source_series, mask_hash, str(number)),
                    identifier=f"segment {number}: {label}"[:64]),
                referenced_segment=hd.sr.ReferencedSegment(sop_class_uid=seg.SOPClassUID,
                                                           sop_instance_uid=seg.SOPInstanceUID,
                                                           segment_number=number, source_images=sources),
                finding_type=codes.SCT.Tissue, algorithm_id=algorithm,
                measurements=[hd.sr.Measurement(
                    name=codes.SCT.Volume, value=round(int(np.count_nonzero(labelmap == number)) * ml * 1000.0, 3),
                    unit=codes.UCUM.CubicMillimeter, algorithm_id=algorithm)])
            for number, label in enumerate(labels, start=1)
        ]
        return imaging_measurement_report(
            [seg, *volume.sources], groups, model_name=model_name, device_uid=uid("sr-device"),
            series_uid=uid("sr-series", source_series), series_number=series_number,
            sop_uid=uid("sr", source_series, mask_hash), description=f"medlens {model_name} volumes (decision support)")
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise MedlensError(f"{volume.path}: cannot make a measurement report for this input "
                           f"({str(exc).splitlines()[0][:160]})") from exc


def imaging_measurement_report(evidence: list[Any], groups: list[Any], *, model_name: str, device_uid: str,
                               series_uid: str, series_number: int, sop_uid: str, description: str) -> Any:
    """A TID 1500 Comprehensive 3D SR of measurement ``groups``, observed by the medlens device.

    Patient and study come from ``evidence`` (the instances the groups reference); the report is
    complete, unverified, in its own series. It is a deep copy: highdicom shares data elements
    with the evidence, and de-identifying one object must not rewrite another (or a cached
    source header).

    Raises:
        ValueError, TypeError, KeyError, AttributeError: highdicom refuses the content.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=device_uid, name=f"medlens {model_name}"[:64],
                                                       manufacturer_name="medlens", model_name=model_name[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    content = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.SCT.ImagingProcedure,
                                      imaging_measurements=groups)
    report = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=content, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_uid, instance_number=1, manufacturer="medlens", is_complete=True,
        series_description=description[:64])
    return copy.deepcopy(report)


def voxel_ml(volume: Volume) -> float | None:
    """One voxel's volume in millilitres, or ``None`` when the input gives no geometry."""
    if not volume.geometry:
        return None
    return float(abs(np.linalg.det(volume.affine[:3, :3]))) / 1000.0
