"""Segmentation runs end to end: config, U-Net and GAN training, evaluation, `medlens segment`, Seg-Grad-CAM."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from medlens.app.cli import main
from medlens.pipelines.config import SegRunConfig, load_config
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.segmentation_run import choose_seg_threshold
from medlens.pipelines.explain.seg_gradcam import SegGradCAM, box_region
from medlens.pipelines.phantoms import write_phantoms
from medlens.pipelines.seg_model import SegModel


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def seg_phantoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("segphantoms")
    write_phantoms(folder, count=320, size=64, seed=4, positive_fraction=0.7)
    return folder


@pytest.fixture(scope="module")
def unet_run(tmp_path_factory, seg_phantoms) -> Path:
    """The demo's tiny U-Net with the demo's settings, trained on 320 phantoms."""
    from medlens.app.demo import demo_seg_config
    from medlens.pipelines.train import train

    cfg = demo_seg_config(seg_phantoms)
    return train(cfg, tmp_path_factory.mktemp("segruns") / "unet").run_dir


def test_segmentation_config_defaults_presets_and_errors(shared_data, monkeypatch):
    monkeypatch.setenv("MEDLENS_DATA", str(shared_data))
    cfg = load_config({"task": "segmentation", "train": {"phase1": {"epochs": 3}}})
    assert isinstance(cfg, SegRunConfig)
    # A partial train section keeps the segmentation defaults, not the classifier's.
    assert cfg.train.monitor == "val_dice" and cfg.train.phase2.epochs == 0 and cfg.train.phase1.epochs == 3
    vessels = load_config("fundus-vessels")
    assert vessels.data.kind == "drive" and Path(vessels.data.root) == shared_data / "drive"
    assert load_config("brain-tumour-seg").data.columns["patient_id"] == "patient"
    for tree, message in (
        ({"data": {"patch_size": 50}}, "must be a multiple of 16"),
        ({"model": {"backbone": "resnet50"}, "data": {"patch_size": 48}}, "multiple of 32"),
        ({"model": {"architecture": "vae"}}, "'model.architecture' is 'vae'"),
        ({"evaluate": {"threshold": "otsu"}}, "must be a number or best_dice"),
        ({"model": {"backbone": "vgg16"}, "data": {"channels": 1}}, "needs data.channels=3"),
        ({"data": {"patchsize": 64}}, "unknown config key 'data.patchsize'"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config({"task": "segmentation", **tree})


def test_choose_seg_threshold_maximises_dice():
    rng = np.random.default_rng(0)
    truth = rng.random(5000) < 0.2
    probabilities = np.clip(truth * 0.35 + rng.random(5000) * 0.5, 0, 1)  # positives sit above ~0.35
    best = choose_seg_threshold(probabilities, truth)
    dice = {t: 2 * np.sum((probabilities >= t) & truth) / (np.sum(probabilities >= t) + truth.sum())
            for t in np.round(np.arange(0.05, 0.951, 0.01), 2)}
    assert best == max(dice, key=dice.get)


@pytest.mark.slow
def test_unet_run_directory_metrics_and_evaluate_command(unet_run, capsys):
    state = json.loads((unet_run / "run.json").read_text())
    assert state["task"] == "segmentation" and state["architecture"] == "unet" and state["mode"] == "whole"
    assert 0.05 <= state["threshold"] <= 0.95 and state["threshold_method"] == "best_dice on validation"
    metrics = json.loads((unet_run / "metrics.json").read_text())
    test = metrics["test"]
    counts = state["data_report"]["counts"]
    assert test["n"] == len(_rows(unet_run / "per_image_test.csv")) == counts["test"] == 48
    # Measured 0.887 (pooled Dice) and 0.994 AUC, deterministically; a U-Net that learned nothing scores ~0.
    assert test["pooled"]["dice"] >= 0.75 and test["pooled"]["auc"] >= 0.95, test["pooled"]
    assert (unet_run / "model_card.md").read_text().count("| test |") == 1
    history = _rows(unet_run / "history.csv")
    assert len(history) == state["epochs_run"] and "val_dice" in history[0]

    assert main(["evaluate", str(unet_run), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "val (pooled over pixels): n " in printed and "dice" in printed
    assert json.loads((unet_run / "metrics.json").read_text())["val"]["n"] == counts["val"]
    # A classification command on a segmentation run: one clear line, not a KeyError.
    assert main(["predict", str(unet_run), str(unet_run / "config.yaml")]) == 2
    assert "a segmentation run; use `medlens segment`" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_command_sizes_errors_and_resume_by_content(unet_run, seg_phantoms, shared_data, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    largest = max((r for r in _rows(seg_phantoms / "manifest.csv") if r["lesion_radius"] != "0.0"),
                  key=lambda r: float(r["lesion_radius"]))  # a clear lesion
    lesion = cv2.imread(str(seg_phantoms / largest["path"]), cv2.IMREAD_GRAYSCALE)
    cv2.imwrite(str(inputs / "wide scan.png"), cv2.resize(lesion, (150, 97)))
    cv2.imwrite(str(inputs / "small.png"), lesion)
    (inputs / "notes.png").write_text("not an image")
    out = tmp_path / "out"
    argv = ["segment", str(unet_run), str(inputs), str(shared_data / "dicom_samples" / "emri_small.dcm"),
            "--out", str(out), "--explain"]
    assert main(argv) == 0
    rows = _rows(out / "segmentation.csv")
    assert len(rows) == 2 + 10 and [Path(e["path"]).name for e in _rows(out / "errors.csv")] == ["notes.png"]
    sizes = {"wide scan.png": (97, 150), "small.png": (64, 64), "emri_small.dcm": (64, 64)}
    for row in rows:
        size = sizes[Path(row["path"]).name]
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED)
        probability = cv2.imread(str(out / row["probability"]), cv2.IMREAD_UNCHANGED)
        overlay = cv2.imread(str(out / row["overlay"]), cv2.IMREAD_UNCHANGED)
        assert mask.shape == size and set(np.unique(mask)) <= {0, 255}
        assert probability.shape == size and probability.dtype == np.uint16
        assert overlay.shape == (*size, 3) and (out / row["explanation"]).is_file()
        assert float(row["foreground_fraction"]) == pytest.approx((mask > 0).mean(), abs=1e-6)
        assert int(row["components"]) >= 0 and len(row["sha256"]) == 64
    small = next(r for r in rows if Path(r["path"]).name == "small.png")
    assert int(small["components"]) >= 1  # the lesion is found

    # The same folder as a clinician's report: every case with its segmentation layer.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    cases = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])["cases"]
    assert len(cases) == 12 and all([layer["name"] for layer in c["layers"]] == ["Segmentation", "Seg-Grad-CAM"]
                                    for c in cases)
    assert all((out / c["layers"][0]["src"]).is_file() for c in cases)

    # Refused without --resume/--overwrite; with --resume only changed content is redone.
    assert main(argv) == 2
    capsys.readouterr()
    cv2.imwrite(str(inputs / "small.png"), cv2.flip(lesion, 1))  # same name, new content
    assert main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "2 file(s) unchanged since the last run, kept" in printed  # wide scan + DICOM
    again = _rows(out / "segmentation.csv")
    assert len(again) == 12
    redone = next(r for r in again if Path(r["path"]).name == "small.png")
    assert redone["sha256"] != small["sha256"] and redone["mask"] != small["mask"]


@pytest.mark.slow
def test_seg_gradcam_explains_the_predicted_region(unet_run, seg_phantoms):
    model = SegModel(unet_run)
    manifest = [r for r in _rows(seg_phantoms / "manifest.csv") if r["class_name"] == "lesion"][:20]
    images = np.stack([model.model_input(cv2.imread(str(seg_phantoms / r["path"]), 0)[..., None] / 255.0)
                       for r in manifest])
    explainer = SegGradCAM(model.model, "dec1_relu2", threshold=model.threshold)
    result = explainer(images)
    assert result.maps.shape == (20, 64, 64) and explainer.layer == "dec1_relu2"
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    hits = []
    for i, row in enumerate(manifest):
        if result.empty[i]:
            continue
        truth = cv2.dilate(cv2.imread(str(seg_phantoms / row["mask"]), 0), kernel) > 0
        hits.append(truth[np.unravel_index(result.maps[i].argmax(), (64, 64))])
    # Measured 1.0 on the 18 non-empty maps of 20 lesions: "lesion here" is explained by the lesion.
    assert len(hits) >= 15 and np.mean(hits) >= 0.8, (len(hits), np.mean(hits))
    # A region with no predicted foreground is still explained (a box), an empty one is flagged.
    boxed = explainer(images[:2], box_region((64, 64), 0, 0, 64, 64))
    assert not boxed.empty.any()
    nothing = explainer(images[:1], np.zeros((1, 64, 64), np.float32))
    assert nothing.empty.all() and nothing.maps.max() == 0.0
    # The default layer is the bottleneck.
    assert SegGradCAM(model.model).layer == "bottleneck_relu2"


@pytest.mark.slow
def test_segment_explains_each_mask_with_every_method(unet_run, seg_phantoms, tmp_path, capsys):
    lesions = [r for r in _rows(seg_phantoms / "manifest.csv") if float(r["lesion_radius"]) >= 5][:6]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for row in lesions:
        (inputs / Path(row["path"]).name).write_bytes((seg_phantoms / row["path"]).read_bytes())
    out = tmp_path / "out"
    methods = ["seggradcam", "gradient", "smoothgrad", "ig", "occlusion", "lime", "kernelshap"]
    assert main(["segment", str(unet_run), str(inputs), "--out", str(out), "--samples", "200",
                 "--method", "seg-gradcam,gradient,smoothgrad,ig,occlusion,lime,shap"]) == 0
    rows = _rows(out / "segmentation.csv")
    assert len(rows) == len(lesions)
    inside: dict[str, list[float]] = {m: [] for m in methods}
    areas = []
    for row in rows:
        assert row["explanation"] == row["seggradcam_overlay"]  # the first method's overlay, as before
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
        for method in methods:
            overlay = cv2.imread(str(out / row[f"{method}_overlay"]), cv2.IMREAD_UNCHANGED)
            saliency = np.load(out / row[f"{method}_map"])
            assert overlay.shape == (64, 64, 3) and saliency.shape == (64, 64)
            assert saliency.min() >= (-1.0 if method in ("lime", "kernelshap") else 0.0) and saliency.max() <= 1.0
            if mask.any():
                inside[method].append(float(row[f"{method}_inside"]))
        if mask.any():
            areas.append(mask.mean())
    # Every method explains "lesion here" mostly by the pixels in and near the predicted lesion:
    # the share of each map's energy inside the mask is several times the mask's share of the image
    # (measured: masks 2.8 % of the image, energy inside 16 % (gradient) to 38 % (IG), i.e. 5.9-13.6x).
    assert len(areas) >= 4, areas
    for method in ("gradient", "smoothgrad", "ig", "occlusion", "lime", "kernelshap"):
        assert np.mean(inside[method]) >= 3 * np.mean(areas), (method, np.mean(inside[method]), np.mean(areas))
    # The report shows each map as a layer of its case.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    cases = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])["cases"]
    assert [layer["name"] for layer in cases[0]["layers"]] == [
        "Segmentation", "LIME of the mask", "Gradient of the mask", "SmoothGrad of the mask",
        "Integrated Gradients of the mask", "Occlusion of the mask", "Kernel SHAP of the mask", "Seg-Grad-CAM"]
    # An unknown method is refused by name, before anything is written.
    capsys.readouterr()
    assert main(["segment", str(unet_run), str(inputs), "--out", str(tmp_path / "other"), "--method", "gradcam++"]) == 2
    error = capsys.readouterr().err
    assert "unknown explanation method 'gradcam++'" in error and "seg-gradcam" in error
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_gan_run_keeps_a_plain_unet_generator(seg_phantoms, tmp_path):
    from medlens.pipelines.train import train

    cfg = load_config({
        "task": "segmentation", "name": "tiny-gan", "seed": 3,
        "data": {"kind": "csv", "root": str(seg_phantoms), "manifest": "manifest.csv",
                 "columns": {"image": "path", "mask": "mask"}, "mode": "patch", "patch_size": 32,
                 "patches_per_image": 2, "channels": 1, "batch_size": 16},
        "model": {"architecture": "gan", "depth": 2, "filters": 8, "discriminator_depth": 2,
                  "discriminator_filters": 8},
        "train": {"phase1": {"epochs": 2, "learning_rate": 0.003}},
    })
    result = train(cfg, tmp_path / "gan")
    generator = keras.saving.load_model(tmp_path / "gan" / "model.keras", compile=False)
    assert generator.name == "unet" and generator.output.shape[-1] == 1
    assert set(_rows(tmp_path / "gan" / "history.csv")[0]) >= {"g_loss", "d_loss", "val_dice"}
    assert 0.0 <= result.metrics["dice"] <= 1.0 and result.epochs_run == 2
    assert (tmp_path / "gan" / "checkpoints" / "best.keras").is_file()  # the whole GAN, to resume


def test_init_weights_copies_a_unet_and_refuses_another_shape(tmp_path):
    from medlens.models.unet import build_unet
    from medlens.pipelines.segtrain import _build_model

    donor = build_unet((None, None, 1), depth=2, filters=4)
    donor.save(tmp_path / "model.keras")
    donor.save_weights(tmp_path / "donor.weights.h5")
    for source in (tmp_path, tmp_path / "donor.weights.h5"):
        cfg = load_config({"task": "segmentation", "data": {"channels": 1, "patch_size": 32},
                           "model": {"architecture": "gan", "depth": 2, "filters": 4, "init_weights": str(source)}})
        generator = _build_model(cfg).generator
        for mine, theirs in zip(generator.get_weights(), donor.get_weights(), strict=True):
            np.testing.assert_array_equal(mine, theirs)
    other = load_config({"task": "segmentation", "data": {"channels": 1, "patch_size": 32},
                         "model": {"depth": 2, "filters": 8, "init_weights": str(tmp_path)}})
    with pytest.raises(ConfigError, match="same depth, filters and encoder"):
        _build_model(other)
    missing = load_config({"task": "segmentation", "model": {"init_weights": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match="init_weights not found"):
        _build_model(missing)


class _StopAfter(keras.callbacks.Callback):
    """Interrupts fit after ``epochs`` epochs, as a crash or a killed job would."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 >= self.epochs:
            raise KeyboardInterrupt


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["unet", "gan"])
def test_interrupted_segmentation_run_resumes_like_an_uninterrupted_one(seg_phantoms, tmp_path, architecture):
    from medlens.pipelines.train import train

    tree = {"task": "segmentation", "name": "resume", "seed": 2,
            "data": {"kind": "csv", "root": str(seg_phantoms), "manifest": "manifest.csv",
                     "columns": {"image": "path", "mask": "mask"}, "mode": "whole", "image_size": [32, 32],
                     "channels": 1, "batch_size": 16, "val_fraction": 0.2, "test_fraction": 0.2},
            "model": {"architecture": architecture, "depth": 2, "filters": 4, "discriminator_depth": 2,
                      "discriminator_filters": 4},
            "train": {"phase1": {"epochs": 4, "learning_rate": 0.003}, "early_stopping_patience": 100}}
    whole = train(load_config(tree), tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(load_config(tree), tmp_path / "cut", callbacks=[_StopAfter(2)])
    assert not (tmp_path / "cut" / "model.keras").exists()
    assert main(["train", "--resume", str(tmp_path / "cut")]) == 0
    first, second = _rows(tmp_path / "whole" / "history.csv"), _rows(tmp_path / "cut" / "history.csv")
    assert [r["epoch"] for r in second] == [r["epoch"] for r in first] == ["1", "2", "3", "4"]
    key = "loss" if architecture == "unet" else "g_loss"
    np.testing.assert_allclose([float(r[key]) for r in second], [float(r[key]) for r in first], atol=1e-4)
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())["test"]["pooled"]
    assert resumed["dice"] == pytest.approx(whole.metrics["dice"], abs=1e-4)


