"""Volumes as one case: NIfTI and DICOM series in, a NIfTI mask volume and a DICOM SEG out.

Built from a real LGG patient (``tests/volume_data.py``); the segmenter is a brightness
threshold, so the masks follow the image content and a misordered or mis-rotated volume cannot
match its per-slice masks by chance.
"""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import nibabel
import numpy as np
import pydicom
import pytest
from dicom_checks import dciodvfy_errors
from volume_data import brightness_model, lgg_volume, write_nifti, write_series

from medlens.app.cli import main
from medlens.pipelines.seg_model import SegModel
from medlens.pipelines.segpredict import segment_paths
from medlens.pipelines.volumes import group_series

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def lgg(shared_data):
    return lgg_volume(shared_data, slices=8)


@pytest.fixture(scope="module")
def bright(tiny_seg_run):
    return SegModel(tiny_seg_run, model=brightness_model())


def _png(out: Path, row: dict) -> np.ndarray:
    return cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) // 255


def test_nifti_volume_in_nifti_mask_out_on_the_same_grid(tiny_seg_run, bright, lgg, tmp_path):
    images, _ = lgg
    source = tmp_path / "flair.nii.gz"
    write_nifti(source, images)
    result = segment_paths(tiny_seg_run, [source], tmp_path / "out", model=bright, probability_volumes=True)
    out = result.out_dir
    assert not result.errors and len(result.rows) == 8 and len(result.volumes) == 1
    volume = result.volumes[0]
    assert volume["kind"] == "nifti" and volume["slices"] == 8 and volume["shape"] == "256x256x8"
    original, mask = nibabel.load(source), nibabel.load(out / volume["mask_volume"])
    # The input's grid, exactly: affine, shape, orientation codes, units, description.
    np.testing.assert_array_equal(mask.affine, original.affine)
    assert mask.shape == original.shape and mask.get_data_dtype() == np.uint8
    assert int(mask.header["qform_code"]) == 1 and int(mask.header["sform_code"]) == 2
    assert mask.header.get_xyzt_units() == original.header.get_xyzt_units()
    assert nibabel.aff2axcodes(mask.affine) == nibabel.aff2axcodes(original.affine)
    assert mask.header["descrip"] == original.header["descrip"]
    data = np.asarray(mask.dataobj)
    # Voxel-exact against the per-slice masks, slice by slice.
    for row in result.rows:
        np.testing.assert_array_equal(np.rot90(data[:, :, int(row["frame"])]), _png(out, row))
    assert 0 < data.sum() < data.size / 2  # the brain is bright, the background is not
    per_slice = [int(np.rot90(data[:, :, k]).sum()) for k in range(8)]
    assert len(set(per_slice)) > 4  # content differs slice by slice: the order is tested above
    assert volume["foreground_voxels"] == int(data.sum())
    voxel_ml = abs(np.linalg.det(original.affine[:3, :3])) / 1000
    assert volume["foreground_ml"] == pytest.approx(data.sum() * voxel_ml, abs=1e-4)
    assert volume["slices_with_foreground"] == sum(1 for n in per_slice if n)
    probability = nibabel.load(out / volume["probability_volume"])
    assert probability.get_data_dtype() == np.float32 and probability.shape == original.shape
    p = np.asarray(probability.dataobj)
    assert 0 <= p.min() and p.max() <= 1 and p[data > 0].mean() > 0.5 > p[data == 0].mean()
    assert not (out / "volumes" / "flair.seg.dcm").exists() and volume["seg"] == ""  # not DICOM input
    assert volume["report"] == "" and not list((out / "volumes").glob("*.sr.dcm"))


