"""Explanations alongside predictions: `predict --explain`, `medlens explain`, overlays, faithfulness."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from medlens.app.cli import main
from medlens.pipelines.explain import ExplainOptions, load_masks, parse_methods
from medlens.pipelines.phantoms import CLASS_NAMES, write_phantoms
from medlens.pipelines.predict import predict_paths


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> Path:
    """The demo's own model (small CNN, global max pooling) trained on the demo's phantoms."""
    from medlens.app.demo import demo_config
    from medlens.pipelines.train import train

    folder = tmp_path_factory.mktemp("demo")
    write_phantoms(folder / "phantoms", count=320, size=64, seed=1)
    return train(demo_config(folder / "phantoms"), folder / "run").run_dir


@pytest.fixture(scope="module")
def fresh_phantoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fresh")
    write_phantoms(folder, count=120, size=64, seed=11)
    return folder


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory, phantom_dir, shared_data) -> Path:
    """A 16-bit grey PNG of odd size, an RGB JPEG, a 10-frame DICOM and a broken file."""
    folder = tmp_path_factory.mktemp("mixed")
    lesion = cv2.imread(str(sorted((phantom_dir / "lesion").iterdir())[0]), cv2.IMREAD_GRAYSCALE)
    wide = cv2.resize(lesion, (131, 89), interpolation=cv2.INTER_LINEAR).astype(np.uint16) * 200
    cv2.imwrite(str(folder / "wide 16-bit.png"), wide)
    rgb = cv2.cvtColor(cv2.resize(lesion, (75, 75)), cv2.COLOR_GRAY2BGR)
    cv2.imwrite(str(folder / "colour.jpg"), rgb)
    (folder / "frames.dcm").write_bytes((shared_data / "dicom_samples" / "emri_small.dcm").read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return folder


@pytest.mark.slow
def test_gradcam_peak_falls_inside_the_lesion_on_demo_phantoms(demo_run, fresh_phantoms, tmp_path):
    explain = ExplainOptions(methods=("gradcam", "gradcam++"), masks=load_masks(fresh_phantoms / "masks"))
    result = predict_paths(demo_run, [fresh_phantoms / name for name in CLASS_NAMES], tmp_path / "out",
                           explain=explain)
    truth = {row["path"].split("/")[-1]: row["class_name"] for row in _rows(fresh_phantoms / "manifest.csv")}
    correct_positives = [r for r in result.rows if r["label"] == "lesion" == truth[Path(r["path"]).name]]
    assert len(correct_positives) >= 45
    for slug in ("gradcam", "gradcampp"):
        hits = [r[f"{slug}_pointing"] for r in correct_positives]
        assert set(hits) <= {0, 1}
        rate = float(np.mean(hits))
        # Measured 0.968 (Grad-CAM) and 0.984 (Grad-CAM++) on 62 positives; the bar is 0.90.
        assert rate >= 0.90, (slug, rate, len(hits))
    # Negatives have an empty mask: the pointing game does not apply to them.
    negatives = [r for r in result.rows if truth[Path(r["path"]).name] == "no_lesion"]
    assert negatives and all(r["gradcam_pointing"] == "" for r in negatives)


@pytest.mark.slow
def test_superpixel_and_occlusion_maps_point_at_the_lesion(demo_run, fresh_phantoms, tmp_path):
    """LIME and Kernel SHAP at their defaults (blurred hiding, ~100 superpixels), occlusion at its default window."""
    # 500 samples: Kernel SHAP fits ~100 superpixel weights by least squares, and at 200 samples its pointing
    # varied with the sampling seed (0.70 and 0.83 on 30 positives, seeds 0 and 1); at 500: 0.90 and 1.0.
    explain = ExplainOptions(methods=("lime", "kernelshap", "occlusion"), masks=load_masks(fresh_phantoms / "masks"),
                             lime_samples=500)
    files = sorted((fresh_phantoms / "lesion").iterdir())[:30]
    result = predict_paths(demo_run, files, tmp_path / "out", explain=explain)
    positives = [r for r in result.rows if r["label"] == "lesion"]
    assert len(positives) >= 25
    # Measured at 200 samples on 28 positives: LIME 0.93, Kernel SHAP 0.93 (with the old defaults, mean-colour hiding
    # and ~50 superpixels, LIME pointed at 0.70-0.80 of the benchmark's positives), occlusion 0.89; at 500 samples
    # on another machine's model, 30 positives: LIME 0.97, Kernel SHAP 0.90.
    for slug, bar in (("lime", 0.8), ("kernelshap", 0.8), ("occlusion", 0.75)):
        rate = float(np.mean([r[f"{slug}_pointing"] for r in positives]))
        assert rate >= bar, (slug, rate)
        energy = [r[f"{slug}_energy"] for r in positives]
        assert all(0.0 <= e <= 1.0 for e in energy)
        # A lesion covers ~2-4 % of the image; the maps put far more of their mass on it.
        assert float(np.mean(energy)) > 0.2, (slug, float(np.mean(energy)))


@pytest.mark.slow
def test_explain_sanity_checks_the_methods_it_ran(demo_run, fresh_phantoms, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)  # the check writes into the run: keep the module's run as it was
    files = sorted((fresh_phantoms / "lesion").iterdir())[:6]
    code = main(["explain", str(run), *map(str, files), "--out", str(tmp_path / "out"), "--method",
                 "gradcam,kernelshap", "--samples", "100", "--sanity"])
    assert code == 0
    printed = capsys.readouterr().out
    checks = json.loads((run / "explanation_checks.json").read_text())
    assert set(checks["methods"]) == {"gradcam", "kernelshap"} and checks["images"] >= 5
    for name, item in checks["methods"].items():
        final = item["stages"][-1]
        assert {"spearman", "ssim", "hog"} <= set(final)
        assert -1.0 <= final["hog"] <= 1.0
        # Both depend on the weights: after full randomisation their maps no longer match.
        assert item["verdict"] == "pass" and final["spearman"] < 0.5, (name, item)
    assert "Kernel SHAP: head" in printed and "explanation_checks.json" in printed


def test_predict_explain_writes_overlays_at_each_images_own_size(tiny_run, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(tiny_run), str(mixed_inputs), "--out", str(out),
                 "--explain", "gradcam,lime", "--samples", "60", "--segments", "12"])
    assert code == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 1 + 1 + 10  # PNG, JPEG, ten DICOM frames; the broken PNG is listed, not lost
    errors = _rows(out / "errors.csv")
    assert [Path(e["path"]).name for e in errors] == ["broken.png"]

    overlays = {row[f"{m}_overlay"] for row in rows for m in ("gradcam", "lime")}
    assert len(overlays) == 24  # one per image and method: the DICOM frames never overwrite each other
    for row in rows:
        name = Path(row["path"]).name
        expected = {"wide 16-bit.png": (89, 131), "colour.jpg": (75, 75), "frames.dcm": (64, 64)}[name]
        for method in ("gradcam", "lime"):
            overlay = cv2.imread(str(out / row[f"{method}_overlay"]), cv2.IMREAD_UNCHANGED)
            assert overlay.shape == (*expected, 3), (name, method)
            saliency = np.load(out / row[f"{method}_map"])
            assert saliency.shape == (48, 48)  # the model's input size
        gradcam = np.load(out / row["gradcam_map"])
        assert 0.0 <= gradcam.min() and gradcam.max() <= 1.0
        lime = np.load(out / row["lime_map"])
        assert -1.0 <= lime.min() and lime.max() <= 1.0 and np.abs(lime).max() == pytest.approx(1.0)
        assert row["explained_class"] == row["label"]
        assert 0 <= int(row["gradcam_peak_row"]) < expected[0] and 0 <= int(row["gradcam_peak_col"]) < expected[1]

    # Colour order: at the Grad-CAM peak the jet colour map is red, where the map is lowest it is blue.
    row = next(r for r in rows if Path(r["path"]).name == "wide 16-bit.png")
    overlay = cv2.cvtColor(cv2.imread(str(out / row["gradcam_overlay"])), cv2.COLOR_BGR2RGB).astype(int)
    full = cv2.resize(np.load(out / row["gradcam_map"]), (131, 89), interpolation=cv2.INTER_LINEAR)
    peak = np.unravel_index(full.argmax(), full.shape)
    low = np.unravel_index(full.argmin(), full.shape)
    assert overlay[peak][0] > overlay[peak][2] and overlay[low][2] > overlay[low][0]

    report = json.loads((out / "predictions.json").read_text())
    assert report["explain"]["methods"] == ["gradcam", "lime"] and len(report["rows"]) == 12
    details = report["rows"][0]["details"]["lime"]
    assert details["samples"] == 60 and len(details["weights"]) == details["segments"]
    assert details["top_positive"] and all(details["weights"][i] > 0 for i in details["top_positive"])


def test_occlusion_kernel_shap_and_guided_backprop_through_explain(tiny_run, mixed_inputs, tmp_path):
    out = tmp_path / "out"
    images = [mixed_inputs / "wide 16-bit.png", mixed_inputs / "colour.jpg"]
    code = main(["explain", str(tiny_run), *map(str, images), "--out", str(out), "--method", "occlusion,shap,guided",
                 "--samples", "64", "--segments", "12", "--occlusion-window", "0.25"])
    assert code == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 2
    details = json.loads((out / "predictions.json").read_text())["rows"]
    for row, detail in zip(rows, details, strict=True):
        expected = {"wide 16-bit.png": (89, 131), "colour.jpg": (75, 75)}[Path(row["path"]).name]
        for slug in ("occlusion", "kernelshap", "guided"):
            overlay = cv2.imread(str(out / row[f"{slug}_overlay"]), cv2.IMREAD_UNCHANGED)
            assert overlay.shape == (*expected, 3), slug
        guided = np.load(out / row["guided_map"])
        assert guided.shape == (48, 48) and guided.min() >= 0.0 and guided.max() == pytest.approx(1.0)
        occlusion = np.load(out / row["occlusion_map"])
        assert occlusion.shape == (48, 48) and 0.0 <= occlusion.min() and occlusion.max() <= 1.0
        shap = np.load(out / row["kernelshap_map"])
        assert shap.shape == (48, 48) and np.abs(shap).max() == pytest.approx(1.0)
        item = detail["details"]["kernelshap"]
        assert item["samples"] == 64 and len(item["weights"]) == item["segments"]
        # The map is the Shapley values over the superpixels, scaled by the largest |value|.
        assert np.abs(shap).max() * max(abs(w) for w in item["weights"]) == pytest.approx(
            max(abs(w) for w in item["weights"]))
        assert -1.0 <= float(row["kernelshap_fit_r2"]) <= 1.0


def test_explaining_does_not_change_the_predictions(tiny_run, mixed_inputs, tmp_path):
    plain = predict_paths(tiny_run, [mixed_inputs], tmp_path / "plain")
    explained = predict_paths(tiny_run, [mixed_inputs], tmp_path / "explained",
                              explain=ExplainOptions(methods=("gradcam++",)))
    assert [r["label"] for r in plain.rows] == [r["label"] for r in explained.rows]
    for a, b in zip(plain.rows, explained.rows, strict=True):
        assert a["p_lesion"] == pytest.approx(b["p_lesion"], abs=1e-5)


def test_lime_is_bit_identical_for_a_seed(tiny_run, phantom_dir, tmp_path):
    image = sorted((phantom_dir / "lesion").iterdir())[1]
    maps = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = predict_paths(tiny_run, [image], tmp_path / name,
                               explain=ExplainOptions(methods=("lime",), lime_samples=80, seed=seed))
        maps.append(np.load(tmp_path / name / result.rows[0]["lime_map"]))
    np.testing.assert_array_equal(maps[0], maps[1])
    assert not np.array_equal(maps[0], maps[2])


def test_explain_command_named_class_faithfulness_and_errors(tiny_run, phantom_dir, tmp_path, capsys):
    images = sorted((phantom_dir / "lesion").iterdir())[:3]
    out = tmp_path / "out"
    code = main(["explain", str(tiny_run), *map(str, images), "--method", "gradcam++", "--class", "no_lesion",
                 "--faithfulness", "--steps", "8", "--masks", str(phantom_dir / "masks"), "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "gradcam++: peak inside the mask" in printed and "deletion AUC" in printed
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 3 and all(r["explained_class"] == "no_lesion" for r in rows)
    for row in rows:
        assert 0.0 <= float(row["gradcampp_deletion_auc"]) <= 1.0
        assert 0.0 <= float(row["gradcampp_insertion_auc"]) <= 1.0
        assert row["gradcampp_pointing"] in ("0", "1")

    for argv, message in (
        (["--method", "gradcam,xrai"], "unknown explanation method 'xrai'"),  # 'shap', 'guided' are methods now
        (["--class", "tumour"], "class 'tumour' is not one of this run's classes: no_lesion, lesion"),
        (["--masks", str(tmp_path / "nowhere")], "mask folder does not exist"),
        (["--samples", "0", "--method", "lime"], "--samples must be at least 1"),
        (["--occlusion-window", "0", "--method", "occlusion"], "--occlusion-window must be in (0, 1]"),
    ):
        code = main(["explain", str(tiny_run), str(images[0]), "--out", str(tmp_path / "x"), *argv])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (argv, err)
    # Nothing a user made is overwritten: the same --out again is refused.
    assert main(["explain", str(tiny_run), str(images[0]), "--out", str(out)]) == 2


def test_explain_command_scores_road_and_stability(tiny_run, phantom_dir, tmp_path, capsys):
    """``--road`` and ``--stability`` through the CLI; Grad-CAM's max-sensitivity equals a direct computation."""
    from medlens.pipelines.explain.gradcam import GradCAM
    from medlens.pipelines.explain.robustness import max_sensitivity
    from medlens.pipelines.imaging import read_image
    from medlens.pipelines.predictors import Predictor

    image = sorted((phantom_dir / "lesion").iterdir())[0]
    out = tmp_path / "out"
    assert main(["explain", str(tiny_run), str(image), "--method", "gradcam,lime", "--samples", "40",
                 "--segments", "12", "--road", "--stability", "--out", str(out)]) == 0
    assert "gradcam: ROAD MoRF" in capsys.readouterr().out
    (row,) = _rows(out / "predictions.csv")
    for slug in ("gradcam", "lime"):
        assert 0.0 <= float(row[f"{slug}_road_morf"]) <= 1.0 and 0.0 <= float(row[f"{slug}_road_lerf"]) <= 1.0
        assert 0.0 < float(row[f"{slug}_stability"]) < 10.0
    predictor = Predictor(tiny_run)
    batch = predictor.preprocess(predictor.resize([read_image(image).pixels]))
    target = predictor.class_names.index(row["explained_class"])
    cam = GradCAM(predictor.model)
    expected = max_sensitivity(lambda b: cam(b, class_index=np.full(len(b), target)).maps, batch, radius=0.02,
                               samples=8, seed=0)[0]
    # Written with 4 decimals (±5e-5); the rest is float32 noise between batch compositions.
    assert float(row["gradcam_stability"]) == pytest.approx(expected, abs=1e-4)
    # The report shows it beside each map.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    (case,) = json.loads(page.split('<script id="data" type="application/json">')[1].split("</script>")[0])["cases"]
    assert {layer["name"]: float(layer["stability"]) for layer in case["layers"]} == {
        "Grad-CAM": float(row["gradcam_stability"]), "LIME": float(row["lime_stability"])}


