"""A real PACS round trip: Orthanc started by the tests, DICOMweb and DIMSE, results filed with the study."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest
from orthanc import PASSWORD, USER, running_orthanc
from volume_data import lgg_volume, write_series

from medlens.app.cli import main

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


@pytest.fixture(scope="module")
def pacs(tmp_path_factory):
    with running_orthanc(tmp_path_factory.mktemp("orthanc")) as server:
        yield server


@pytest.fixture(scope="module")
def study(pacs, shared_data, tmp_path_factory) -> tuple[str, list[Path]]:
    """An 8-slice LGG MR series, stored on the PACS with ``medlens pacs push`` (DICOMweb, credentials in the URL)."""
    images, _ = lgg_volume(shared_data, slices=8)
    files = write_series(tmp_path_factory.mktemp("study") / "series", images)
    assert main(["pacs", "push", pacs.dicomweb_with_credentials, str(files[0].parent)]) == 0
    return str(pydicom.dcmread(files[0]).StudyInstanceUID), files


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("MEDLENS_PACS_USER", USER)
    monkeypatch.setenv("MEDLENS_PACS_PASSWORD", PASSWORD)


def test_push_stores_a_series_once(pacs, study, capsys):
    uid, files = study
    assert len(pacs.instances(uid)) == 8
    assert main(["pacs", "push", pacs.dicomweb_with_credentials, *map(str, files)]) == 0
    assert "0 instance(s) stored, 8 already there" in capsys.readouterr().out
    assert len(pacs.instances(uid)) == 8


def test_segment_from_pacs_to_pacs_files_a_seg_with_the_study(pacs, study, tiny_seg_run, tmp_path, credentials, capsys):
    import highdicom as hd
    from dicomweb_client.api import DICOMwebClient
    from requests import Session

    uid, files = study
    out = tmp_path / "out"
    assert main(["segment", str(tiny_seg_run), "--from-pacs", pacs.dicomweb, "--study", uid,
                 "--to-pacs", pacs.dicomweb, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pulled 8 image instance(s)" in printed and "1 volume(s)" in printed and "2 instance(s) stored" in printed
    volume = next(csv.DictReader((out / "volumes.csv").open()))
    assert volume["kind"] == "dicom-series" and volume["slices"] == "8"

    # Query it back with an independent client: same study, a new SEG series, readable, referencing the slices.
    session = Session()
    session.auth = (USER, PASSWORD)
    client = DICOMwebClient(pacs.dicomweb, session=session)
    series = client.search_for_series(study_instance_uid=uid)
    modalities = sorted(s["00080060"]["Value"][0] for s in series)
    assert modalities == ["MR", "SEG", "SR"]
    seg_series = next(s["0020000E"]["Value"][0] for s in series if s["00080060"]["Value"][0] == "SEG")
    (stored,) = client.retrieve_series(uid, seg_series)
    seg = hd.seg.Segmentation.from_dataset(stored)
    assert seg.SOPClassUID == SEG_STORAGE and seg.StudyInstanceUID == uid
    sources = {pydicom.dcmread(f).SOPInstanceUID for f in files}
    assert {s for _, _, s in seg.get_source_image_uids()} == sources
    local = hd.seg.segread(out / volume["seg"])
    np.testing.assert_array_equal(seg.get_volume().array, local.get_volume().array)
    sr_series = next(s["0020000E"]["Value"][0] for s in series if s["00080060"]["Value"][0] == "SR")
    (report,) = client.retrieve_series(uid, sr_series)  # the volume report, measuring the stored SEG's segment
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(report).content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID

    # A re-run into a new folder derives the same UIDs: the PACS gets no duplicate.
    assert main(["segment", str(tiny_seg_run), "--from-pacs", pacs.dicomweb, "--study", uid,
                 "--to-pacs", pacs.dicomweb, "--out", str(tmp_path / "again")]) == 0
    assert "0 instance(s) stored, 2 already there" in capsys.readouterr().out
    assert len(pacs.instances(uid)) == 10
    # --resume into the same folder pulls again and keeps every unchanged slice.
    assert main(["segment", str(tiny_seg_run), "--from-pacs", pacs.dicomweb, "--study", uid, "--out", str(out),
                 "--resume"]) == 0
    assert "1 file(s) unchanged since the last run, kept" in capsys.readouterr().out


def test_predict_overlays_go_to_the_pacs_as_secondary_captures(pacs, study, tiny_run, tmp_path, credentials, capsys):
    uid, _ = study
    before = len(pacs.instances(uid))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), "--from-pacs", pacs.dicomweb, "--study", uid, "--explain", "gradcam",
                 "--to-pacs", pacs.dicomweb, "--out", str(out)]) == 0
    assert "16 instance(s) stored" in capsys.readouterr().out  # 8 overlays and 8 findings reports
    after = pacs.instances(uid)
    assert len(after) == before + 16
    added = [s for s in pacs.series(uid) if s["MainDicomTags"].get("Modality") == "OT"]
    assert len(added) == 1 and len(added[0]["Instances"]) == 8  # one new series in the same study, beside the MR
    findings = [s for s in pacs.series(uid) if s["MainDicomTags"].get("SeriesDescription", "").endswith(
        "findings (decision support)")]
    assert len(findings) == 1 and len(findings[0]["Instances"]) == 8 and findings[0]["MainDicomTags"]["Modality"] == "SR"
    assert added[0]["MainDicomTags"]["SeriesDescription"].startswith("medlens Grad-CAM")
    assert added[0]["MainDicomTags"]["Manufacturer"] == "medlens"
    # Again through DIMSE (C-GET in, C-STORE out), into another folder: the same instances, none stored twice.
    assert main(["predict", str(tiny_run), "--from-pacs", pacs.dimse, "--study", uid, "--explain", "gradcam",
                 "--to-pacs", pacs.dimse, "--out", str(tmp_path / "again")]) == 0
    assert "0 instance(s) stored, 16 already there" in capsys.readouterr().out
    assert sorted(i["ID"] for i in pacs.instances(uid)) == sorted(i["ID"] for i in after)


def test_dimse_pull_and_push(pacs, study, tmp_path, capsys):
    uid, files = study
    out = tmp_path / "pulled"
    assert main(["pacs", "pull", pacs.dimse, "--study", uid, "--out", str(out)]) == 0
    pulled = sorted(out.rglob("*.dcm"))
    originals = {pydicom.dcmread(f).SOPInstanceUID: pydicom.dcmread(f) for f in files}
    mr = [pydicom.dcmread(p) for p in pulled if pydicom.dcmread(p).Modality == "MR"]
    assert len(mr) == 8
    for ds in mr:  # C-GET brings the exact pixels back
        np.testing.assert_array_equal(ds.pixel_array, originals[ds.SOPInstanceUID].pixel_array)
    assert main(["pacs", "find", pacs.dimse, "--study", uid]) == 0
    assert f"study {uid}" in capsys.readouterr().out
    assert main(["pacs", "push", pacs.dimse, *map(str, files)]) == 0
    assert "0 instance(s) stored, 8 already there" in capsys.readouterr().out


def test_pacs_errors_are_one_line_and_leave_nothing(pacs, study, tiny_seg_run, tmp_path, capsys, monkeypatch):
    uid, _ = study
    closed = "http://127.0.0.1:9/dicom-web"  # the discard port: nothing listens
    cases = [
        (["pacs", "pull", closed, "--study", uid, "--out"], "cannot reach the PACS"),
        (["pacs", "pull", f"http://{USER}:wrong@127.0.0.1:{pacs.http_port}/dicom-web", "--study", uid, "--out"],
         "refused the credentials (HTTP 401)"),
        (["pacs", "pull", pacs.dicomweb_with_credentials, "--study", "1.2.3.4.5", "--out"], "study 1.2.3.4.5 not found"),
        (["pacs", "pull", "dimse://ORTHANC@127.0.0.1:9", "--study", uid, "--out"], "cannot reach the PACS"),
        (["segment", str(tiny_seg_run), "--from-pacs", pacs.dicomweb_with_credentials, "--study", "1.2.3.4.5",
          "--out"], "not found on the PACS"),
        (["segment", str(tiny_seg_run), "--from-pacs", pacs.dicomweb_with_credentials, "--study", uid,
          "--to-pacs", closed, "--out"], "cannot reach the PACS"),
        (["pacs", "pull", "ftp://pacs/", "--study", uid, "--out"], "use http(s)://host/dicom-web"),
    ]
    for k, (argv, message) in enumerate(cases):
        target = tmp_path / f"out-{k}"
        assert main([*argv, str(target)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
        assert PASSWORD not in err and "wrong" not in err  # credentials are never echoed
        assert not target.exists(), argv  # nothing half-written
