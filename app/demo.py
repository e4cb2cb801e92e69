"""``medlens demo``: the whole classification pipeline, offline, in a few minutes on a laptop CPU.

1. Draws synthetic phantoms (lesion present or absent, masks saved) under ``OUT/phantoms/``.
2. Trains a small CNN on them from scratch (no downloads), two phases, into ``OUT/run/``.
3. Evaluates on the held-out test split (threshold chosen on validation).
4. Predicts a fresh set of phantoms (``OUT/phantoms/unseen/``) into ``OUT/predictions/``, with a
   Grad-CAM and a LIME heatmap beside every prediction, and scores the Grad-CAM maps against the
   known lesion masks (pointing game: is the map's peak inside the lesion?).
5. Trains a tiny U-Net on the phantoms' lesion masks (``OUT/seg-run/``) and segments the unseen
   phantoms in batch (``OUT/segmentations/``: masks, probability maps, overlays, Seg-Grad-CAM),
   scored by Dice against their true masks.

The model is a small CNN with *global max pooling* and a linear head: "is there a lesion
anywhere?" is a max over positions, and that pooling keeps the class evidence where the
lesion is, so Grad-CAM points at it (with average pooling and a dense head it scored the
same AUC but its Grad-CAM peak fell inside the lesion for under a third of the positives).
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.pipelines.config import RunConfig, SegRunConfig, load_config
from medlens.pipelines.phantoms import CLASS_NAMES, write_phantoms
from medlens.pipelines.rundir import prepare_output_dir

__all__ = ["demo_config", "run_demo"]

DEMO_IMAGE_SIZE = 64


def demo_config(phantom_folder: str | Path, *, seed: int = 7) -> RunConfig:
    """The demo's configuration: a small CNN trained from scratch on phantoms."""
    return load_config(
        {
            "name": "demo-phantoms",
            "seed": seed,
            "data": {
                "kind": "csv",
                "root": str(Path(phantom_folder).resolve()),
                "manifest": "manifest.csv",
                "class_names": list(CLASS_NAMES),
                "image_size": [DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE],
                "val_fraction": 0.15,
                "test_fraction": 0.2,
                "augment": "tumour",
                "batch_size": 32,
            },
            # A linear head straight on the max-pooled map (no head_norm: an affine map before a
            # linear layer adds nothing, and this is the head the demo's figures were measured with).
            "model": {"backbone": "small_cnn", "weights": "none", "pooling": "max", "dropout": 0.0,
                      "dense_units": 0, "head_norm": "none"},
            "train": {
                "phase1": {"epochs": 12, "learning_rate": 0.002, "unfreeze_blocks": -1},
                "phase2": {"epochs": 4, "learning_rate": 0.0003, "unfreeze_blocks": 2},
                "monitor": "val_loss",
                "early_stopping_patience": 4,
                "reduce_lr_patience": 2,
            },
        }
    )


def demo_seg_config(phantom_folder: str | Path, *, seed: int = 7) -> SegRunConfig:
    """The demo's segmentation configuration: a tiny U-Net on whole 64-px phantoms."""
    return load_config(
        {
            "name": "demo-lesion-segmentation",
            "task": "segmentation",
            "seed": seed,
            "data": {
                "kind": "csv",
                "root": str(Path(phantom_folder).resolve()),
                "manifest": "manifest.csv",
                "columns": {"image": "path", "mask": "mask"},
                "mode": "whole",
                "image_size": [DEMO_IMAGE_SIZE, DEMO_IMAGE_SIZE],
                "val_fraction": 0.15,
                "test_fraction": 0.15,
                "augment": "tumour",
                "batch_size": 16,
                "channels": 1,
            },
            "model": {"depth": 3, "filters": 8, "loss": "bce_dice"},
            "train": {"phase1": {"epochs": 10, "learning_rate": 0.003, "unfreeze_blocks": -1},
                      "early_stopping_patience": 4},
            "evaluate": {"threshold": "best_dice"},
        }
    )


