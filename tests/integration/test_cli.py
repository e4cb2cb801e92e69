"""The command line end to end on tiny data: train, evaluate, predict, weights import, errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from medlens.app.cli import main


def _tiny_yaml(tmp_path: Path, phantom_dir: Path, **data) -> Path:
    config = {
        "name": "cli-tiny",
        "seed": 1,
        "data": {"kind": "csv", "root": str(phantom_dir), "manifest": "manifest.csv", "image_size": [40, 40],
                 "batch_size": 16, **data},
        "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 8},
        "train": {"phase1": {"epochs": 1, "unfreeze_blocks": -1}, "phase2": {"epochs": 1}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_train_evaluate_predict(tmp_path, phantom_dir, capsys):
    config = _tiny_yaml(tmp_path, phantom_dir)
    run = tmp_path / "run"
    assert main(["train", str(config), "--out", str(run), "train.phase2.epochs=1"]) == 0
    out = capsys.readouterr().out
    assert "test: n " in out and str(run) in out

    assert main(["evaluate", str(run), "--split", "val"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test", "val", "threshold"} <= set(metrics)
    assert (run / "plots" / "roc_val.png").is_file()

    # A folder of good images plus bad ones: good ones all predicted, bad ones listed.
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for i, name in enumerate(sorted((phantom_dir / "lesion").iterdir())[:3]):
        (inputs / f"case {i} ü.png").write_bytes(name.read_bytes())
    (inputs / "empty.png").write_bytes(b"")
    (inputs / "notes.png").write_text("not an image")
    out_dir = tmp_path / "pred"
    code = main(["predict", str(run), str(inputs), str(tmp_path / "missing.dcm"), "--out", str(out_dir)])
    assert code == 0
    rows = list(csv.DictReader((out_dir / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 3
    assert all(row["label"] in ("no_lesion", "lesion") for row in rows)
    for row in rows:
        assert float(row["p_no_lesion"]) + float(row["p_lesion"]) == pytest.approx(1.0, abs=1e-5)
    errors = {Path(r["path"]).name: r["error"] for r in csv.DictReader((out_dir / "errors.csv").open())}
    assert set(errors) == {"empty.png", "notes.png", "missing.dcm"}

    # The same output folder is not overwritten without asking.
    assert main(["predict", str(run), str(inputs), "--out", str(out_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_predict_reads_dicom_frames(tiny_run, shared_data, tmp_path):
    out = tmp_path / "dicom"
    dicoms = shared_data / "dicom_samples"
    assert main(["predict", str(tiny_run), str(dicoms / "emri_small.dcm"), str(dicoms / "CT_small.dcm"),
                 str(dicoms / "US1_UNCR.dcm"), "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    frames = [r for r in rows if r["path"].endswith("emri_small.dcm")]
    assert len(frames) == 10 and sorted(int(r["frame"]) for r in frames) == list(range(10))
    assert len(rows) == 12


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("empty_class", "has no supported images"),
        ("missing_label_column", "label"),
        ("unknown_preset", "unknown preset"),
    ],
)
def test_user_errors_are_one_line(case, fragment, tmp_path, phantom_dir, capsys):
    if case == "empty_class":
        root = tmp_path / "tree"
        (root / "a").mkdir(parents=True)
        (root / "b").mkdir()
        image = (np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)
        for i in range(4):
            cv2.imwrite(str(root / "a" / f"{i}.png"), image)
        config = tmp_path / "c.yaml"
        config.write_text(yaml.safe_dump({"data": {"kind": "folder", "root": str(root)},
                                          "model": {"backbone": "small_cnn", "weights": "none"}}))
        argv = ["train", str(config), "--out", str(tmp_path / "r")]
        named = str(root / "b")
    elif case == "missing_label_column":
        manifest = tmp_path / "m.csv"
        with manifest.open("w", newline="") as handle:
            csv.writer(handle).writerows([["path", "diagnosis"], ["lesion/phantom_0001.png", "1"]])
        config = _tiny_yaml(tmp_path, phantom_dir, manifest=str(manifest))
        argv = ["train", str(config), "--out", str(tmp_path / "r")]
        named = "m.csv"
    else:
        argv = ["train", "no-such-preset"]
        named = "no-such-preset"
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medlens: error:") and "\n" not in err, err
    assert fragment in err and named in err, err


def test_weights_import_installs_where_keras_looks(tmp_path, monkeypatch, capsys):
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    source = tmp_path / "vgg16_notop.weights.h5"
    model.save_weights(source)
    assert main(["weights", "import", str(source), "--arch", "vgg16"]) == 0
    installed = Path(capsys.readouterr().out.strip().split(": ")[-1])
    assert installed.is_file() and installed.parent == tmp_path / "keras_home" / "models"
    assert main(["weights", "import", str(tmp_path / "nope.h5"), "--arch", "vgg16"]) == 2
    assert "nope.h5" in capsys.readouterr().err


def test_weights_export_then_fine_tune_from_it(tmp_path, tiny_run, tiny_seg_run, phantom_dir, capsys):
    """A run's backbone, exported, is what a new run at another size starts from; nothing is overwritten."""
    from medlens.models.classifier import build_classifier, get_backbone
    from medlens.models.weights import same_weights
    from medlens.pipelines.evaluation.classification_run import load_run_model
    from medlens.pipelines.rundir import file_sha256

    exported = tmp_path / "pretrained.weights.h5"
    assert main(["weights", "export", str(tiny_run), "--out", str(exported)]) == 0
    out = capsys.readouterr().out
    assert "small_cnn" in out and "48x48" in out and f"model.weights={exported}" in out, out
    source = get_backbone(load_run_model(tiny_run))

    # Fine-tune at 40 px (the run was trained at 48): the head alone trains, so the backbone stays as exported.
    config = _tiny_yaml(tmp_path, phantom_dir)
    run = tmp_path / "fine-tuned"
    assert main(["train", str(config), "--out", str(run), f"model.weights={exported}",
                 "train.phase1.unfreeze_blocks=0", "train.phase2.epochs=0"]) == 0
    capsys.readouterr()
    assert same_weights(get_backbone(load_run_model(run)), source)
    from_scratch = tmp_path / "scratch"
    assert main(["train", str(config), "--out", str(from_scratch), "train.phase1.unfreeze_blocks=0",
                 "train.phase2.epochs=0"]) == 0
    capsys.readouterr()
    assert not same_weights(get_backbone(load_run_model(from_scratch)), source)

    before = file_sha256(exported)
    assert main(["weights", "export", str(run), "--out", str(exported)]) == 2
    err = capsys.readouterr().err.strip()
    assert "already exists" in err and str(exported) in err and "\n" not in err, err
    assert file_sha256(exported) == before
    assert main(["weights", "export", str(from_scratch), "--out", str(exported), "--overwrite"]) == 0
    capsys.readouterr()
    reloaded = get_backbone(build_classifier("small_cnn", 2, (40, 40, 3), weights=str(exported), dense_units=8))
    assert same_weights(reloaded, get_backbone(load_run_model(from_scratch)))
    assert not same_weights(reloaded, source)

    for argv, fragment, named in (
        (["weights", "export", str(tiny_run), "--out", str(tmp_path / "b.h5")], ".weights.h5", "b.h5"),
        (["weights", "export", str(tmp_path / "no-run"), "--out", str(tmp_path / "c.weights.h5")],
         "not found", "no-run"),
        (["weights", "export", str(tiny_seg_run), "--out", str(tmp_path / "d.weights.h5")],
         "no classifier backbone", str(tiny_seg_run)),
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medlens: error:") and "\n" not in err and fragment in err and named in err, err
        assert not (tmp_path / "c.weights.h5").exists() and not (tmp_path / "d.weights.h5").exists()
    assert not list(tmp_path.glob(".*.tmp.weights.h5"))


def test_evaluate_changes_only_how_a_classifier_run_is_evaluated(tiny_run, tiny_seg_run, tmp_path, capsys):
    import shutil

    from medlens.pipelines.rundir import RunDir

    run_dir, seg_dir = tmp_path / "run", tmp_path / "seg"
    shutil.copytree(tiny_run, run_dir)
    shutil.copytree(tiny_seg_run, seg_dir)
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "evaluate.threshold=sensitivity", "evaluate.target_sensitivity=0.9"]) == 0
    run = RunDir(run_dir)
    assert run.read_config()["evaluate"] == {"threshold": "sensitivity", "target_sensitivity": 0.9}
    metrics, state = run.read_metrics(), run.read_state()
    assert metrics["threshold"]["method"] == "sensitivity" and state["threshold_method"] == "sensitivity"
    assert metrics["val"]["sensitivity"] >= 0.9  # the threshold is chosen on validation for that sensitivity
    seg_config = (seg_dir / "config.yaml").read_bytes()
    for argv, fragment in (([str(run_dir), "model.dropout=0.1"], "evaluate changes only evaluate.KEY=VALUE"),
                           ([str(run_dir), "evaluate.threshold=median"], "evaluate.threshold"),
                           ([str(seg_dir), "evaluate.tta=flips"], "fixed when it is trained")):
        assert main(["evaluate", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("medlens: error:") and "\n" not in err and fragment in err, err
    assert run.read_config()["evaluate"]["threshold"] == "sensitivity"
    assert (seg_dir / "config.yaml").read_bytes() == seg_config


def test_console_script_help_and_error_exit(tmp_path):
    script = Path(sys.executable).with_name("medlens")
    assert script.is_file(), "pip install should create the medlens console script"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    shown = subprocess.run([str(script), "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0 and "demo" in shown.stdout and "predict" in shown.stdout
    failed = subprocess.run([str(script), "evaluate", str(tmp_path / "nothing")], capture_output=True, text=True,
                            env=env, timeout=120)
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines() == [f"medlens: error: {tmp_path / 'nothing'}: run directory not found"]


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--count", "120"]) == 0
    printed = capsys.readouterr().out
    assert "run directory:" in printed and "predictions:" in printed
    assert (out / "run" / "model.keras").is_file()
    assert len(list((out / "phantoms" / "masks").glob("*.png"))) == 120
    rows = list(csv.DictReader((out / "predictions" / "predictions.csv").open()))
    assert len(rows) == 24
    assert all((out / "predictions" / r["gradcam_overlay"]).is_file() and r["lime_map"] for r in rows)
    segmented = list(csv.DictReader((out / "segmentations" / "segmentation.csv").open()))
    assert len(segmented) == 24 and all((out / "segmentations" / r["explanation"]).is_file() for r in segmented)
    assert "5/5 training a tiny U-Net" in printed and "unseen phantoms segmented, Dice" in printed
    assert main(["demo", "--out", str(out)]) == 2


def test_presets_lists_every_shipped_preset(capsys):
    from medlens.pipelines.config import list_presets

    assert main(["presets"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert listed == list_presets()
    assert {"fundus-vessels", "brain-tumour-seg", "xray-pneumonia"} <= set(listed)


@pytest.mark.slow
def test_no_backend_start_up_lines_reach_the_user(tiny_run, phantom_dir, tmp_path):
    # TensorFlow's C++ notices (absl, oneDNN, CUDA probing) go to file descriptor 2 from native code;
    # only a real process shows whether they reach the terminal. --explain imports the gradient code
    # first, which is where they used to leak.
    images = sorted((phantom_dir / "lesion").iterdir())[:2]
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "medlens.app.cli", "predict", str(tiny_run), *map(str, images),
                           "--out", str(tmp_path / "out"), "--explain", "gradcam"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "2 prediction(s)" in done.stdout
    for marker in ("absl", "cuInit", "oneDNN", "cuda", "I0000", "E0000"):
        assert marker not in done.stderr, done.stderr


def test_train_shows_one_summary_line_per_epoch_and_keras_lines_only_when_verbose(tmp_path, phantom_dir, capsys):
    config = _tiny_yaml(tmp_path, phantom_dir)
    assert main(["train", str(config), "--out", str(tmp_path / "quiet"), "train.phase1.epochs=2"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("phase ")]
    assert [line.split("  ")[:2] for line in lines] == [["phase 1", "epoch 1/2"], ["phase 1", "epoch 2/2"],
                                                        ["phase 2", "epoch 3/3"]]
    assert all("loss " in line and "val_auc " in line and line.endswith(" s") for line in lines)
    assert "Epoch 1/" not in out and "step - " not in out
    assert main(["--verbose", "train", str(config), "--out", str(tmp_path / "loud")]) == 0
    loud = capsys.readouterr().out
    assert "step - " in loud and not any(line.startswith("phase 1  epoch") for line in loud.splitlines())


def test_predict_walks_its_inputs_once(tiny_run, phantom_dir, tmp_path, monkeypatch):
    import medlens.pipelines.inference.inputs as inputs_module
    import medlens.pipelines.predict as predict_module

    calls = []
    original = inputs_module.expand_inputs

    def counting(inputs):
        calls.append(list(inputs))
        return original(inputs)

    # Where the CLI looks the walker up (at call time) and where the batch loop holds it.
    monkeypatch.setattr(inputs_module, "expand_inputs", counting)
    monkeypatch.setattr(predict_module, "expand_inputs", counting)
    assert main(["predict", str(tiny_run), str(phantom_dir / "lesion"), "--out", str(tmp_path / "out")]) == 0
    assert len(calls) == 1  # the progress bar and the batch share one walk of the folder
    rows = (tmp_path / "out" / "predictions.csv").read_text().strip().splitlines()
    assert len(rows) - 1 == len(list((phantom_dir / "lesion").iterdir()))
