"""Made tests/data/legacy_runs/v0.1: run with medlens at commit db80bf5 as make_runs.py OUT DATA."""
import os
import shutil
import sys
from pathlib import Path

os.environ["MEDLENS_OFFLINE"] = "1"
from medlens.pipelines.config import load_config
from medlens.pipelines.phantoms import write_phantoms
from medlens.pipelines.train import train


def main() -> None:
    out, data = Path(sys.argv[1]), Path(sys.argv[2])
    write_phantoms(data, count=60, size=32, seed=11)
    cls = load_config({"name": "legacy-classifier", "seed": 3,
        "data": {"kind": "csv", "root": str(data), "manifest": "manifest.csv", "class_names": ["no_lesion", "lesion"],
                 "image_size": [32, 32], "batch_size": 16, "val_fraction": 0.25, "test_fraction": 0.25},
        "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 8, "dropout": 0.1},
        "train": {"phase1": {"epochs": 2, "learning_rate": 0.003, "unfreeze_blocks": -1},
                  "phase2": {"epochs": 1, "learning_rate": 0.0005, "unfreeze_blocks": 1}}})
    train(cls, out / "classification")
    seg = load_config({"task": "segmentation", "name": "legacy-segmentation", "seed": 3,
        "data": {"kind": "csv", "root": str(data), "manifest": "manifest.csv", "columns": {"image": "path", "mask": "mask"},
                 "mode": "whole", "image_size": [32, 32], "channels": 1, "batch_size": 16},
        "model": {"depth": 2, "filters": 4}, "train": {"phase1": {"epochs": 2, "learning_rate": 0.003}},
        "evaluate": {"threshold": "best_dice"}})
    train(seg, out / "segmentation")
    for run in ("classification", "segmentation"):
        shutil.rmtree(out / run / "checkpoints", ignore_errors=True)


if __name__ == "__main__":
    main()