def test_flip_test_time_augmentation_averages_the_four_flips(tiny_seg_run, phantom_dir, tmp_path):
    import shutil

    from medlens.pipelines.config import load_config
    from medlens.pipelines.errors import ConfigError
    from medlens.pipelines.imaging import read_image
    from medlens.pipelines.seg_model import SegModel

    assert json.loads((tiny_seg_run / "run.json").read_text())["tta"] == "none"  # the default, recorded
    run = tmp_path / "run"
    shutil.copytree(tiny_seg_run, run)
    state = json.loads((run / "run.json").read_text())
    state["tta"] = "flips"
    (run / "run.json").write_text(json.dumps(state))
    plain = SegModel(tiny_seg_run)
    flipped = SegModel(run, model=plain.model)
    pixels = read_image(sorted((phantom_dir / "lesion").iterdir())[0]).pixels
    expected = np.mean([np.flip(plain.probability(np.ascontiguousarray(np.flip(pixels, axis))), axis) if axis
                        else plain.probability(pixels) for axis in ((), (1,), (0,), (0, 1))], axis=0)
    assert np.abs(flipped.probability(pixels) - expected).max() < 1e-5  # float32 resizes of flipped copies
    assert np.abs(flipped.probability(pixels) - plain.probability(pixels)).max() > 1e-3  # the small U-Net is not flip-invariant
    with pytest.raises(ConfigError, match=r"evaluate.tta.*'rotations'.*none, flips"):
        load_config({"task": "segmentation", "data": {"kind": "drive", "root": "x"}, "evaluate": {"tta": "rotations"}})
