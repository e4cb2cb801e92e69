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
    assert "24 DICOM Secondary Capture(s)" in capsys.readouterr().out  # 12 images × 2 methods
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


def test_dicom_needs_explanations(tiny_run, phantom_dir, tmp_path, capsys):
    png = sorted((phantom_dir / "lesion").iterdir())[0]
    assert main(["predict", str(tiny_run), str(png), "--out", str(tmp_path / "o"), "--dicom"]) == 2
    assert "--dicom exports explanation overlays" in capsys.readouterr().err