def run_demo(
    out: Path,
    *,
    overwrite: bool = False,
    count: int = 320,
    echo: Callable[[str], Any] = lambda _: None,
    fit_verbose: int = 0,
    progress: Callable[[], list[Any]] | None = None,
) -> dict[str, Any]:
    """Run the demo end to end and return where everything went.

    ``progress`` makes fresh Keras callbacks for each of the two trainings (the CLI's progress bars).

    Raises:
        RunDirError: ``out`` exists and is not empty, and ``overwrite`` is False.
    """
    from medlens.pipelines.explain import ExplainOptions, load_masks
    from medlens.pipelines.predict import predict_paths
    from medlens.pipelines.segpredict import segment_paths
    from medlens.pipelines.train import train

    out = prepare_output_dir(out, overwrite=overwrite, what="demo folder")
    phantoms = out / "phantoms"
    echo(f"1/5 drawing {count} synthetic phantoms ({DEMO_IMAGE_SIZE}×{DEMO_IMAGE_SIZE}, lesion masks beside them)")
    write_phantoms(phantoms, count=count, size=DEMO_IMAGE_SIZE, seed=1)
    unseen_manifest = write_phantoms(phantoms / "unseen", count=24, size=DEMO_IMAGE_SIZE, seed=2)

    echo("2/5 training a small CNN from scratch: phase 1 (whole network), phase 2 (top blocks, lower LR)")
    result = train(demo_config(phantoms), out / "run", overwrite=overwrite, verbose=fit_verbose,
                   callbacks=progress() if progress else None)
    test = result.metrics
    echo(
        f"3/5 test split: n {test['n']}, accuracy {test['accuracy']:.3f}, AUC {test['auc']:.3f}, "
        f"sensitivity {test['sensitivity']:.3f}, specificity {test['specificity']:.3f} "
        f"(threshold {test['threshold']:.3f} chosen on validation)"
    )

    unseen = [phantoms / "unseen" / name for name in CLASS_NAMES]
    explain = ExplainOptions(methods=("gradcam", "lime"), masks=load_masks(phantoms / "unseen" / "masks"))
    predicted = predict_paths(result.run_dir, unseen, out / "predictions", overwrite=overwrite, explain=explain)
    with open(unseen_manifest, newline="") as handle:
        truth = {str((phantoms / "unseen" / row["path"]).resolve()): row["class_name"] for row in csv.DictReader(handle)}
    correct = sum(truth.get(str(Path(r["path"]).resolve())) == r["label"] for r in predicted.rows)
    echo(f"4/5 predicted {len(predicted.rows)} unseen phantoms: {correct} correct → {predicted.table}")
    hits = [r["gradcam_pointing"] for r in predicted.rows
            if r["gradcam_pointing"] != "" and truth.get(str(Path(r["path"]).resolve())) == r["label"]]
    if hits:
        echo(f"    Grad-CAM peak inside the lesion for {sum(hits)} of {len(hits)} correctly classified positives; "
             f"Grad-CAM and LIME overlays → {predicted.out_dir / 'explanations'}")

    echo("5/5 training a tiny U-Net on the lesion masks, then segmenting the unseen phantoms")
    seg = train(demo_seg_config(phantoms), out / "seg-run", overwrite=overwrite, verbose=fit_verbose,
                callbacks=progress() if progress else None)
    segmented = segment_paths(seg.run_dir, unseen, out / "segmentations", overwrite=overwrite, explain=True)
    dice = _unseen_dice(segmented, phantoms / "unseen")
    echo(f"    test split Dice {seg.metrics['dice']:.3f}; {len(segmented.rows)} unseen phantoms segmented, "
         f"Dice {dice:.3f} against their true masks → {segmented.table}")
    echo("")
    echo(f"run directory:  {result.run_dir}  (model.keras, metrics.json, plots/, model_card.md)")
    echo(f"segmentation:   {seg.run_dir}  (U-Net run) and {segmented.out_dir}  (masks/, overlays/, explanations/)")
    echo(f"phantoms:       {phantoms}  (PNG images, masks/, manifest.csv)")
    echo(f"predictions:    {predicted.table}")
    return {
        "run_dir": result.run_dir,
        "phantoms": phantoms,
        "predictions": predicted.table,
        "metrics": test,
        "unseen_correct": correct,
        "unseen_total": len(predicted.rows),
        "pointing_hits": sum(hits),
        "pointing_total": len(hits),
        "seg_run_dir": seg.run_dir,
        "seg_test_dice": seg.metrics["dice"],
        "unseen_dice": dice,
        "segmentation_csv": segmented.table,
    }


def _unseen_dice(segmented: Any, folder: Path) -> float:
    """Pooled Dice of the batch's masks against the phantoms' true lesion masks."""
    import cv2
    import numpy as np

    overlap = predicted_total = true_total = 0
    for row in segmented.rows:
        predicted = cv2.imread(str(segmented.out_dir / row["mask"]), cv2.IMREAD_GRAYSCALE) > 0
        truth = cv2.imread(str(folder / "masks" / Path(row["path"]).name), cv2.IMREAD_GRAYSCALE) > 0
        overlap += int(np.sum(predicted & truth))
        predicted_total += int(predicted.sum())
        true_total += int(truth.sum())
    return 2 * overlap / (predicted_total + true_total) if predicted_total + true_total else 1.0
