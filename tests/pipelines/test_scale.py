"""--match-scale: the training scale recorded in the run, the factor found per input, outputs at the input's size."""

from __future__ import annotations

import json
import shutil

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
    assert diameters and state["input_scale"] == {"fov_diameter_px": round(float(np.median(diameters)), 2),
                                                  "pixel_spacing_mm": None, "images": len(train)}
