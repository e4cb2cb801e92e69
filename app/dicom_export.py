"""DICOM export for PACS: each explanation overlay as an RGB Secondary Capture in the source study.

``medlens predict/explain --explain … --dicom`` writes, beside every overlay PNG,
``OUT/dicom/NAME-HASH.METHOD.dcm``: a Secondary Capture Image (SOP class
1.2.840.10008.5.1.4.1.1.7, RGB, 8 bit, uncompressed) that

- keeps the source's patient (name, ID, birth date, sex) and study (Study Instance UID, date,
  time, accession number, study ID, referring physician), so PACS files it with the study;
- gets a new Series Instance UID per source series and method (all Grad-CAM overlays of a
  series form one new series) and a new SOP Instance UID per image;
- references the source image (Source Image Sequence) and says what it is in Series
  Description, Derivation Description and Image Comments ("decision support, not a diagnosis").

Non-DICOM inputs get a new study (their own Study Instance UID) and no patient identity:
medlens never invents one.

Beside them, for every DICOM input image, ``OUT/dicom/NAME-HASH.sr.dcm``: a TID 1500 findings
report (:func:`findings_report`, Comprehensive 3D SR) with one measurement group per finding
(the class, finding or ``grade ≥ K`` of the run's task): its probability and whether it is
present, referencing the source image.

Example:
    export_overlays(result, ["gradcam"])
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medlens.pipelines.explain import METHODS, TITLES
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["SECONDARY_CAPTURE", "export_overlays", "export_reports", "findings_report", "secondary_capture"]

log = logging.getLogger(__name__)

SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                      "StudyDate", "StudyTime", "AccessionNumber", "StudyID", "ReferringPhysicianName",
                      "StudyDescription")
_TITLES = TITLES


def _uid(identity: str | None, *parts: str) -> str:
    """A UID derived from ``identity`` and ``parts`` (the same inputs, the same UID); random without identity."""
    return generate_uid(entropy_srcs=[identity, *parts]) if identity else generate_uid()


def _instance_key(row: dict[str, Any], path: str, source: Dataset | None) -> str:
    """What names one input instance in derived UIDs: a DICOM source's SOP Instance UID, else the file's content.

    A PACS hands out the same instance as different bytes (DICOMweb and C-GET write other file
    meta, a server may transcode), and DICOM promises that a SOP Instance UID names one image; so
    results of a re-run over the same instances get the same UIDs however they were pulled.
    """
    if source is not None and "SOPInstanceUID" in source:
        return str(source.SOPInstanceUID)
    return str(row.get("sha256") or path)


def _source_header(path: str) -> Dataset | None:
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (pydicom.errors.InvalidDicomError, OSError, AttributeError, ValueError):
        return None


def _with_sources(rows: list[dict[str, Any]], headers: dict[str, Dataset | None]):
    """Each row with its input path, source header (read once per file, kept in ``headers``) and frame."""
    for row in rows:
        path = str(row["path"])
        if path not in headers:
            headers[path] = _source_header(path)
        frame = row.get("frame")
        yield row, path, headers[path], (int(frame) if frame not in (None, "") else None)


def secondary_capture(rgb: np.ndarray, source: Dataset | None, *, series_uid: str, study_uid: str,
                      method: str, instance: int, frame: int | None, label: str,
                      finding: str | None = None, finding_number: int = 0, sop_uid: str | None = None) -> Dataset:
    """A Secondary Capture dataset holding ``rgb`` (``uint8`` ``H×W×3``) in the source's study.

    ``sop_uid``: the SOP Instance UID (default a new random one).
    """
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SECONDARY_CAPTURE
    meta.MediaStorageSOPInstanceUID = sop_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    if source is not None:
        for keyword in _PATIENT_AND_STUDY:
            if keyword in source:
                setattr(ds, keyword, source.data_element(keyword).value)
    ds.StudyInstanceUID = study_uid
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "AccessionNumber", "ReferringPhysicianName", "StudyID"):
        if keyword not in ds:
            setattr(ds, keyword, "")  # type 2: present, empty when unknown
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.SeriesInstanceUID = series_uid
    ds.Modality = "OT"
    ds.Manufacturer = "medlens"  # marks medlens's results: --from-pacs does not read them back as inputs
    ds.ConversionType = "WSD"
    ds.SeriesNumber = 9000 + list(_TITLES).index(method) + (0 if finding is None else 10 * (1 + finding_number))
    ds.InstanceNumber = instance
    title = _TITLES.get(method, method)
    what = "the predicted class" if finding is None else f"the finding {finding}"
    ds.SeriesDescription = f"medlens {title}{'' if finding is None else ' ' + finding} (decision support)"[:64]
    ds.DerivationDescription = f"{title} heatmap of {what}, blended onto the source image"
    ds.ImageComments = f"medlens {title} for '{label}'. Decision support only, not a diagnosis."
    ds.BurnedInAnnotation = "NO"
    # Type 2C in General Series / General Image: present (empty when unknown), so validators pass.
    laterality = source.get("Laterality", source.get("ImageLaterality", "")) if source is not None else ""
    ds.Laterality = laterality if laterality in ("R", "L") else ""
    ds.PatientOrientation = source.get("PatientOrientation", "") if source is not None else ""
    if source is not None and "SOPInstanceUID" in source:
        reference = Dataset()
        reference.ReferencedSOPClassUID = source.get("SOPClassUID", "")
        reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if frame is not None and int(source.get("NumberOfFrames", 1) or 1) > 1:
            reference.ReferencedFrameNumber = int(frame) + 1
        ds.SourceImageSequence = [reference]
    height, width = rgb.shape[:2]
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
    return ds


def export_overlays(out_dir: str | Path, rows: list[dict[str, Any]], methods: list[str],
                    targets: Callable[[dict[str, Any]], list[str | None]] | None = None,
                    identity: str | None = None, deidentifier: Any = None,
                    headers: dict[str, Dataset | None] | None = None) -> list[Path]:
    """Write ``out_dir/dicom/<overlay name>.dcm`` for each overlay PNG listed in ``rows``.

    Args:
        out_dir: The prediction output folder (overlay paths in ``rows`` are relative to it).
        rows: ``predictions.csv`` rows (``BatchResult.rows`` of ``predict_paths``); input paths as given, relative
            to the current folder.
        methods: Explanation methods whose overlays to export.
        targets: Per row, the targets its overlays are named by (a multi-label run's
            ``Predictor.explained_targets``: one overlay, and one series, per finding and method);
            default one overlay per method.
        identity: The run's :meth:`~medlens.pipelines.rundir.RunDir.identity`: UIDs are then
            derived from it and the input instance (its SOP Instance UID, or a non-DICOM file's
            content), frame, method and target, so exporting a re-run again gives the same
            instances (a PACS gets no duplicates, however the study was pulled); default random UIDs.
        deidentifier: A :class:`~medlens.pipelines.deidentify.Deidentifier`: apply the PS3.15
            basic profile to every object written (default: keep the source identity).
        headers: Source headers by input path, read on first use (pass one dict to
            :func:`export_reports` too, and each file is read once).

    Returns:
        The files written.
    """
    out = Path(out_dir)
    written: list[Path] = []
    series: dict[tuple[str, str], str] = {}
    studies: dict[str, str] = {}
    counters: dict[str, int] = {}
    order: dict[str, int] = {}  # finding → its series number offset
    for row, path, source, frame in _with_sources(rows, {} if headers is None else headers):
        study_uid = str(source.StudyInstanceUID) if source is not None and "StudyInstanceUID" in source else \
            studies.setdefault(path, _uid(identity, "study", str(row.get("sha256") or path)))
        source_series = str(source.get("SeriesInstanceUID", path)) if source is not None else path
        for method, target in ((m, t) for t in (targets(row) if targets else [None]) for m in methods):
            slug = METHODS[method] if target is None else f"{METHODS[method]}_{target}"
            overlay = row.get(f"{slug}_overlay")
            finding_number = order.setdefault(target, len(order)) if target is not None else 0
            if not overlay:
                continue
            bgr = cv2.imread(str(out / overlay), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("%s: overlay unreadable, no DICOM written", out / overlay)
                continue
            key = (source_series, slug)
            series_uid = series.setdefault(key, _uid(identity, "series", *key))
            counters[series_uid] = counters.get(series_uid, 0) + 1
            dataset = secondary_capture(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), source, series_uid=series_uid,
                                        study_uid=study_uid, method=METHODS[method], instance=counters[series_uid],
                                        frame=frame, label=target or str(row.get("explained_class") or row.get("label")),
                                        finding=target, finding_number=finding_number,
                                        sop_uid=_uid(identity, "sop", _instance_key(row, path, source), str(frame), slug))
            if deidentifier is not None:
                deidentifier.apply(dataset)
            buffer = io.BytesIO()
            pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
            target = out / "dicom" / (Path(overlay).stem + ".dcm")
            written.append(atomic_write_bytes(target, buffer.getvalue()))
    return written


_NO_UNITS = ("1", "UCUM", "no units")


def _concept(name: str, index: int) -> Any:
    """A coded concept for one of the run's findings (a private scheme: the run names its own classes)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=f"MEDLENS{index:03d}", scheme_designator="99MEDLENS", meaning=name[:64])