def test_integrated_gradients_from_a_given_baseline_image(tiny_run, phantom_dir, tmp_path, capsys):
    from medlens.pipelines.data.images import prepare_image
    from medlens.pipelines.explain.saliency import IntegratedGradients
    from medlens.pipelines.imaging import read_image
    from medlens.pipelines.predictors import Predictor

    image = sorted((phantom_dir / "lesion").iterdir())[0]
    reference = sorted((phantom_dir / "no_lesion").iterdir())[0]  # e.g. a healthy reference scan
    maps = {}
    for baseline in ("black", str(reference)):
        out = tmp_path / Path(baseline).stem
        assert main(["explain", str(tiny_run), str(image), "--method", "ig", "--ig-baseline", baseline,
                     "--out", str(out)]) == 0
        (row,) = _rows(out / "predictions.csv")
        maps[baseline] = np.load(out / row["ig_map"])
    predictor = Predictor(tiny_run)
    batch = predictor.preprocess(predictor.resize([read_image(image).pixels]))
    given = predictor.preprocess(prepare_image(read_image(reference).pixels, batch.shape[1:3])[None])[0]
    target = predictor.class_names.index(row["explained_class"])
    expected = IntegratedGradients(predictor.model, steps=32, baseline=given, preprocess=predictor.preprocess)(
        batch, class_index=target).maps[0]
    np.testing.assert_allclose(maps[str(reference)], expected, atol=1e-5)  # the file, resized and preprocessed
    assert np.abs(maps[str(reference)] - maps["black"]).max() > 0.05
    capsys.readouterr()
    (tmp_path / "notes.txt").write_text("not an image")
    for baseline, message in ((str(tmp_path / "nowhere.png"), "not black, blur or an image file"),
                              (str(tmp_path / "notes.txt"), "notes.txt")):
        assert main(["explain", str(tiny_run), str(image), "--method", "ig", "--ig-baseline", baseline,
                     "--out", str(tmp_path / "bad")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad").exists()


def test_parse_methods():
    assert parse_methods("gradcam, Grad-CAM++ ,lime,gradcam") == ("gradcam", "gradcam++", "lime")
    assert parse_methods("SHAP,kernel-shap,occlusion,Layer-CAM,hirescam") == ("kernelshap", "occlusion", "layercam",
                                                                          "hirescam")
    assert parse_methods(["gradcampp"]) == ("gradcam++",)
    assert parse_methods("guided-backprop,guided") == ("guided",)


def test_predict_resume_keeps_unchanged_content_and_redoes_the_rest(tiny_run, phantom_dir, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    sources = sorted((phantom_dir / "lesion").iterdir())[:3]
    for i, source in enumerate(sources):
        (inputs / f"case{i}.png").write_bytes(source.read_bytes())
    out = tmp_path / "out"
    argv = ["predict", str(tiny_run), str(inputs), "--out", str(out), "--explain", "gradcam"]
    assert main(argv) == 0
    first = _rows(out / "predictions.csv")
    assert len(first) == 3 and all(len(r["sha256"]) == 64 for r in first)
    assert main(argv) == 2  # an existing output folder is never overwritten silently
    capsys.readouterr()

    (inputs / "case1.png").write_bytes(sorted((phantom_dir / "no_lesion").iterdir())[0].read_bytes())  # same name
    (inputs / "case3.png").write_bytes(sources[0].read_bytes())  # a new file
    (out / first[2]["gradcam_overlay"]).unlink()  # a lost output is redone too
    assert main([*argv, "--resume"]) == 0
    assert "1 file(s) unchanged since the last run, kept" in capsys.readouterr().out
    again = {Path(r["path"]).name: r for r in _rows(out / "predictions.csv")}
    assert [Path(r["path"]).name for r in _rows(out / "predictions.csv")] == [f"case{i}.png" for i in range(4)]
    assert again["case0.png"] == first[0]  # kept as it was
    assert again["case1.png"]["sha256"] != first[1]["sha256"]
    assert all((out / r["gradcam_overlay"]).is_file() for r in again.values())
    # Different explanation methods than last time: nothing can be reused.
    assert main(["predict", str(tiny_run), str(inputs), "--out", str(out), "--resume"]) == 0
    assert "kept" not in capsys.readouterr().out
