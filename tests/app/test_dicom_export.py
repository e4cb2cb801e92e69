"""Explanation overlays exported as DICOM Secondary Captures that PACS files in the source study."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pydicom
from dicom_checks import dciodvfy_errors

from medlens.app.cli import main
from medlens.app.dicom_export import SECONDARY_CAPTURE


def test_overlays_become_secondary_captures_in_the_source_study(tiny_run, phantom_dir, shared_data, tmp_path, capsys):
    ct = shared_data / "dicom_samples" / "CT_small.dcm"
    frames = shared_data / "dicom_samples" / "emri_small.dcm"
    png = sorted((phantom_dir / "lesion").iterdir())[0]
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), str(ct), str(frames), str(png), "--out", str(out),
                 "--explain", "gradcam,gradcam++", "--dicom"]) == 0
    # 12 images × 2 methods; a findings report per DICOM image (the CT and 10 MR frames, not the PNG).
    assert "24 DICOM Secondary Capture(s) and 11 findings report(s)" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    source_ct = pydicom.dcmread(ct)
    series: dict[tuple[str, str], set[str]] = {}
    sops = set()
    for row in rows:
        for slug in ("gradcam", "gradcampp"):
            overlay = out / row[f"{slug}_overlay"]
            ds = pydicom.dcmread(out / "dicom" / (overlay.stem + ".dcm"))
            assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
            assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3
            expected = cv2.cvtColor(cv2.imread(str(overlay)), cv2.COLOR_BGR2RGB)
            np.testing.assert_array_equal(ds.pixel_array, expected)
            assert "decision support" in ds.SeriesDescription.lower()
            sops.add(ds.SOPInstanceUID)
            series.setdefault((Path(row["path"]).name, slug), set()).add(ds.SeriesInstanceUID)
            if Path(row["path"]).name == "CT_small.dcm":
                assert ds.PatientID == source_ct.PatientID and ds.PatientName == source_ct.PatientName
                assert ds.StudyInstanceUID == source_ct.StudyInstanceUID
                assert ds.SeriesInstanceUID != source_ct.SeriesInstanceUID
                assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source_ct.SOPInstanceUID
            if Path(row["path"]).name == "emri_small.dcm":
                assert ds.SourceImageSequence[0].ReferencedFrameNumber == int(row["frame"] or 0) + 1
            if Path(row["path"]).suffix == ".png":
                assert ds.PatientID == "" and ds.StudyInstanceUID != source_ct.StudyInstanceUID
    assert len(sops) == 24
    # Every object validates (dicom3tools): with a DICOM source (CT, enhanced MR) and without (PNG).
    for name in ("CT_small", "emri_small", png.stem):
        exported = sorted((out / "dicom").glob(f"{name}-*.dcm"))
        assert exported and dciodvfy_errors(exported[0]) == [], exported[0]
    # One new series per source series and method: the ten MR frames share theirs.
    assert all(len(uids) == 1 for uids in series.values())
    assert series[("emri_small.dcm", "gradcam")] != series[("emri_small.dcm", "gradcampp")]

    # The findings reports (TID 1500): each class's probability and presence, as predictions.csv has them.
    import highdicom as hd

    reports = sorted((out / "dicom").glob("*.sr.dcm"))
    assert len(reports) == 11 and not list((out / "dicom").glob(f"{png.stem}-*.sr.dcm"))
    frames_of = {int(r["frame"] or 0): r for r in rows if Path(r["path"]).name == "emri_small.dcm"}
    assert sorted(frames_of) == list(range(10))
    classes = sorted(c.removeprefix("p_") for c in rows[0] if c.startswith("p_"))
    mr_series = set()
    for path in reports:
        report = hd.sr.srread(path)
        groups = report.content.get_image_measurement_groups()
        (image,) = groups[0].source_images
        if image.referenced_sop_instance_uid == source_ct.SOPInstanceUID:
            (row,) = [r for r in rows if Path(r["path"]).name == "CT_small.dcm"]
            assert image.referenced_frame_numbers is None
            assert report.PatientID == source_ct.PatientID and report.StudyInstanceUID == source_ct.StudyInstanceUID
        else:
            row = frames_of[image.referenced_frame_numbers[0] - 1]
            mr_series.add(report.SeriesInstanceUID)
        assert sorted(g.tracking_identifier.removeprefix("finding: ") for g in groups) == classes
        for group in groups:
            name = group.tracking_identifier.removeprefix("finding: ")
            (probability,) = group.get_measurements()
            assert probability.value == float(row[f"p_{name}"]) and probability.unit.value == "1"
            (presence,) = group.get_qualitative_evaluations()
            assert presence.value.meaning == ("Present" if row["label"] == name else "Absent")
    assert len(mr_series) == 1  # the ten frames' reports form one new series
    assert dciodvfy_errors(reports[0]) == [] and dciodvfy_errors(reports[-1]) == []


def test_dicom_needs_explanations(tiny_run, phantom_dir, tmp_path, capsys):
    png = sorted((phantom_dir / "lesion").iterdir())[0]
    assert main(["predict", str(tiny_run), str(png), "--out", str(tmp_path / "o"), "--dicom"]) == 2
    assert "--dicom exports explanation overlays" in capsys.readouterr().err
