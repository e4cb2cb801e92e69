"""--deidentify: the PS3.15 basic profile on every DICOM object medlens writes, the mapping kept apart."""

from __future__ import annotations

import copy
import csv
import stat
from pathlib import Path

import pydicom
import pytest
from dicom_checks import dciodvfy_errors
from volume_data import lgg_volume, write_series

from medlens.app.cli import main
from medlens.pipelines.deidentify import Deidentifier


def _no_source_identity(folder: Path, source: pydicom.Dataset) -> None:
    """No DICOM file under ``folder`` holds the source's patient name, ID, accession number or dates."""
    secrets = [str(source.PatientName).encode(), str(source.PatientID).encode(), str(source.AccessionNumber).encode(),
               str(source.StudyDate).encode(), str(source.StudyInstanceUID).encode()]
    for path in folder.rglob("*.dcm"):
        data = path.read_bytes()
        assert not [s for s in secrets if s and s in data], path


def _mapping(path: Path) -> dict[tuple[str, str], str]:
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # readable by its owner only
    return {(r["kind"], r["original"]): r["replacement"] for r in csv.DictReader(path.open())}


def test_segment_deidentifies_the_seg_and_keeps_the_mapping_apart(tiny_seg_run, shared_data, tmp_path, capsys):
    import highdicom as hd

    images, _ = lgg_volume(shared_data, slices=4)
    files = write_series(tmp_path / "series", images)
    sources = [pydicom.dcmread(f) for f in files]
    out = tmp_path / "out"
    assert main(["segment", str(tiny_seg_run), str(tmp_path / "series"), "--out", str(out), "--deidentify"]) == 0
    mapping_file = tmp_path / "out.deidentify-map.csv"
    assert str(mapping_file) in capsys.readouterr().out
    mapping = _mapping(mapping_file)
    (seg_path,) = (out / "volumes").glob("*.seg.dcm")
    seg = hd.seg.segread(seg_path)
    pseudonym = mapping[("PatientID", sources[0].PatientID)]
    assert seg.PatientID == pseudonym == str(seg.PatientName) and pseudonym.startswith("ANON-")
    assert seg.PatientIdentityRemoved == "YES" and seg.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert seg.PatientBirthDate == "" and seg.StudyDate in ("", "19000101") and seg.AccessionNumber == ""
    assert seg.StudyInstanceUID == mapping[("UID", sources[0].StudyInstanceUID)]
    assert seg.FrameOfReferenceUID == mapping[("UID", sources[0].FrameOfReferenceUID)]
    # The SEG's references point at the de-identified copies of its source instances, consistently.
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {mapping[("UID", s.SOPInstanceUID)] for s in sources}
    assert dciodvfy_errors(seg_path) == []
    # The volume report: the same pseudonym and study, and it still points at the (de-identified) SEG.
    (report_path,) = (out / "volumes").glob("*.sr.dcm")
    report = hd.sr.srread(report_path)
    assert report.PatientID == pseudonym == str(report.PatientName) and report.PatientIdentityRemoved == "YES"
    assert report.StudyInstanceUID == seg.StudyInstanceUID
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
    assert {s.referenced_sop_instance_uid for s in group.referenced_segment.source_images_for_segmentation} == \
        referenced
    assert dciodvfy_errors(report_path) == []
    _no_source_identity(out, sources[0])
    assert not list(out.rglob("*deidentify-map*"))  # the mapping is never inside the shared folder


def test_predict_dicom_deidentifies_secondary_captures(tiny_run, shared_data, tmp_path, capsys):
    ct = shared_data / "dicom_samples" / "CT_small.dcm"
    source = pydicom.dcmread(ct)
    out = tmp_path / "out"
    keep = tmp_path / "secret" / "map.csv"
    assert main(["predict", str(tiny_run), str(ct), "--out", str(out), "--explain", "gradcam", "--dicom",
                 "--deidentify", "--deidentify-map", str(keep)]) == 0
    (sc_path,) = [p for p in (out / "dicom").glob("*.dcm") if not p.name.endswith(".sr.dcm")]
    sc = pydicom.dcmread(sc_path)
    mapping = _mapping(keep)
    # The findings report: the same pseudonym, and its reference is the de-identified source instance.
    import highdicom as hd

    (report_path,) = (out / "dicom").glob("*.sr.dcm")
    report = hd.sr.srread(report_path)
    assert report.PatientID == sc.PatientID and report.PatientIdentityRemoved == "YES"
    assert report.StudyInstanceUID == sc.StudyInstanceUID == mapping[("UID", source.StudyInstanceUID)]
    (image,) = report.content.get_image_measurement_groups()[0].source_images
    assert image.referenced_sop_instance_uid == mapping[("UID", source.SOPInstanceUID)]
    assert dciodvfy_errors(report_path) == []
    assert sc.PatientID == mapping[("PatientID", source.PatientID)] and sc.PatientIdentityRemoved == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == mapping[("UID", source.SOPInstanceUID)]
    assert "InstitutionName" not in sc and not any(e.tag.is_private for e in sc)
    assert dciodvfy_errors(sc_path) == []
    _no_source_identity(out, source)


def test_the_profile_on_a_real_ct_header(shared_data):
    ds = pydicom.dcmread(shared_data / "dicom_samples" / "CT_small.dcm")
    original = copy.deepcopy(ds)
    first, second = Deidentifier(key="site-key"), Deidentifier(key="site-key")
    first.apply(ds)
    assert ds.PatientID == second.pseudonym(original.PatientID)  # one key, one pseudonym, in any run
    assert ds.PatientID != Deidentifier(key="another-key").pseudonym(original.PatientID)
    assert ds.SOPInstanceUID == second.uid(original.SOPInstanceUID) != original.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert all(ds[k].value in ("", "19000101", "000000", "19000101000000")
               for k in ("StudyDate", "StudyTime", "ContentDate") if k in ds)
    for keyword in ("InstitutionName", "OtherPatientIDs", "PatientAge", "PatientWeight"):
        assert keyword not in ds
    assert not any(e.tag.is_private for e in ds)
    assert ds.SOPClassUID == original.SOPClassUID  # class UIDs are not identities


def test_deidentify_refusals(tiny_seg_run, tiny_run, tmp_path, capsys):
    png = tmp_path / "x.png"
    assert main(["segment", str(tiny_seg_run), str(png), "--deidentify", "--to-pacs", "http://127.0.0.1:9/dicom-web",
                 "--out", str(tmp_path / "o")]) == 2
    assert "pseudonym" in capsys.readouterr().err
    assert main(["predict", str(tiny_run), str(png), "--deidentify", "--out", str(tmp_path / "p")]) == 2
    assert "add --dicom" in capsys.readouterr().err
    assert main(["segment", str(tiny_seg_run), str(png), "--deidentify-map", "m.csv", "--out", str(tmp_path / "q")]) == 2
    assert "needs --deidentify" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.delenv("MEDLENS_DEIDENTIFY_KEY", raising=False)
