#!/usr/bin/env python
"""Diabetic-retinopathy grades on RetinaMNIST: the ordinal task beside today's softmax classifier.

Both arms train ``small_cnn`` from scratch at MedMNIST's 28 px with the settings
``benchmarks/medmnist.py`` chose on validation for RetinaMNIST (no augmentation, batch 32,
50 epochs, early stopping on validation loss, patience 12); they differ only in the task:

* ``softmax (fundus-retinopathy)``: five unordered classes, categorical cross-entropy, argmax;
* ``ordinal (fundus-grading)``: the cumulative rank-consistent head, CORAL loss, grade =
  thresholds passed at 0.5; the same models scored again with grade cut points chosen on
  validation (``evaluate.grade_cuts: accuracy`` and ``qwk``).

Reported on the official test split, mean ± sd of seeds: macro AUC one-vs-rest (MedMNIST's
metric), accuracy, quadratic weighted kappa, MAE, and the referable call (grade ≥ 2) with its
threshold chosen on validation (ordinal arm). Aims (issue): AUC ≥ 0.75 and ACC ≥ 0.55, above
MedMNIST v2 ResNet-18 0.717 / 0.524, Google AutoML Vision 0.750 / 0.531 and MedMNIST+ VGG16 at
28 px 0.754 / 0.542. Results: ``<out>/grading.json`` and ``<out>/grading.md``.

Usage::

    python benchmarks/grading.py                # 3 seeds (~10 min on 2 cores)
    python benchmarks/grading.py --quick        # 1 seed, 2 epochs
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from common import ensemble_size_error, machine_info, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-grading")
COMMON = ["model.backbone=small_cnn", "model.weights=none", "data.image_size=[28,28]", "data.augment=none",
          "data.batch_size=32", "train.phase1.epochs=50", "train.phase1.learning_rate=0.001",
          "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0", "train.early_stopping_patience=12"]
ARMS = {"softmax (fundus-retinopathy)": "fundus-retinopathy", "ordinal (fundus-grading)": "fundus-grading"}
PAPER = [("MedMNIST v2 ResNet-18 (28)", 0.717, 0.524), ("Google AutoML Vision", 0.750, 0.531),
         ("MedMNIST+ VGG16 (28)", 0.754, 0.542)]
AIM = (0.75, 0.55)
#: Objectives of the grade cut points chosen on validation (``evaluate.grade_cuts``), scored per ordinal run.
CUTS = ("accuracy", "qwk")
ORDINAL = "ordinal (fundus-grading)"


def _qwk_mae(confusion: Any) -> tuple[float, float]:
    """QWK and MAE from a confusion matrix (rows true grade, columns predicted)."""
    observed = np.asarray(confusion, np.float64)
    grades = observed.shape[0]
    distance = np.abs(np.subtract.outer(np.arange(grades), np.arange(grades)))
    total = observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0)) / total
    weights = distance.astype(np.float64) ** 2
    return float(1 - (weights * observed).sum() / (weights * expected).sum()), float((distance * observed).sum() / total)


def _record(arm: str, seed: int, m: dict[str, Any], epochs: int, seconds: float) -> dict[str, Any]:
    qwk, mae = _qwk_mae(m["confusion_matrix"])
    record = {"arm": arm, "seed": seed, "auc": m["auc"], "accuracy": m["accuracy"], "qwk": qwk, "mae": mae,
              "epochs": epochs, "seconds": round(seconds, 1)}
    if "referable" in m:
        record.update(qwk_model=m["qwk"], referable_auc=m["referable"]["auc"],
                      referable_sensitivity=m["referable"]["sensitivity"],
                      referable_specificity=m["referable"]["specificity"])
    print(f"  {arm} seed {seed}: AUC {record['auc']:.3f}, ACC {record['accuracy']:.3f}, QWK {qwk:.3f}, "
          f"MAE {mae:.3f}, {record['epochs']} epochs, {record['seconds']:.0f} s", flush=True)
    return record


def _run(arm: str, seed: int, runs: Path, quick: bool) -> list[dict[str, Any]]:
    """The arm's run for one seed; an ordinal run is scored again with grade cuts chosen on validation."""
    from medlens.pipelines.config import load_config
    from medlens.pipelines.evaluation.ordinal_run import evaluate_ordinal_run
    from medlens.pipelines.train import train

    extra = ["train.phase1.epochs=2"] if quick else []
    cfg = load_config(ARMS[arm], [*COMMON, *extra, f"seed={seed}"])
    result = train(cfg, runs / f"{ARMS[arm]}-s{seed}", overwrite=True)
    records = [_record(arm, seed, result.metrics, result.epochs_run, result.seconds)]
    if cfg.task == "ordinal":
        for objective in CUTS:  # the same model: only the decoding of P(grade ≥ k) into a grade changes
            recut = load_config(ARMS[arm], [*COMMON, *extra, f"seed={seed}", f"evaluate.grade_cuts={objective}"])
            metrics = evaluate_ordinal_run(result.run_dir, cfg=recut)
            records.append(_record(f"{arm} + grade cuts on validation ({objective})", seed, metrics,
                                   result.epochs_run, result.seconds))
    return records