def test_dicom_series_is_one_case_and_its_seg_references_every_source_slice(tiny_seg_run, bright, lgg, tmp_path):
    import highdicom as hd

    images, _ = lgg
    files = write_series(tmp_path / "series", images)  # random file names: only the geometry orders them
    stray = tmp_path / "series" / "notes.dcm"
    stray.write_bytes(b"not a dicom file at all")
    result = segment_paths(tiny_seg_run, [tmp_path / "series"], tmp_path / "out", model=bright)
    out = result.out_dir
    assert [Path(p).name for p, _ in result.errors] == ["notes.dcm"]  # the bad file is named, the rest kept
    assert len(result.volumes) == 1 and len(result.rows) == 8
    volume = result.volumes[0]
    assert volume["kind"] == "dicom-series" and volume["slices"] == 8
    by_file = {Path(r["path"]).name: r for r in result.rows}
    assert [int(by_file[f.name]["frame"]) for f in files] == list(range(8))  # frames follow the slice position
    for k, f in enumerate(files):  # each per-slice mask follows its own slice's content
        bright_pixels = cv2.resize(images[k].astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA)
        assert (_png(out, by_file[f.name]).sum() > 0) == (bright_pixels.max() / 4095 > 0.45)

    seg = hd.seg.segread(out / volume["seg"])
    sources = [pydicom.dcmread(f) for f in files]
    assert seg.SOPClassUID == SEG_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == sources[0].StudyInstanceUID and seg.PatientID == sources[0].PatientID
    assert seg.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    referenced = {uid for _, _, uid in seg.get_source_image_uids()}
    assert referenced == {s.SOPInstanceUID for s in sources}
    for f, source in zip(files, sources, strict=True):
        frame = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID],
                                                  segment_numbers=[1])[0, ..., 0]
        np.testing.assert_array_equal(frame, _png(out, by_file[f.name]))
    assert dciodvfy_errors(out / volume["seg"]) == []

    # The TID 1500 report measures the SEG's segment: its volume is the mask's voxels × the voxel size.
    report = hd.sr.srread(out / volume["report"])
    assert report.Modality == "SR" and report.SOPClassUID == COMPREHENSIVE_3D_SR
    assert report.StudyInstanceUID == seg.StudyInstanceUID and report.PatientID == seg.PatientID
    assert len({report.SeriesInstanceUID, seg.SeriesInstanceUID, sources[0].SeriesInstanceUID}) == 3
    (group,) = report.content.get_volumetric_roi_measurement_groups()
    assert group.tracking_identifier.startswith("segment 1: ")
    referenced = group.referenced_segment
    assert referenced.referenced_sop_instance_uid == seg.SOPInstanceUID and referenced.referenced_segment_numbers == [1]
    assert {s.referenced_sop_instance_uid for s in referenced.source_images_for_segmentation} == \
        {s.SOPInstanceUID for s in sources}
    (measurement,) = group.get_measurements()
    assert measurement.name.meaning == "Volume" and measurement.unit.value == "mm3"
    masks = sum(int(_png(out, by_file[f.name]).sum()) for f in files)
    assert masks > 0 and volume["foreground_voxels"] == masks
    # The same volume as volumes.csv (millilitres to 4 decimals: ±0.05 mm³; the report has 3 decimals) and,
    # as the slice positions are written to 4 decimals (±5e-5 mm over a 35 mm stack), the nominal voxel size.
    assert measurement.value == pytest.approx(float(volume["foreground_ml"]) * 1000, abs=0.05 + 5e-4)
    assert measurement.value == pytest.approx(masks * 0.9375 * 0.9375 * 5.0, rel=1e-5)
    assert dciodvfy_errors(out / volume["report"]) == []
    # A result fed back as an input is named as what it is, not segmented as a 1-frame "image".
    again = segment_paths(tiny_seg_run, [out / volume["seg"], out / volume["report"]], tmp_path / "again", model=bright)
    assert again.rows == [] and "is a DICOM Segmentation (SEG), not an image" in again.errors[0][1]
    assert "is a DICOM Structured Report (SR), not an image" in again.errors[1][1]

    mask = nibabel.load(out / volume["mask_volume"])
    data = np.asarray(mask.dataobj)
    for k, f in enumerate(files):
        np.testing.assert_array_equal(data[:, :, k].T, _png(out, by_file[f.name]))
    # The affine is the series geometry (LPS → RAS): origin at the first slice, step along the normal.
    first, last = (np.asarray(s.ImagePositionPatient, float) for s in (sources[0], sources[-1]))
    lps_to_ras = np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(mask.affine[:3, 3], first * lps_to_ras, atol=1e-4)
    np.testing.assert_allclose(mask.affine[:3, 2], (last - first) / 7 * lps_to_ras, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(mask.affine[:3, :3], axis=0), [0.9375, 0.9375, 5.0], atol=1e-4)


