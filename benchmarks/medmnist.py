#!/usr/bin/env python
"""MedMNIST v2 benchmark for medlens: from scratch and same-domain transfer, on a CPU.

Trains and tests on PneumoniaMNIST, BreastMNIST and RetinaMNIST (28 px, official
splits) through medlens's own pipeline (``load_config`` + ``train``), then:

1. **From scratch** (``model.weights=none``, ``train.phase1.unfreeze_blocks=-1``):
   the whole ``small_cnn`` backbone trains, BatchNorm included.
2. **Same-domain transfer, offline**: the PneumoniaMNIST from-scratch run (4,708
   grey chest X-rays, train split only; its val split drives early stopping) is
   the pretraining run. Its backbone weights are saved with
   ``model.get_layer("backbone").save_weights(...)`` and fine-tuned on the small
   datasets (BreastMNIST, RetinaMNIST) with ``model.weights=<file>``: phase 1
   trains the head on the frozen backbone, phase 2 unfreezes the top blocks at a
   lower learning rate (BatchNorm stays frozen, as medlens does for fine-tuning).

Reported per run: test AUC (binary, or macro one-vs-rest), test accuracy with
medlens's threshold chosen on validation (Youden's J), test accuracy at 0.5 /
argmax (the MedMNIST paper's convention), epochs and seconds. Results go to
``<out>/medmnist.json`` and ``<out>/medmnist.md`` beside the MedMNIST v2 paper
rows (Yang et al., Sci Data 2023) and the project's aims. All settings were
tuned on the validation splits only; the test splits are read once, at the end
of each run.

Usage (from the repository root)::

    python benchmarks/medmnist.py                      # full benchmark, seeds 0,1,2 (~10 min on 2 CPU cores)
    python benchmarks/medmnist.py --quick              # smoke test, 2 epochs per phase (~5 min)
    python benchmarks/medmnist.py --datasets breast,retina --seeds 1 --runs-dir /tmp/bench

``--quick`` writes ``medmnist_quick.json``/``.md`` so it never overwrites the real results.
Run directories (models, plots, histories) go to ``--runs-dir`` (default
``/tmp/medlens-bench-runs``), never into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from common import ensemble_size_error, machine_info, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-runs")
BACKBONE = "small_cnn"
IMAGE_SIZE = 28  # MedMNIST's native size; 64 px costs ~6x the time for no validation gain here

# --------------------------------------------------------------------------- settings
# Every value below was chosen on the validation splits (see benchmarks/README.md).

DATASETS: dict[str, dict[str, Any]] = {
    "pneumonia": {
        "title": "PneumoniaMNIST",
        "preset": "xray-pneumonia",
        "npz": "medmnist/pneumoniamnist_reconstructed.npz",
        "aim": (0.97, 0.90),
        "paper": [
            ("ResNet-18 (28)", 0.944, 0.854),
            ("ResNet-50 (28)", 0.948, 0.854),
            ("auto-sklearn", 0.942, 0.855),
            ("AutoKeras", 0.947, 0.878),
            ("Google AutoML Vision", 0.991, 0.946),
        ],
        "scratch": [
            "data.augment=xray",
            "data.class_weights=true",
            "data.batch_size=64",
            "train.phase1.epochs=20",
            "train.phase1.learning_rate=0.001",
            "train.early_stopping_patience=6",
        ],
    },
    "breast": {
        "title": "BreastMNIST",
        "preset": "breast-ultrasound",
        "npz": "medmnist/breastmnist.npz",
        "aim": (0.92, 0.88),
        "paper": [
            ("ResNet-18 (28)", 0.901, 0.863),
            ("ResNet-50 (28)", 0.857, 0.812),
            ("auto-sklearn", 0.836, 0.803),
            ("AutoKeras", 0.871, 0.831),
            ("Google AutoML Vision", 0.919, 0.861),
        ],
        "scratch": [
            "data.augment=none",
            "data.class_weights=true",
            "data.batch_size=32",
            "train.phase1.epochs=60",
            "train.phase1.learning_rate=0.001",
            "train.early_stopping_patience=15",
        ],
        "transfer": [
            "data.augment=none",
            "data.class_weights=true",
            "data.batch_size=32",
            "train.phase1.epochs=20",
            "train.phase1.learning_rate=0.001",
            "train.phase2.epochs=40",
            "train.phase2.learning_rate=0.0001",
            "train.phase2.unfreeze_blocks=4",
            "train.early_stopping_patience=12",
        ],
    },
    "retina": {
        "title": "RetinaMNIST",
        "preset": "fundus-retinopathy",
        "npz": "medmnist/retinamnist.npz",
        "aim": (0.75, 0.55),
        "paper": [
            ("ResNet-18 (28)", 0.717, 0.524),
            ("ResNet-50 (28)", 0.726, 0.528),
            ("auto-sklearn", 0.690, 0.515),
            ("AutoKeras", 0.719, 0.503),
            ("Google AutoML Vision", 0.750, 0.531),
        ],
        "scratch": [
            "data.augment=none",
            "data.batch_size=32",
            "train.phase1.epochs=50",
            "train.phase1.learning_rate=0.001",
            "train.early_stopping_patience=12",
        ],
        "transfer": [
            "data.augment=none",
            "data.batch_size=32",
            "train.phase1.epochs=20",
            "train.phase1.learning_rate=0.001",
            "train.phase2.epochs=40",
            "train.phase2.learning_rate=0.0001",
            "train.phase2.unfreeze_blocks=4",
            "train.early_stopping_patience=12",
        ],
    },
}

# Shared by every run.
COMMON = [
    f"model.backbone={BACKBONE}",
    f"data.image_size=[{IMAGE_SIZE},{IMAGE_SIZE}]",
    "train.monitor=val_auc",
    "train.reduce_lr_patience=4",
    "evaluate.threshold=youden",
]
SCRATCH = ["model.weights=none", "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0"]
QUICK = ["train.phase1.epochs=2", "train.early_stopping_patience=2"]
QUICK_TRANSFER = QUICK + ["train.phase2.epochs=1"]

PRETRAIN_SOURCE = "pneumonia"

log = logging.getLogger("medmnist-bench")


# --------------------------------------------------------------------------- helpers


def _say(message: str) -> None:
    print(message, flush=True)


def _setting(overrides: list[str], key: str) -> str | None:
    value = None
    for item in overrides:
        name, _, raw = item.partition("=")
        if name == key:
            value = raw
    return value


class _EpochPrinter:
    """A Keras callback (built lazily, after Keras is imported) printing one line per epoch."""

    @staticmethod
    def make(label: str) -> Any:
        import keras

        class Printer(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.started = time.time()

            def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
                logs = logs or {}
                _say(
                    f"    [{label}] epoch {epoch + 1:3d}  loss {logs.get('loss', float('nan')):.4f}  "
                    f"val_loss {logs.get('val_loss', float('nan')):.4f}  "
                    f"val_auc {logs.get('val_auc', float('nan')):.4f}  ({time.time() - self.started:.0f}s)"
                )

        return Printer()


def _run(
    key: str,
    variant: str,
    overrides: list[str],
    runs_dir: Path,
    verbose: bool,
    seed: int = 0,
) -> tuple[dict[str, Any], Any, dict[str, Any]]:
    """Train one configuration with medlens and evaluate it.

    Returns:
        ``(record, loaded model, outputs)``: outputs hold the raw test and validation
        probabilities and labels, for the seed ensemble.
    """
    from medlens.pipelines.config import config_to_dict, load_config
    from medlens.pipelines.data import load_dataset
    from medlens.pipelines.evaluation.classification import classification_metrics
    from medlens.pipelines.evaluation.classification_run import load_run_model, predict_source
    from medlens.pipelines.train import train

    spec = DATASETS[key]
    cfg = load_config(spec["preset"], overrides)
    run_dir = runs_dir / f"seed-{seed}" / f"{key}-{variant}"
    label = f"{spec['title']} {variant} seed {seed}"
    _say(f"  {label}: training ({cfg.model.backbone}, {cfg.data.image_size[0]} px, weights "
         f"{Path(cfg.model.weights).name if variant == 'transfer' else cfg.model.weights}) ...")
    extra = [_EpochPrinter.make(label)] if verbose else []
    result = train(cfg, run_dir, overwrite=True, verbose=0, callbacks=extra)

    # The test metrics medlens wrote (binary: threshold chosen on validation by Youden's J).
    metrics = result.metrics
    state = json.loads((result.run_dir / "run.json").read_text()) if (result.run_dir / "run.json").is_file() else {}

    # The MedMNIST paper's convention: binary at 0.5, multi-class argmax (no threshold).
    model = load_run_model(result.run_dir)
    dataset = load_dataset(cfg.data, seed=cfg.seed)
    test = dataset.splits["test"]
    names = list(dataset.class_names)
    probs = predict_source(model, test, cfg, len(names))
    outputs = {"test": probs, "val": predict_source(model, dataset.splits["val"], cfg, len(names)),
               "test_labels": np.asarray(test.labels), "val_labels": np.asarray(dataset.splits["val"].labels),
               "names": names}
    plain = classification_metrics(
        np.asarray(test.labels), probs, names, threshold=0.5 if len(names) == 2 else None, ci=False
    )
    binary = len(names) == 2
    record = {
        "dataset": spec["title"],
        "variant": variant,
        "auc": metrics.get("auc"),
        "auc_ci95": metrics.get("auc_ci95"),
        "acc": metrics.get("accuracy"),
        "acc_ci95": metrics.get("accuracy_ci95"),
        "acc_at_0.5": plain["accuracy"],
        "acc_note": (
            "acc: threshold chosen on validation (Youden); acc_at_0.5: threshold 0.5"
            if binary else "multi-class: acc and acc_at_0.5 are both argmax"
        ),
        "threshold": metrics.get("threshold") if binary else None,
        "balanced_accuracy": metrics.get("balanced_accuracy"),
        "sensitivity": metrics.get("sensitivity"),
        "specificity": metrics.get("specificity"),
        "ece": metrics.get("ece"),
        "ece_uncalibrated": metrics.get("ece_uncalibrated"),
        "temperature": state.get("temperature"),
        "n_test": metrics.get("n"),
        "epochs": result.epochs_run,
        "best_epoch": state.get("best_epoch"),
        "best_monitor": state.get("best_monitor"),
        "seconds": round(result.seconds, 1),
        "run_dir": str(result.run_dir),
        "config": {
            "preset": spec["preset"],
            "overrides": overrides,
            "backbone": cfg.model.backbone,
            "weights": cfg.model.weights,
            "image_size": list(cfg.data.image_size),
            "augment": cfg.data.augment,
            "class_weights": cfg.data.class_weights,
            "batch_size": cfg.data.batch_size,
            "phase1": config_to_dict(cfg)["train"]["phase1"],
            "phase2": config_to_dict(cfg)["train"]["phase2"],
            "monitor": cfg.train.monitor,
            "early_stopping_patience": cfg.train.early_stopping_patience,
            "seed": cfg.seed,
        },
    }
    _say(
        f"  {label}: test AUC {_f(record['auc'])}  ACC {_f(record['acc'])}"
        + (f" (thr {_f(record['threshold'])})  ACC@0.5 {_f(record['acc_at_0.5'])}" if binary else " (argmax)")
        + f"  {record['epochs']} epochs, {record['seconds']:.0f}s"
    )
    return record, model, outputs


def _f(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


#: Per-seed fields averaged (mean ± sd) into a method's row.
_AVERAGED = ("auc", "acc", "acc_at_0.5", "ece", "ece_uncalibrated", "seconds", "epochs")


def _mean_sd(row: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """Add to ``row`` the mean and sample sd over ``items`` (seeds, or ensembles) of each averaged field."""
    for field in _AVERAGED:
        values = [float(item[field]) for item in items if item.get(field) is not None]
        row[field] = float(np.mean(values)) if values else None
        row[f"{field}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return row


def _aggregate(records: list[dict[str, Any]]) -> dict[str, Any]:
    """One method's row from its per-seed records: mean and sample sd of each averaged field."""
    row = _mean_sd({"seeds": [r["config"]["seed"] for r in records], "per_seed": records,
                    "binary": records[0]["threshold"] is not None, "ensemble": False}, records)
    row["thresholds"] = [r["threshold"] for r in records]
    return row