def findings_report(source: Dataset, findings: list[tuple[str, float, bool]], *, model_name: str, version: str,
                    series_uid: str, sop_uid: str, frame: int | None = None, series_number: int = 9200) -> Any:
    """A TID 1500 *Imaging Measurement Report* (Comprehensive 3D SR) of one image's findings.

    One *Measurements and qualitative evaluations* group per finding (tracking identifier
    ``finding: NAME``, finding type the finding): its probability (DCM 122157, no units, the
    6 decimals of ``predictions.csv``) and *Presence of property* Present/Absent (the run's
    decision: label, per-finding threshold or grade), measured by the named algorithm on the
    referenced source image (and frame). Patient and study are the source's; the series is new.

    Raises:
        ValueError: highdicom refuses the content (the caller names the file).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from medlens.pipelines.dicom_results import imaging_measurement_report

    algorithm = hd.sr.AlgorithmIdentification(name=f"medlens {model_name}"[:64], version=version)
    frames = [int(frame) + 1] if frame is not None and int(source.get("NumberOfFrames", 1) or 1) > 1 else None
    image = hd.sr.SourceImageForMeasurementGroup(referenced_sop_class_uid=str(source.SOPClassUID),
                                                 referenced_sop_instance_uid=str(source.SOPInstanceUID),
                                                 referenced_frame_numbers=frames)
    unit = hd.sr.CodedConcept(*_NO_UNITS)
    groups = [
        hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(entropy_srcs=[sop_uid, str(k)]),
                                                         identifier=f"finding: {name}"[:64]),
            finding_type=_concept(name, k), algorithm_id=algorithm, source_images=[image],
            measurements=[hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(p), 6), unit=unit,
                                            algorithm_id=algorithm)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=codes.DCM.PresenceOfProperty, value=codes.SCT.Present if present else codes.SCT.Absent)])
        for k, (name, p, present) in enumerate(findings)
    ]
    return imaging_measurement_report([source], groups, model_name=model_name, series_uid=series_uid,
                                      device_uid=generate_uid(entropy_srcs=[series_uid, "device"]),
                                      series_number=series_number, sop_uid=sop_uid,
                                      description=f"medlens {model_name} findings (decision support)")


def export_reports(out_dir: str | Path, rows: list[dict[str, Any]],
                   findings: Callable[[dict[str, Any]], list[tuple[str, float, bool]]], *, model_name: str,
                   identity: str | None = None, deidentifier: Any = None,
                   headers: dict[str, Dataset | None] | None = None) -> list[Path]:
    """Write ``out_dir/dicom/NAME-HASH.sr.dcm``, a findings report, for each row whose input is DICOM.

    Args:
        out_dir: The prediction output folder.
        rows: ``predictions.csv`` rows (input paths as given).
        findings: Per row, ``(finding, probability, present)`` (the predictor's ``row_findings``).
        model_name: The run's name (algorithm and device).
        identity: The run's identity: UIDs derive from it and the input instance (SOP Instance
            UID) and frame, so a re-run writes the same instances (no PACS duplicates); default
            random UIDs.
        deidentifier: Apply the PS3.15 basic profile to every report (default: keep the source identity).
        headers: Source headers by input path (shared with :func:`export_overlays`).

    Returns:
        The files written. A non-DICOM input gets none (a report needs a source instance);
        a report highdicom refuses is logged with the file's name and skipped.
    """
    from medlens.pipelines.dicom_results import software_version
    from medlens.pipelines.inference.layout import output_stem

    out = Path(out_dir)
    written: list[Path] = []
    series: dict[str, str] = {}
    version = software_version()
    for row, path, source, frame in _with_sources(rows, {} if headers is None else headers):
        if source is None or "SOPInstanceUID" not in source or "StudyInstanceUID" not in source:
            continue
        digest = str(row["sha256"])
        source_series = str(source.get("SeriesInstanceUID", path))
        series_uid = series.setdefault(source_series, _uid(identity, "findings-series", source_series))
        try:
            report = findings_report(source, findings(row), model_name=model_name, version=version,
                                     series_uid=series_uid,
                                     sop_uid=_uid(identity, "findings", _instance_key(row, path, source), str(frame)),
                                     frame=frame)
        except (ValueError, AttributeError, TypeError, KeyError) as exc:
            log.warning("%s: no findings report written (%s)", path, str(exc).splitlines()[0][:160])
            continue
        if deidentifier is not None:
            deidentifier.apply(report)
        buffer = io.BytesIO()
        report.save_as(buffer, enforce_file_format=True)
        name = output_stem(path, digest, frame) + ".sr.dcm"
        written.append(atomic_write_bytes(out / "dicom" / name, buffer.getvalue()))
    return written
