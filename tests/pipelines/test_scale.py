"""--match-scale: the training scale recorded in the run, the factor found per input, outputs at the input's size."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from volume_data import brightness_model

from medlens.pipelines.errors import ConfigError
from medlens.pipelines.imaging import ImageRecord, read_image, read_mask
from medlens.pipelines.scale import fov_diameter, scale_factor, training_scale
from medlens.pipelines.seg_model import SegModel
from medlens.pipelines.segpredict import segment_paths


def _disc(size: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    image = np.where((yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2, 0.55, 0.01).astype(np.float32)
    return np.clip(image + np.random.default_rng(0).normal(0, 0.03, image.shape), 0, 1)[..., None]


def test_fov_diameter_of_a_disc_and_of_images_without_a_surround():
    assert fov_diameter(_disc(400, 150)) == pytest.approx(300, rel=0.02)
    assert fov_diameter(np.full((200, 200, 1), 0.7, np.float32)) is None  # bright everywhere: no FOV
    assert fov_diameter(np.zeros((50, 50, 1), np.float32)) is None


def test_fov_diameter_matches_drives_own_fov_masks(shared_data):
    images = sorted((shared_data / "drive" / "test" / "images").glob("*.tif"))[:6]
    for path in images:
        mask = read_mask(shared_data / "drive" / "test" / "mask" / path.name.replace("test.tif", "test_mask.gif"))
        truth = 2 * np.sqrt((mask > 0).sum() / np.pi)
        assert fov_diameter(read_image(path).pixels) == pytest.approx(truth, rel=0.03), path.name


def test_scale_factor_by_spacing_then_fov_and_implausible_factors(shared_data):
    record = read_image(sorted((shared_data / "drive" / "test" / "images").glob("*.tif"))[0])
    trained = fov_diameter(record.pixels)
    bigger = cv2.resize(record.pixels, None, fx=1.7, fy=1.7, interpolation=cv2.INTER_CUBIC)
    factor, how = scale_factor(ImageRecord(np.clip(bigger, 0, 1), "big.png"), {"fov_diameter_px": trained})
    assert how == "fov" and factor == pytest.approx(1 / 1.7, rel=0.03)
    spaced = ImageRecord(record.pixels, "x.dcm", spacing=(0.2, 0.2))
    assert scale_factor(spaced, {"pixel_spacing_mm": 0.1, "fov_diameter_px": trained}) == (2.0, "spacing")
    assert scale_factor(spaced, {"pixel_spacing_mm": 0.01}) == (1.0, "none")  # 20×: a wrong tag, not a camera
    assert scale_factor(ImageRecord(np.full((64, 64, 1), 0.7, np.float32), "cxr.png"), {"fov_diameter_px": 300}) == (
        1.0, "none")
    summary = training_scale([(record.pixels, None), (bigger, (0.1, 0.1)), (np.ones((8, 8, 1)), (0.3, 0.3))])
    assert summary["images"] == 3 and summary["pixel_spacing_mm"] == pytest.approx(0.2)
    assert summary["fov_diameter_px"] == pytest.approx(float(np.median([trained, fov_diameter(bigger)])), rel=1e-3)


def test_segment_match_scale_resamples_and_answers_at_the_input_size(tiny_seg_run, shared_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_seg_run, run)
    source = sorted((shared_data / "drive" / "test" / "images").glob("*.tif"))[0]
    record = read_image(source)
    state = json.loads((run / "run.json").read_text())
    state["input_scale"] = {"fov_diameter_px": fov_diameter(record.pixels), "pixel_spacing_mm": None, "images": 1}
    (run / "run.json").write_text(json.dumps(state))
    big = tmp_path / "big.png"
    pixels = np.clip(cv2.resize(record.pixels, None, fx=1.7, fy=1.7, interpolation=cv2.INTER_CUBIC), 0, 1)
    cv2.imwrite(str(big), cv2.cvtColor((pixels * 255).round().astype(np.uint8), cv2.COLOR_RGB2BGR))
    model = SegModel(run, model=brightness_model(threshold=0.3))
    result = segment_paths(run, [big], tmp_path / "out", model=model, match_scale=True)
    (row,) = result.rows
    assert row["scale_method"] == "fov" and row["scale"] == pytest.approx(1 / 1.7, rel=0.03)
    mask = cv2.imread(str(result.out_dir / row["mask"]), cv2.IMREAD_UNCHANGED)
    assert mask.shape == pixels.shape[:2]  # outputs at the input's own size

    # DICOM spacing wins over the FOV: a CT at 0.661 mm against a run trained at 1.0 mm is shrunk by 0.661.
    ct = shared_data / "dicom_samples" / "CT_small.dcm"
    state["input_scale"] = {"fov_diameter_px": 500.0, "pixel_spacing_mm": 1.0, "images": 1}
    (run / "run.json").write_text(json.dumps(state))
    result = segment_paths(run, [ct], tmp_path / "ct", model=SegModel(run, model=model.model), match_scale=True)
    (row,) = result.rows
    assert row["scale_method"] == "spacing" and row["scale"] == pytest.approx(0.661468, abs=5e-5)  # 4 decimals
    assert cv2.imread(str(result.out_dir / row["mask"]), cv2.IMREAD_UNCHANGED).shape == (128, 128)

    del state["input_scale"]  # a run from before the scale was recorded
    (run / "run.json").write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="recorded no training scale"):
        segment_paths(run, [big], tmp_path / "out2", model=SegModel(run, model=model.model), match_scale=True)


def test_a_trained_segmentation_run_records_its_training_scale(tiny_seg_run):
    from medlens.pipelines.data import load_seg_dataset
    from medlens.pipelines.rundir import RunDir

    run = RunDir(tiny_seg_run)
    state, cfg = run.read_state(), run.read_config()
    train = load_seg_dataset(cfg["data"], seed=cfg["seed"]).splits["train"][:64]  # the trainer looks at up to 64
    diameters = [d for d in (fov_diameter(read_image(s.image_path).pixels) for s in train) if d is not None]
    # Phantom PNGs carry no DICOM spacing; their round field of view is found in each image.
    sizes = [read_image(s.image_path).pixels.shape[:2] for s in train]
    assert diameters and state["input_scale"] == {"fov_diameter_px": round(float(np.median(diameters)), 2),
                                                  "pixel_spacing_mm": None, "images": len(train),
                                                  "image_size_px": [int(np.median([h for h, _ in sizes])),
                                                                    int(np.median([w for _, w in sizes]))]}


def test_field_box_crop_and_paste_are_exact_at_the_edges():
    from medlens.pipelines.scale import crop_to_box, field_box, paste_from_box

    pixels = np.arange(6 * 8, dtype=np.float32).reshape(6, 8, 1)
    box = (-2, 5, 4, 6)  # two rows above the image, three columns past its right edge
    crop = crop_to_box(pixels, box)
    assert crop.shape == (4, 6, 1) and (crop[:2] == 0).all() and (crop[:, 3:] == 0).all()
    assert (crop[2:, :3, 0] == pixels[:2, 5:8, 0]).all()
    back = paste_from_box(np.ones((4, 6), np.float32), box, (6, 8))
    assert back.shape == (6, 8) and back[:2, 5:].sum() == 6 and back.sum() == 6  # only the box's part in the image
    # A disc of diameter ~40 in a 100-px frame, against a run trained on 64-px images with a 40-px disc: a 64-px box on
    # the disc; a run without the training image size has no field to match.
    disc = _disc(100, 20.0)
    disc = np.roll(disc, (10, -15), axis=(0, 1))
    record = ImageRecord(disc, "disc.png")
    diameter = fov_diameter(disc)
    (top, left, height, width), factor, method = field_box(record, {"fov_diameter_px": diameter, "image_size_px": [64, 64]})
    assert method == "fov" and factor == pytest.approx(1.0) and (height, width) == (64, 64)
    assert (top + 31.5, left + 31.5) == pytest.approx((50 + 10, 50 - 15), abs=1.0)  # centred on the disc
    assert field_box(record, {"fov_diameter_px": diameter})[0] is None


def test_predict_match_scale_sees_the_training_field_and_maps_back(tiny_run, phantom_dir, tmp_path, capsys):
    """A phantom on a 1.7× black canvas (another camera's framing) and one enlarged 1.7×: with --match-scale the
    classifier sees the training field again, so both predict as the original does; maps come back at each
    input's own size, zero outside the matched field."""
    from medlens.app.cli import main

    state = json.loads((tiny_run / "run.json").read_text())
    assert state["input_scale"]["image_size_px"] == [64, 64] and state["input_scale"]["fov_diameter_px"] > 40
    source = sorted((phantom_dir / "lesion").iterdir())[0]
    original = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
    folder = tmp_path / "in"
    folder.mkdir()
    cv2.imwrite(str(folder / "a_original.png"), original)
    canvas = np.zeros((109, 109, *original.shape[2:]), original.dtype)
    canvas[20:84, 30:94] = original
    cv2.imwrite(str(folder / "b_framed.png"), canvas)
    cv2.imwrite(str(folder / "c_enlarged.png"), cv2.resize(original, (109, 109), interpolation=cv2.INTER_CUBIC))
    rows = {}
    for flag in ([], ["--match-scale"]):
        out = tmp_path / ("matched" if flag else "plain")
        assert main(["predict", str(tiny_run), str(folder), "--out", str(out), "--explain", "gradcam", *flag]) == 0
        rows[bool(flag)] = {Path(r["path"]).name: r for r in csv.DictReader((out / "predictions.csv").open())}
    matched, plain = rows[True], rows[False]
    p = {name: float(row["p_lesion"]) for name, row in matched.items()}
    own = float(matched["a_original.png"]["scale"])  # this phantom's field against the training median
    assert matched["b_framed.png"]["scale_method"] == "fov" and float(matched["b_framed.png"]["scale"]) == pytest.approx(own, abs=0.02)
    assert float(matched["c_enlarged.png"]["scale"]) == pytest.approx(own / 1.7, rel=0.05)
    assert abs(p["b_framed.png"] - p["a_original.png"]) < 0.05 and abs(p["c_enlarged.png"] - p["a_original.png"]) < 0.1
    assert abs(float(plain["b_framed.png"]["p_lesion"]) - p["a_original.png"]) > 2 * abs(p["b_framed.png"] - p["a_original.png"])
    framed = np.load(tmp_path / "matched" / matched["b_framed.png"]["gradcam_map"])
    assert framed.shape == (48, 48)  # the map as the model made it; the overlay is at the input's size
    overlay = cv2.imread(str(tmp_path / "matched" / matched["b_framed.png"]["gradcam_overlay"]))
    assert overlay.shape[:2] == (109, 109)
    assert 20 <= int(matched["b_framed.png"]["gradcam_peak_row"]) < 84 and 30 <= int(matched["b_framed.png"]["gradcam_peak_col"]) < 94
    # Resuming with the other setting redoes everything; a run with no recorded field is refused in one line.
    assert main(["predict", str(tiny_run), str(folder), "--out", str(tmp_path / "plain"), "--resume", "--match-scale"]) == 0
    assert "unchanged since the last run" not in capsys.readouterr().out
    old = tmp_path / "old-run"
    shutil.copytree(tiny_run, old)
    del state["input_scale"]
    (old / "run.json").write_text(json.dumps(state))
    assert main(["predict", str(old), str(folder), "--out", str(tmp_path / "x"), "--match-scale"]) == 2
    assert "recorded no training scale" in capsys.readouterr().err
