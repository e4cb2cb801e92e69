#!/usr/bin/env python
"""A classifier's inputs at another framing or scale: ``medlens predict --match-scale`` on the demo CNN.

The demo CNN (small CNN, 64-px phantoms with a round field of view on black, as fundus photographs)
is trained once; fresh phantoms are then predicted three ways, each as they are and with
``--match-scale``:

* ``native``: as the training images were framed;
* ``framed 1.7x``: each phantom placed at a random spot of a black canvas 1.7× its side (a camera
  with a wider frame around the same field of view);
* ``enlarged 1.7x``: each phantom resized 1.7× (a camera with finer pixels).

A classifier resizes every input to its input size, so a wider frame shrinks the lesion and an
enlarged image does not; ``--match-scale`` crops (or pads) each input to the part that shows what a
training image showed, found from the field of view. Reported: test AUC and accuracy (at the run's
threshold) per variant, and the scale factors found. Results: ``<out>/classifier_scale.json``, ``.md``.

Usage::

    python benchmarks/classifier_scale.py            # ~3 min on 2 cores
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from common import machine_info, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-classifier-scale")
FACTOR = 1.7


def _variants(fresh: Path, work: Path, seed: int) -> dict[str, Path]:
    """The fresh phantoms as they are, framed on a 1.7x canvas, and enlarged 1.7x (same file names)."""
    rng = np.random.default_rng(seed)
    rows = list(csv.DictReader((fresh / "manifest.csv").open()))
    folders = {"native": work / "native", f"framed {FACTOR}x": work / "framed", f"enlarged {FACTOR}x": work / "enlarged"}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        image = cv2.imread(str(fresh / row["path"]), cv2.IMREAD_UNCHANGED)
        name = Path(row["path"]).name
        side = round(image.shape[0] * FACTOR)
        canvas = np.zeros((side, side, *image.shape[2:]), image.dtype)
        top, left = (int(v) for v in rng.integers(0, side - image.shape[0] + 1, 2))
        canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
        cv2.imwrite(str(folders["native"] / name), image)
        cv2.imwrite(str(folders[f"framed {FACTOR}x"] / name), canvas)
        cv2.imwrite(str(folders[f"enlarged {FACTOR}x"] / name), cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC))
    return folders


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200, help="fresh phantoms (half with a lesion)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    args = parser.parse_args(argv)
    from sklearn.metrics import roc_auc_score

    from medlens.app.demo import demo_config
    from medlens.pipelines.phantoms import write_phantoms
    from medlens.pipelines.predict import predict_paths
    from medlens.pipelines.train import train

    started = time.time()
    runs = args.runs_dir
    run = runs / "run"
    recorded = json.loads((run / "run.json").read_text()).get("input_scale") if (run / "run.json").is_file() else None
    if not (recorded or {}).get("image_size_px"):  # none yet, or trained before classifiers recorded their scale
        write_phantoms(runs / "phantoms", count=320, size=64, seed=1)
        train(demo_config(runs / "phantoms"), run, overwrite=True)
    fresh = runs / "fresh"
    if not (fresh / "manifest.csv").is_file():
        write_phantoms(fresh, count=args.images, size=64, seed=31)
    truth = {Path(r["path"]).name: r["class_name"] == "lesion" for r in csv.DictReader((fresh / "manifest.csv").open())}
    folders = _variants(fresh, runs / "variants", seed=7)
    results: dict[str, Any] = {}
    for variant, folder in folders.items():
        for match in (False, True):
            out = runs / "predictions" / f"{folder.name}-{'matched' if match else 'plain'}"
            rows = predict_paths(run, [folder], out, overwrite=True, match_scale=match).rows
            names = [Path(r["path"]).name for r in rows]
            y = np.array([truth[n] for n in names], int)
            p = np.array([float(r["p_lesion"]) for r in rows])
            called = np.array([r["label"] == "lesion" for r in rows], int)
            entry = {"n": len(rows), "auc": round(float(roc_auc_score(y, p)), 4),
                     "accuracy": round(float((called == y).mean()), 4)}
            if match:
                factors = np.array([float(r["scale"]) for r in rows])
                entry.update(scale_median=round(float(np.median(factors)), 4),
                             scale_methods=sorted({r["scale_method"] for r in rows}))
            results[f"{variant}, {'--match-scale' if match else 'as is'}"] = entry
            print(f"{variant:16s} {'--match-scale' if match else 'as is':14s} AUC {entry['auc']:.4f} "
                  f"ACC {entry['accuracy']:.4f}" + (f" scale {entry['scale_median']}" if match else ""), flush=True)
    state = json.loads((run / "run.json").read_text())
    report = {"machine": machine_info(), "images": args.images, "factor": FACTOR, "input_scale": state["input_scale"],
              "results": results, "seconds": round(time.time() - started, 1),
              "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    m = report["machine"]
    lines = ["# A classifier's inputs at another framing or scale (`predict --match-scale`)", "",
             f"`python benchmarks/classifier_scale.py` on {report['finished']}: {m['cpu_count']} CPU cores "
             f"({m.get('cpu_model', m['processor'])}), Keras {m['keras']} on {m['keras_backend']}; {report['seconds']} s. "
             f"The demo CNN (64-px phantoms; training field of view {state['input_scale']['fov_diameter_px']} px in "
             f"{state['input_scale']['image_size_px']} px images), {args.images} fresh phantoms (half with a lesion).", "",
             "| input | prediction | test AUC | accuracy | scale factor found (median) |", "|---|---|---|---|---|"]
    for name, entry in results.items():
        variant, how = name.split(", ")
        lines.append(f"| {variant} | {how} | {entry['auc']:.4f} | {entry['accuracy']:.4f} | "
                     f"{entry.get('scale_median', '')} |")
    text = "\n".join(lines) + "\n"
    print(write_results(args.out, "classifier_scale", report, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
