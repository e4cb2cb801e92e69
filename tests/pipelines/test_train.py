"""Two-phase training end to end on tiny phantoms: run directory, phases, reproducibility, reload."""

from __future__ import annotations

import csv
import json

import keras
import numpy as np
import pytest
from conftest import tiny_config

from medlens.models.backbones import build_backbone
from medlens.pipelines.evaluation.classification_run import evaluate_run
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.train import train


def test_run_directory_is_complete(tiny_run):
    run = RunDir(tiny_run)
    for path in (run.config_path, run.model_path, run.history_path, run.metrics_path, run.card_path,
                 run.state_path, run.plots / "roc_test.png", run.plots / "confusion_test.png",
                 run.plots / "history.png", run.checkpoints / "best.keras"):
        assert path.is_file() and path.stat().st_size > 0, path
    history = list(csv.DictReader(run.history_path.open()))
    assert [row["phase"] for row in history] == ["1", "1", "2"]
    assert [int(row["epoch"]) for row in history] == [1, 2, 3]
    assert {"loss", "val_loss", "auc", "val_auc", "learning_rate"} <= set(history[0])
    metrics = json.loads(run.metrics_path.read_text())
    test = metrics["test"]
    assert test["n"] == sum(map(sum, test["confusion_matrix"]))
    assert 0.0 <= test["auc"] <= 1.0
    assert metrics["threshold"]["chosen_on"] == "val"
    assert test["threshold"] == pytest.approx(run.read_state()["threshold"])
    assert "Decision support only" in run.card_path.read_text()
    assert "- Manifest rows skipped as unreadable: 0\n" in run.card_path.read_text()


def test_a_manifest_with_bad_rows_trains_on_the_good_ones_and_says_so(phantom_dir, tmp_path):
    rows = list(csv.DictReader((phantom_dir / "manifest.csv").open()))
    rows += [{**rows[0], "path": "lesion/not_there.png"}, {**rows[1], "label": "9"}]
    manifest = tmp_path / "manifest.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    cfg = tiny_config(phantom_dir, data__manifest=str(manifest))
    cfg.train.phase1.epochs, cfg.train.phase2.epochs = 1, 0
    run = RunDir(train(cfg, tmp_path / "run").run_dir)
    report = run.read_state()["data_report"]
    assert report["rows_skipped"] == 2 and sum(map(sum, (v.values() for v in report["class_counts"].values()))) == 120
    bad = len(rows) + 1  # the last line of the manifest
    assert report["skipped"] == [f"{manifest} line {bad - 1}: file not found under {tmp_path}: lesion/not_there.png",
                                 f"{manifest} line {bad}: label 9 but only 2 class_names (0..1)"]
    assert f"- Manifest rows skipped as unreadable: 2 (first: {report['skipped'][0]})" in run.card_path.read_text()


def test_reloaded_run_reproduces_its_metrics(tiny_run):
    before = json.loads(RunDir(tiny_run).metrics_path.read_text())["test"]
    again = evaluate_run(tiny_run, split="test")
    assert again["auc"] == pytest.approx(before["auc"], abs=1e-6)
    assert again["confusion_matrix"] == before["confusion_matrix"]


@pytest.mark.slow
def test_learns_the_phantoms(phantom_dir, tmp_path):
    cfg = tiny_config(phantom_dir, data__image_size=[64, 64])
    cfg.train.phase1.epochs = 10
    cfg.train.phase2.epochs = 2
    result = train(cfg, tmp_path / "run")
    assert result.metrics["auc"] >= 0.85, result.metrics


class _SnapshotAtPhaseEnd(keras.callbacks.Callback):
    """Keeps a copy of the backbone's weights at the end of every phase (every ``fit``)."""

    def __init__(self):
        super().__init__()
        self.snapshots: list[dict[str, list[np.ndarray]]] = []

    def on_train_end(self, logs=None):
        backbone = self.model.get_layer("backbone")
        self.snapshots.append({layer.name: [np.array(w) for w in layer.get_weights()]
                               for layer in backbone.layers if layer.weights})


@pytest.mark.slow
def test_phase1_leaves_pretrained_backbone_unchanged_and_phase2_moves_only_the_top(phantom_dir, tmp_path):
    # "Pretrained" weights we made ourselves: tests never download.
    pretrained = build_backbone("small_cnn", (48, 48, 3), "none")
    weights_file = tmp_path / "pretrained.weights.h5"
    pretrained.save_weights(weights_file)
    initial = {layer.name: [np.array(w) for w in layer.get_weights()] for layer in pretrained.layers if layer.weights}

    cfg = tiny_config(phantom_dir, model__weights=str(weights_file))
    cfg.train.phase1.unfreeze_blocks = 0
    cfg.train.phase2.unfreeze_blocks = 1
    cfg.train.phase2.learning_rate = 0.01
    snapshot = _SnapshotAtPhaseEnd()
    train(cfg, tmp_path / "run", callbacks=[snapshot])
    after_phase1, after_phase2 = snapshot.snapshots

    def changed(before, after):
        return {name for name in before
                if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))}

    assert changed(initial, after_phase1) == set(), "phase 1 must not touch the frozen backbone"
    assert changed(after_phase1, after_phase2) == {"block4_conv1"}, "phase 2 trains the top block's conv only"
    # The frozen-backbone run's saved model still holds the pretrained weights when phase 1 wins.
    assert keras.saving.load_model(tmp_path / "run" / "model.keras").get_layer("backbone").count_params() == \
        pretrained.count_params()


@pytest.mark.slow
def test_same_seed_same_metrics(phantom_dir, tmp_path):
    # Augmented batches loaded by one thread, then by two (train.workers): every draw is seeded by
    # (seed, epoch, position), so the loaders' interleaving changes nothing.
    first = train(tiny_config(phantom_dir, data__augment="xray"), tmp_path / "a")
    second = train(tiny_config(phantom_dir, data__augment="xray", train__workers=2), tmp_path / "b")
    assert (first.run_dir / "history.csv").read_text() == (second.run_dir / "history.csv").read_text()
    assert json.loads((first.run_dir / "metrics.json").read_text()) == json.loads(
        (second.run_dir / "metrics.json").read_text())


def test_refuses_to_overwrite_a_run(tiny_run, phantom_dir):
    from medlens.pipelines.errors import RunDirError

    with pytest.raises(RunDirError, match="--overwrite"):
        train(tiny_config(phantom_dir), tiny_run)
