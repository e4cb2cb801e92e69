"""The data-randomisation sanity check: shuffled labels, a model trained once, maps compared, card and report."""

from __future__ import annotations

import json
import shutil

import numpy as np

from medlens.app.cli import main
from medlens.pipelines.data import ArraySource, Dataset
from medlens.pipelines.train import shuffle_labels


def test_shuffle_labels_permutes_train_and_val_and_keeps_test():
    labels = {split: np.arange(40) % 2 for split in ("train", "val", "test")}
    dataset = Dataset(["a", "b"], {s: ArraySource(np.zeros((40, 4, 4)), labels[s]) for s in labels})
    shuffle_labels(dataset, seed=3)
    for split in ("train", "val"):
        got = dataset.splits[split].labels
        assert sorted(got.tolist()) == sorted(labels[split].tolist())  # the same labels, other images
        assert not np.array_equal(got, labels[split])
    np.testing.assert_array_equal(dataset.splits["test"].labels, labels["test"])
    again = Dataset(["a", "b"], {s: ArraySource(np.zeros((40, 4, 4)), labels[s]) for s in labels})
    shuffle_labels(again, seed=3)
    np.testing.assert_array_equal(again.splits["train"].labels, dataset.splits["train"].labels)  # seeded


def test_data_randomisation_check_trains_once_and_compares(tiny_run, phantom_dir, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    images = sorted((phantom_dir / "lesion").iterdir())[:6]
    argv = ["sanity", str(run), *map(str, images), "--methods", "gradcam,gradient", "--data", "--epochs", "1"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    shuffled = run / "sanity" / "shuffled-labels"
    assert (shuffled / "model.keras").is_file()
    assert "shuffle_labels: true" in (shuffled / "config.yaml").read_text()
    assert "Trained on shuffled labels" in (shuffled / "model_card.md").read_text()
    checks = json.loads((run / "explanation_checks.json").read_text())
    assert set(checks["methods"]) == {"gradcam", "gradient"}  # the weight check is kept beside it
    data = checks["data_randomisation"]
    assert data["model"] == "sanity/shuffled-labels" and data["images"] >= 5 and data["epochs_cap"] == 1
    for item in data["methods"].values():
        assert -1.0 <= item["spearman"] < 0.99 and -1.0 <= item["hog"] <= 1.0  # another model: other maps
        assert item["verdict"] == ("fail" if item["spearman"] >= 0.5 else "pass")
    assert "data randomisation" in printed and "Grad-CAM:" in printed
    card = (run / "model_card.md").read_text()
    assert "Data randomisation on" in card and "Cascading weight randomisation" in card

    # A second call reuses the shuffled-label model; --retrain trains it again.
    stamp = (shuffled / "model.keras").stat().st_mtime_ns
    assert main(argv) == 0
    assert (shuffled / "model.keras").stat().st_mtime_ns == stamp
    assert main([*argv, "--retrain"]) == 0
    assert (shuffled / "model.keras").stat().st_mtime_ns != stamp