def _ensemble(records: list[dict[str, Any]], outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The seeds' models as one ensemble: test probabilities averaged over seeds.

    Its threshold (binary) and temperature are chosen on the validation split from the
    averaged validation probabilities, as medlens does for one run; the test split is read once.

    Raises:
        RuntimeError: The seeds saw different test or validation images (official splits are fixed).
    """
    from medlens.pipelines.evaluation.calibration import (
        apply_temperature,
        expected_calibration_error,
        fit_temperature,
    )
    from medlens.pipelines.evaluation.classification import choose_threshold, classification_metrics

    first = outputs[0]
    for other in outputs[1:]:
        if not (np.array_equal(other["test_labels"], first["test_labels"])
                and np.array_equal(other["val_labels"], first["val_labels"])):
            raise RuntimeError("the seeds' runs saw different test or validation splits; no ensemble")
    names, test_labels, val_labels = first["names"], first["test_labels"], first["val_labels"]
    test = np.mean([o["test"] for o in outputs], axis=0)
    val = np.mean([o["val"] for o in outputs], axis=0)
    binary = len(names) == 2
    threshold = choose_threshold(val_labels, val[:, 1], "youden") if binary else None
    chosen = classification_metrics(test_labels, test, names, threshold=threshold)
    plain = classification_metrics(test_labels, test, names, threshold=0.5 if binary else None, ci=False)
    temperature = fit_temperature(val, val_labels)
    return {
        "seeds": [r["config"]["seed"] for r in records], "binary": binary, "ensemble": True,
        "auc": chosen["auc"], "auc_ci95": chosen.get("auc_ci95"),
        "acc": chosen["accuracy"], "acc_at_0.5": plain["accuracy"],
        "threshold": threshold, "temperature": temperature,
        "ece": expected_calibration_error(apply_temperature(test, temperature), test_labels),
        "ece_uncalibrated": expected_calibration_error(test, test_labels),
        "seconds": float(sum(r["seconds"] for r in records)),
        "epochs": int(sum(r["epochs"] for r in records)),
    }  # one number each: no "_sd" (``_pm`` prints the value alone)


def _ensemble_groups(records: list[dict[str, Any]], outputs: list[dict[str, Any]], size: int) -> dict[str, Any]:
    """Ensembles of ``size`` consecutive seeds, one per group, as a method measured several times.

    Each group is scored like :func:`_ensemble`; the row holds the mean and sample sd over groups,
    so an ensemble's figure has a spread like every other row (seeds 0-2, 3-5, 6-8: three repeats).
    """
    groups = [_ensemble(records[i:i + size], outputs[i:i + size]) for i in range(0, len(records), size)]
    # seconds and epochs: per ensemble (the sum over its seeds), like a seed's row per seed.
    return _mean_sd({"seeds": [r["config"]["seed"] for r in records], "binary": groups[0]["binary"],
                     "ensemble": True, "group_size": size, "groups": groups}, groups)


def _pm(row: dict[str, Any], field: str, digits: int = 3) -> str:
    """``mean ± sd`` of a row's field (just the value for one seed or an ensemble)."""
    value, sd = row.get(field), row.get(f"{field}_sd")
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" + (f" ± {sd:.{digits}f}" if sd is not None else "")


def _aim_status(record: dict[str, Any], aim: tuple[float, float]) -> str:
    """Meets the aim when test AUC and the paper-convention ACC (0.5/argmax) both reach it."""
    auc_ok = record["auc"] is not None and record["auc"] >= aim[0]
    acc_ok = record["acc_at_0.5"] is not None and record["acc_at_0.5"] >= aim[1]
    if auc_ok and acc_ok:
        return "meets"
    misses = []
    if not auc_ok:
        misses.append(f"AUC {_f(record['auc'])} < {aim[0]:.2f}")
    if not acc_ok:
        misses.append(f"ACC {_f(record['acc_at_0.5'])} < {aim[1]:.2f}")
    return "misses (" + "; ".join(misses) + ")"


# --------------------------------------------------------------------------- report


def _method(variant: str, row: dict[str, Any]) -> str:
    what = "from scratch" if variant.startswith("scratch") else "transfer from PneumoniaMNIST"
    seeds = ", ".join(str(seed) for seed in row["seeds"])
    how = f"ensemble of seeds {seeds}" if row["ensemble"] else f"seeds {seeds}"
    if row.get("group_size"):
        size, seeds = row["group_size"], row["seeds"]
        parts = "; ".join(", ".join(map(str, seeds[i:i + size])) for i in range(0, len(seeds), size))
        how = f"ensembles of {size} seeds, mean ± sd over {len(seeds) // size} ensembles: seeds {parts}"
    return f"medlens {BACKBONE} {IMAGE_SIZE}px, {what} ({how})"


def _table(report: dict[str, Any]) -> str:
    lines = [
        "| Dataset | Method | Test AUC | Test ACC (0.5/argmax) | Test ACC (val-chosen thr.) | Test ECE (calibrated / raw) | Epochs | Train s | Aim (AUC / ACC) | Status |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, entry in report["datasets"].items():
        spec = DATASETS[key]
        aim = f"≥ {spec['aim'][0]:.2f} / ≥ {spec['aim'][1]:.2f}"
        for name, auc, acc in spec["paper"]:
            lines.append(f"| {spec['title']} | {name} (paper) | {auc:.3f} | {acc:.3f} | | | | | | |")
        for variant, row in entry["runs"].items():
            chosen = _pm(row, "acc") + (" (Youden)" if row["binary"] else " (argmax)")
            epochs = f"{row['epochs']:.0f}" + (" in all" if row["ensemble"] else "")
            lines.append(
                f"| {spec['title']} | **{_method(variant, row)}** | **{_pm(row, 'auc')}** | "
                f"**{_pm(row, 'acc_at_0.5')}** | {chosen} | {_pm(row, 'ece')} / {_pm(row, 'ece_uncalibrated')} | "
                f"{epochs} | {row['seconds']:.0f} | {aim} | {row['aim_status']} |"
            )
    return "\n".join(lines)


def _transfer_table(report: dict[str, Any]) -> str:
    rows = []
    for key, entry in report["datasets"].items():
        runs = entry["runs"]
        if "scratch" in runs and "transfer" in runs:
            s, t = runs["scratch"], runs["transfer"]
            rows.append(
                f"| {DATASETS[key]['title']} | {_pm(s, 'auc')} / {_pm(s, 'acc_at_0.5')} | "
                f"{_pm(t, 'auc')} / {_pm(t, 'acc_at_0.5')} | {t['auc'] - s['auc']:+.3f} / "
                f"{t['acc_at_0.5'] - s['acc_at_0.5']:+.3f} | {s['seconds']:.0f} / {t['seconds']:.0f} |"
            )
    if not rows:
        return ""
    head = [
        "| Dataset | From scratch AUC / ACC | Transfer AUC / ACC | Δ AUC / Δ ACC (means) | Train s (scratch / transfer) |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + rows)


def _markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    pre = report.get("pretraining")
    lines = [
        "# medlens on MedMNIST v2 (28 px)" + (" — QUICK SMOKE TEST, not a result" if report["quick"] else ""),
        "",
        f"Generated by `{report.get('command', 'python benchmarks/medmnist.py')}` on "
        f"{report['finished']}: {m['cpu_count']} CPU cores ({m.get('cpu_model', m['processor'])}), "
        f"{'GPU ' + ', '.join(m['gpus']) if m['gpus'] else 'no GPU'}, Keras {m['keras']} / TensorFlow "
        f"{m['tensorflow']}, seeds {', '.join(map(str, report['seeds']))} (mean ± sd over seeds; the "
        f"ensemble rows average the seeds' test probabilities). Total wall time {report['total_seconds'] / 60:.1f} min.",
        "",
        "Test split, official MedMNIST splits. **ACC (0.5/argmax)** follows the MedMNIST paper "
        "(binary threshold 0.5, multi-class argmax) and is the one compared with the paper and the aims; "
        "**ACC (val-chosen thr.)** is what medlens reports by default (binary threshold chosen on the "
        "validation split by Youden's J, then applied unchanged to test). AUC: binary ROC AUC, "
        "RetinaMNIST macro one-vs-rest. Paper rows: Yang et al., *MedMNIST v2*, Sci Data 10, 41 (2023), "
        "Table of test AUC/ACC. A row meets the aim only when both its AUC and its ACC (0.5/argmax) reach it. "
        "**ECE**: top-label expected calibration error on test (15 bins) after temperature scaling fitted on "
        "validation, and of the raw outputs (project goal: calibrated ECE ≤ 0.05). An ensemble's threshold "
        "and temperature are chosen on the averaged validation probabilities. A row meets an aim on its mean.",
        "",
        _table(report),
        "",
    ]
    transfer = _transfer_table(report)
    if transfer:
        lines += [
            "## Same-domain transfer vs from scratch",
            "",
            f"Backbone pretrained offline on the PneumoniaMNIST train split, once per seed "
            f"({pre['epochs']:.0f} epochs, {pre['seconds']:.0f}s on average; its val split for early stopping), saved with "
            "`model.get_layer(\"backbone\").save_weights(...)` and fine-tuned with `model.weights=<file>`: "
            "phase 1 frozen backbone, phase 2 top blocks unfrozen at a lower learning rate." if pre else "",
            "",
            transfer,
            "",
        ]
    lines += [
        "## Settings",
        "",
        f"Backbone `{BACKBONE}` (4 conv blocks, 16-32-64-128 filters), input {IMAGE_SIZE}×{IMAGE_SIZE}×3, "
        "Adam, early stopping and best-epoch selection on `val_auc`. Per-run overrides of the presets "
        f"are in `{report.get('stem', 'medmnist')}.json` (`config.overrides`). Runs (models, plots, histories) were written to "
        f"`{report['runs_dir']}`.",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None,
                        help="shared data folder holding medmnist/ (default: $MEDLENS_DATA or ../shared/data)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where medmnist.json/.md go")
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS,
                        help="where run directories (models, plots) go; default /tmp/medlens-bench-runs")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: 2 epochs per phase (1 for fine-tuning), writes medmnist_quick.*")
    parser.add_argument("--datasets", default="pneumonia,breast,retina",
                        help="comma-separated subset of pneumonia,breast,retina")
    parser.add_argument("--no-transfer", action="store_true", help="skip pretraining and the transfer runs")
    parser.add_argument("--seeds", default="0,1,2",
                        help="comma-separated seeds; each method runs once per seed (mean ± sd, and an ensemble)")
    parser.add_argument("--seed", type=int, default=None, help="one seed only (same as --seeds N)")
    parser.add_argument("--ensemble-size", type=int, default=0, metavar="K",
                        help="also score ensembles of K consecutive seeds (e.g. 3 with --seeds 0,...,8: three "
                             "ensembles, mean ± sd over them)")
    parser.add_argument("--stem", default="medmnist",
                        help="file name of the results without extension (default medmnist: medmnist.json/.md)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print one line per epoch")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.datasets.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in DATASETS]
    if unknown or not chosen:
        parser.error(f"--datasets: unknown {', '.join(unknown) or '(empty)'}; choose from {', '.join(DATASETS)}")
    args.datasets = [name for name in DATASETS if name in chosen]
    try:
        args.seeds = [args.seed] if args.seed is not None else [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds: not a comma-separated list of integers: {args.seeds!r}")
    if not args.seeds or len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds: give distinct seeds, e.g. 0,1,2 (got {args.seeds!r})")
    if ensemble_size_error(args.ensemble_size, len(args.seeds)):
        parser.error(ensemble_size_error(args.ensemble_size, len(args.seeds)))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data is not None:
        os.environ["MEDLENS_DATA"] = str(args.data.expanduser().resolve())
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # predict_on_batch retraces on the smaller last batch; TensorFlow's warning about it is noise here.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)

    from medlens.pipelines.config import data_root
    from medlens.pipelines.errors import MedlensError

    root = data_root()
    for key in args.datasets:
        if not (root / DATASETS[key]["npz"]).is_file():
            print(f"error: {root / DATASETS[key]['npz']} not found (set --data or MEDLENS_DATA)", file=sys.stderr)
            return 2

    started = time.time()
    machine = machine_info()
    runs_dir = args.runs_dir.expanduser().resolve()
    runs_dir.mkdir(parents=True, exist_ok=True)
    _say(f"medlens MedMNIST benchmark: {', '.join(DATASETS[k]['title'] for k in args.datasets)}"
         f"{' (quick)' if args.quick else ''}; data {root}; runs {runs_dir}")
    _say(f"machine: {machine['cpu_count']} CPUs, Keras {machine['keras']}, TensorFlow {machine['tensorflow']}, "
         f"load {machine.get('load_average_at_start')}")

    small = [k for k in args.datasets if "transfer" in DATASETS[k]]
    want_transfer = bool(small) and not args.no_transfer
    need_source = PRETRAIN_SOURCE in args.datasets or want_transfer

    report: dict[str, Any] = {
        "benchmark": "MedMNIST v2, 28 px, official splits",
        "command": " ".join(["python benchmarks/medmnist.py", *(argv if argv is not None else sys.argv[1:])]),
        "quick": args.quick,
        "seeds": args.seeds,
        "stem": args.stem,
        "backbone": BACKBONE,
        "image_size": IMAGE_SIZE,
        "data_root": str(root),
        "runs_dir": str(runs_dir),
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "paper": "Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023): test AUC / ACC",
        "datasets": {},
    }

    def overrides_for(key: str, variant: str, seed: int) -> list[str]:
        base = COMMON + [f"seed={seed}"]  # the presets point data.npz at ${MEDLENS_DATA}/medmnist/...
        extra = SCRATCH + DATASETS[key]["scratch"] if variant == "scratch" else DATASETS[key]["transfer"]
        quick = (QUICK if variant == "scratch" else QUICK_TRANSFER) if args.quick else []
        return base + extra + quick

    # (dataset, variant) → the per-seed records and raw outputs, in seed order.
    done: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    pretraining: list[dict[str, Any]] = []

    try:
        for seed in args.seeds:
            _say(f"== seed {seed}")
            weights_file: Path | None = None
            if need_source:
                _say(f"[1] {DATASETS[PRETRAIN_SOURCE]['title']} from scratch"
                     + (" (also the pretraining run for transfer)" if want_transfer else ""))
                record, model, outputs = _run(PRETRAIN_SOURCE, "scratch",
                                              overrides_for(PRETRAIN_SOURCE, "scratch", seed),
                                              runs_dir, args.verbose, seed)
                if PRETRAIN_SOURCE in args.datasets:
                    done.setdefault((PRETRAIN_SOURCE, "scratch"), []).append((record, outputs))
                if want_transfer:
                    weights_file = runs_dir / f"pretrained-{PRETRAIN_SOURCE}-{BACKBONE}-{IMAGE_SIZE}px-seed{seed}.weights.h5"
                    model.get_layer("backbone").save_weights(str(weights_file))
                    pretraining.append({"seed": seed, "run_dir": record["run_dir"], "weights_file": str(weights_file),
                                        "epochs": record["epochs"], "seconds": record["seconds"]})
                    _say(f"  saved backbone weights to {weights_file}")
            step = 2
            for key in small:
                _say(f"[{step}] {DATASETS[key]['title']}")
                step += 1
                record, _, outputs = _run(key, "scratch", overrides_for(key, "scratch", seed), runs_dir,
                                          args.verbose, seed)
                done.setdefault((key, "scratch"), []).append((record, outputs))
                if want_transfer and weights_file is not None:
                    overrides = overrides_for(key, "transfer", seed) + [f"model.weights={weights_file}"]
                    record, _, outputs = _run(key, "transfer", overrides, runs_dir, args.verbose, seed)
                    done.setdefault((key, "transfer"), []).append((record, outputs))
    except MedlensError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    for key in args.datasets:
        for variant in ("scratch", "transfer"):
            if (key, variant) not in done:
                continue
            records = [record for record, _ in done[key, variant]]
            entry = report["datasets"].setdefault(
                key, {"title": DATASETS[key]["title"], "aim": {"auc": DATASETS[key]["aim"][0],
                                                               "acc": DATASETS[key]["aim"][1]},
                      "paper": [{"method": n, "auc": a, "acc": c} for n, a, c in DATASETS[key]["paper"]],
                      "runs": {}})
            rows = {variant: _aggregate(records)}
            if len(records) > 1:
                rows[f"{variant}-ensemble"] = _ensemble(records, [outputs for _, outputs in done[key, variant]])
            if args.ensemble_size > 1:
                rows[f"{variant}-ensembles{args.ensemble_size}"] = _ensemble_groups(
                    records, [outputs for _, outputs in done[key, variant]], args.ensemble_size)
            for name, row in rows.items():
                row["aim_status"] = _aim_status(row, DATASETS[key]["aim"])
                entry["runs"][name] = row
    if pretraining:
        report["pretraining"] = {
            "source": f"{DATASETS[PRETRAIN_SOURCE]['title']} train split (val split for early stopping), per seed",
            "runs": pretraining,
            "epochs": float(np.mean([p["epochs"] for p in pretraining])),
            "seconds": float(np.mean([p["seconds"] for p in pretraining])),
        }

    report["total_seconds"] = round(time.time() - started, 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    out = args.out.expanduser()
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.stem}_quick" if args.quick else args.stem
    markdown = write_results(out, stem, report, _markdown(report))

    _say("")
    _say(markdown)
    _say(f"wrote {out / stem}.json and {out / stem}.md in {report['total_seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