def _ensembles(seeds: list[int], runs: Path, size: int, seconds: dict[int, float]) -> list[dict[str, Any]]:
    """Ensembles of ``size`` consecutive seeds' ordinal runs: ``P(grade ≥ k)`` averaged over the models.

    The referable threshold (Youden) and the grade cuts are chosen on the averaged validation
    probabilities, as one run chooses its own; the test split is scored once per decoding.
    """
    from medlens.pipelines.data import load_dataset
    from medlens.pipelines.evaluation.classification import choose_threshold
    from medlens.pipelines.evaluation.ordinal import choose_grade_cuts, ordinal_metrics
    from medlens.pipelines.evaluation.ordinal_run import predict_cumulative
    from medlens.pipelines.evaluation.runs import run_parts

    outputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for seed in seeds:
        _, model, cfg, dataset = run_parts(runs / f"{ARMS[ORDINAL]}-s{seed}", None, None, None,
                                           lambda data, s: load_dataset(data, s))
        outputs[seed] = (predict_cumulative(model, dataset.splits["val"], cfg),
                         predict_cumulative(model, dataset.splits["test"], cfg))
        val_grades, test_grades = np.asarray(dataset.splits["val"].labels), np.asarray(dataset.splits["test"].labels)
        names, referable = list(dataset.class_names), cfg.evaluate.referable
    records = []
    for start in range(0, len(seeds), size):
        group = seeds[start:start + size]
        val = np.mean([outputs[seed][0] for seed in group], axis=0)
        test = np.mean([outputs[seed][1] for seed in group], axis=0)
        threshold = choose_threshold((val_grades >= referable).astype(int), val[:, referable - 1], method="youden")
        label = f"{ORDINAL}, ensembles of {size} seeds"
        for arm, cuts in ((label, None),
                          *((f"{label} + grade cuts on validation ({o})", choose_grade_cuts(val_grades, val, o))
                            for o in CUTS)):
            metrics = ordinal_metrics(test_grades, test, names, referable=referable, threshold=threshold, ci=False,
                                      cuts=cuts)
            records.append(_record(arm, "+".join(map(str, group)), metrics, 0, sum(seconds[seed] for seed in group)))
    return records


def _stat(records: list[dict[str, Any]], key: str) -> list[float] | None:
    values = [r[key] for r in records if r.get(key) is not None]
    if not values:
        return None
    return [round(statistics.fmean(values), 4), round(statistics.stdev(values), 4) if len(values) > 1 else 0.0]


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# RetinaMNIST grades: ordinal vs softmax (small_cnn from scratch, 28 px)", "",
             f"Official test split (400 images); seeds {report['seeds']}, mean ± sd. Machine: "
             f"{report['machine'].get('cpu_model', '?')} ({report['machine']['cpu_count']} cores).", "",
             "| Method | Test AUC (macro OvR) | Test ACC | QWK | MAE | Referable AUC | Sens / spec (grade ≥ 2) | s |",
             "|---|---|---|---|---|---|---|---|"]

    def cell(value: list[float] | None) -> str:
        return "" if value is None else f"{value[0]:.3f} ± {value[1]:.3f}"

    for arm, s in report["summary"].items():
        sens, spec = s.get("referable_sensitivity"), s.get("referable_specificity")
        lines.append(f"| {arm} | {cell(s['auc'])} | {cell(s['accuracy'])} | {cell(s['qwk'])} | {cell(s['mae'])} | "
                     f"{cell(s.get('referable_auc'))} | "
                     f"{'' if sens is None else f'{sens[0]:.3f} / {spec[0]:.3f}'} | {s['seconds'][0]:.0f} |")
    for name, auc, acc in PAPER:
        lines.append(f"| {name} (published) | {auc:.3f} | {acc:.3f} | | | | | |")
    lines.append("")
    for arm, s in report["summary"].items():
        if not arm.startswith("ordinal"):
            continue
        met = s["auc"][0] >= AIM[0] and s["accuracy"][0] >= AIM[1]
        lines.append(f"Aim ({arm}): AUC ≥ {AIM[0]} and ACC ≥ {AIM[1]}: AUC {s['auc'][0]:.3f}, ACC "
                     f"{s['accuracy'][0]:.3f} — **{'met' if met else 'not met'}**.")
    lines += ["", "The grade-cut rows re-score each ordinal run's own model: cut points on E[grade] = Σ P(grade ≥ k) "
              "chosen on the 120 validation images to maximise accuracy or quadratic weighted kappa "
              "(`evaluate.grade_cuts`); AUCs and the referable call do not depend on them."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--ensemble-size", type=int, default=0, metavar="K",
                        help="also score ensembles of K consecutive seeds' ordinal runs (mean ± sd over them)")
    parser.add_argument("--ensembles-only", action="store_true",
                        help="train nothing: score the ensembles from the runs already in --runs-dir and add them "
                             "to the existing results file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    size = args.ensemble_size
    if ensemble_size_error(size, len(seeds)):
        parser.error(ensemble_size_error(size, len(seeds)))
    name = "grading_quick" if args.quick else "grading"
    runs: dict[str, list[dict[str, Any]]] = {}
    if args.ensembles_only:
        previous = json.loads((args.out / f"{name}.json").read_text(encoding="utf-8"))
        runs = {arm: records for arm, records in previous["runs"].items() if "ensembles of" not in arm}
    else:
        for arm in ARMS:
            for seed in seeds:
                for record in _run(arm, seed, args.runs_dir, args.quick):
                    runs.setdefault(record["arm"], []).append(record)
    if size:
        seconds = {int(r["seed"]): float(r["seconds"]) for r in runs[ORDINAL]}
        for record in _ensembles(seeds, args.runs_dir, size, seconds):
            runs.setdefault(record["arm"], []).append(record)
    keys = ("auc", "accuracy", "qwk", "mae", "seconds", "referable_auc", "referable_sensitivity",
            "referable_specificity")
    report = {"seeds": seeds, "machine": machine_info(), "runs": runs,
              "summary": {arm: {k: _stat(records, k) for k in keys} for arm, records in runs.items()}}
    print(write_results(args.out, name, report, _markdown(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
