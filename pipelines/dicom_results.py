"""The DICOM results of a volume case: a DICOM Segmentation and its TID 1500 measurement report.

:func:`write_dicom_seg` writes a **DICOM Segmentation** (highdicom; binary, one segment per
label) that references every source instance, so a PACS files it with the study and a viewer
maps each frame to its source slice, and beside it :func:`measurement_report`'s TID 1500
report of each segment's volume. :func:`imaging_measurement_report` is the one builder of
medlens's TID 1500 reports (also the findings reports of ``predict --dicom``).

Example:
    written = write_dicom_seg(volume, masks, "out/case.seg.dcm", labels=["tumour"], model_name="run",
                              report="out/case.sr.dcm")
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from medlens.pipelines.errors import MedlensError
from medlens.pipelines.rundir import atomic_write_bytes
from medlens.pipelines.volumes import Volume, voxel_ml

__all__ = ["SegOutputs", "imaging_measurement_report", "measurement_report", "software_version", "write_dicom_seg"]

log = logging.getLogger(__name__)


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