def test_resume_keeps_a_finished_volume_and_a_changed_slice_redoes_it(tiny_seg_run, bright, lgg, tmp_path):
    images, _ = lgg
    files = write_series(tmp_path / "series", images[:4], shuffle=False)
    first = segment_paths(tiny_seg_run, [tmp_path / "series"], tmp_path / "out", model=bright)
    again = segment_paths(tiny_seg_run, [tmp_path / "series"], tmp_path / "out", model=bright, resume=True)
    assert again.kept == 1 and again.volumes == [{k: str(v) for k, v in first.volumes[0].items()}]
    ds = pydicom.dcmread(files[2])
    ds.PixelData = (ds.pixel_array // 2).tobytes()
    ds.save_as(files[2])
    changed = segment_paths(tiny_seg_run, [tmp_path / "series"], tmp_path / "out", model=bright, resume=True)
    assert changed.kept == 0 and changed.volumes[0]["sha256"] != first.volumes[0]["sha256"]


def test_a_volume_with_a_failed_slice_is_segmented_again_on_resume(tiny_seg_run, bright, lgg, tmp_path, monkeypatch):
    import medlens.pipelines.segpredict as segpredict

    images, _ = lgg
    source = tmp_path / "flair.nii.gz"
    write_nifti(source, images[:4])
    segment_one = segpredict._segment_one

    def fail_slice_2(model, record, *args, **kwargs):
        if record.frame == 2:
            raise ValueError("injected failure")
        return segment_one(model, record, *args, **kwargs)

    monkeypatch.setattr(segpredict, "_segment_one", fail_slice_2)
    first = segment_paths(tiny_seg_run, [source], tmp_path / "out", model=bright)
    assert len(first.rows) == 3 and first.errors == [(f"{source}#2", "injected failure")]
    assert first.volumes[0]["mask_volume"] == "" and "slice(s) 2 failed" in first.volumes[0]["note"]
    monkeypatch.setattr(segpredict, "_segment_one", segment_one)
    again = segment_paths(tiny_seg_run, [source], tmp_path / "out", model=bright, resume=True)
    assert again.kept == 0 and again.errors == [] and len(again.rows) == 4
    assert again.volumes[0]["mask_volume"] and not again.volumes[0]["note"]
    kept = segment_paths(tiny_seg_run, [source], tmp_path / "out", model=bright, resume=True)
    assert kept.kept == 1 and kept.volumes == [{k: str(v) for k, v in again.volumes[0].items()}]


def test_a_series_resumed_from_another_folder_keeps_its_volume(tiny_seg_run, bright, lgg, tmp_path, monkeypatch):
    """Volumes are found again by their first file, resolved against the folder the first batch ran from."""
    images, _ = lgg
    write_series(tmp_path / "first" / "series", images[:3], shuffle=False)
    monkeypatch.chdir(tmp_path / "first")
    made = segment_paths(tiny_seg_run, [Path("series")], tmp_path / "out", model=bright)
    assert made.volumes[0]["mask_volume"] and made.volumes[0]["first_file"].startswith("series")
    monkeypatch.chdir(tmp_path)  # the same slices, now named first/series/... from here
    again = segment_paths(tiny_seg_run, [Path("first/series")], tmp_path / "out", model=bright, resume=True)
    assert again.kept == 1 and len(again.volumes) == 1 and len(again.rows) == 3
    volume = again.volumes[0]
    assert volume["first_file"].startswith("first/series") and volume["path"].startswith("first/series")
    assert volume["sha256"] == made.volumes[0]["sha256"] and volume["mask_volume"] == made.volumes[0]["mask_volume"]
    assert (tmp_path / "out" / volume["mask_volume"]).is_file()


def test_a_broken_series_is_named_and_other_inputs_are_kept(tiny_seg_run, bright, lgg, tmp_path, phantom_dir):
    images, _ = lgg
    files = write_series(tmp_path / "series", images[:3], shuffle=False)
    ds = pydicom.dcmread(files[2])
    ds.ImagePositionPatient = pydicom.dcmread(files[1]).ImagePositionPatient  # two slices at one place
    ds.save_as(files[2])
    png = sorted((phantom_dir / "lesion").iterdir())[0]
    cases, errors = group_series([*files, png])
    assert cases == [png] and len(errors) == 1 and "two slices at one position" in errors[0][1]
    result = segment_paths(tiny_seg_run, [tmp_path / "series", png], tmp_path / "out", model=bright)
    assert [r["path"] for r in result.rows] == [str(png)] and result.volumes == []
    assert "two slices at one position (IM0001.dcm, IM0002.dcm)" in result.errors[0][1]


def test_multiframe_dicom_is_one_volume(tiny_seg_run, bright, shared_data, tmp_path):
    frames = shared_data / "dicom_samples" / "emri_small.dcm"  # enhanced MR, 10 frames, no plane geometry
    result = segment_paths(tiny_seg_run, [frames], tmp_path / "out", model=bright)
    assert len(result.rows) == 10 and len(result.volumes) == 1
    volume = result.volumes[0]
    assert volume["kind"] == "dicom-frames" and volume["slices"] == 10 and volume["mask_volume"]
    data = np.asarray(nibabel.load(result.out_dir / volume["mask_volume"]).dataobj)
    for row in result.rows:
        np.testing.assert_array_equal(data[:, :, int(row["frame"])].T, _png(result.out_dir, row))
    assert volume["foreground_ml"] == ""  # no geometry: no physical volume is claimed
    # No frame of reference either: no SEG (nor a report of one), and the note says why.
    assert volume["seg"] == volume["report"] == "" and "cannot make a DICOM SEG" in volume["note"]
    assert "Frame of Reference" in volume["note"]


def test_cli_segments_a_volume_and_writes_volumes_csv(tiny_seg_run, lgg, tmp_path, capsys):
    images, _ = lgg
    source = tmp_path / "flair.nii"
    write_nifti(source, images[:3])
    out = tmp_path / "out"
    assert main(["segment", str(tiny_seg_run), str(source), "--out", str(out), "--probability-volumes"]) == 0
    printed = capsys.readouterr().out
    assert "3 image(s) segmented" in printed and "1 volume(s)" in printed
    rows = list(csv.DictReader((out / "volumes.csv").open()))
    assert len(rows) == 1 and rows[0]["kind"] == "nifti"
    assert (out / rows[0]["mask_volume"]).is_file() and (out / rows[0]["probability_volume"]).is_file()
    np.testing.assert_array_equal(nibabel.load(out / rows[0]["mask_volume"]).affine, nibabel.load(source).affine)


def test_predict_gives_one_result_per_volume_beside_the_slice_rows(tiny_run, lgg, tmp_path, capsys):
    images, _ = lgg
    (tmp_path / "in").mkdir()
    write_nifti(tmp_path / "in" / "flair.nii.gz", images[:4])
    files = write_series(tmp_path / "in" / "series", images[4:8])
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run), str(tmp_path / "in"), "--out", str(out)]) == 0
    assert "2 volume(s), one result each" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    assert len(rows) == 8  # the per-slice rows stay
    volumes = {v["kind"]: v for v in csv.DictReader((out / "volumes.csv").open())}
    assert set(volumes) == {"nifti", "dicom-series"}
    nifti = [r for r in rows if r["path"].endswith("flair.nii.gz")]
    assert volumes["nifti"]["slices"] == "4"
    # Binary: the volume is as suspicious as its most suspicious slice, and names that slice.
    top = max(nifti, key=lambda r: float(r["p_lesion"]))
    assert volumes["nifti"]["p_lesion"] == top["p_lesion"] and volumes["nifti"]["deciding_slice"] == top["frame"]
    series = {r["path"]: r for r in rows if "series" in r["path"]}
    top_file = max(series, key=lambda p: float(series[p]["p_lesion"]))
    assert volumes["dicom-series"]["slices"] == "4" and volumes["dicom-series"]["deciding_file"] == top_file
    assert volumes["dicom-series"]["deciding_slice"] == str([str(f) for f in files].index(top_file))
    assert volumes["dicom-series"]["label"] == ("lesion" if float(series[top_file]["p_lesion"])
                                                >= float(series[top_file]["threshold"] or 0.5) else "no_lesion")


def test_volume_rules_of_multilabel_and_ordinal_predictors():
    from medlens.pipelines.predictors import MultiLabelPredictor, OrdinalPredictor

    findings = np.array([[0.9, 0.1, 0.2], [0.3, 0.7, 0.1]])  # slice 0 has finding A, slice 1 finding B
    volume, k = MultiLabelPredictor.volume_probabilities(None, findings)
    np.testing.assert_array_equal(volume, [0.9, 0.7, 0.2])
    assert k == 0
    cumulative = np.array([[0.8, 0.3, 0.1], [0.6, 0.5, 0.4], [0.2, 0.1, 0.0]])  # P(grade ≥ 1, 2, 3) per slice
    volume, k = OrdinalPredictor.volume_probabilities(None, cumulative)
    np.testing.assert_array_equal(volume, [0.8, 0.5, 0.4])
    assert np.all(np.diff(volume) <= 0) and k == 1  # still a valid cumulative; the slice of highest expected grade
