#!/usr/bin/env python
"""Explanation benchmark: speed and faithfulness of medlens's Grad-CAM, Grad-CAM++ and LIME.

Three parts, each on one model and one set of images for every method compared:

1. **Grad-CAM speed** on a transfer classifier (VGG16 nested as a layer, the model
   medlens builds; random weights, as ImageNet weights cannot be downloaded here and
   speed does not depend on them), one batch at ``--size`` px: the time of one forward
   pass (``predict_on_batch``) against medlens ``GradCAM``/``GradCAMPlusPlus``, the
   keras-io recipe run eagerly image by image (as published: the gradient model is
   rebuilt per call; and with it built once), and tf-keras-vis ``Gradcam``. The peers
   fail on the nested model (the errors are recorded), so they are timed on a flat copy
   with the same layers and weights.
2. **LIME speed**: medlens ``LimeExplainer`` for N samples against the floor, N forward
   passes at the best batch size, on the same VGG16 at ``--lime-size`` px.
3. **Faithfulness** on a model that has learned something: the demo's small CNN trained
   on synthetic phantoms with known lesion masks (64 px). Deletion and insertion AUC
   (RISE; blurred baseline) and the pointing game for Grad-CAM, Grad-CAM++, LIME and a
   random map; and the ``lime`` package at its defaults (quickshift, ``batch_size=10``,
   1000 samples) against medlens LIME (SLIC) with increasing samples: the fewest
   samples that reach ``lime``'s deletion AUC, and the speed-up at that point.

Usage (from the repository root)::

    python benchmarks/explain.py                 # ~10 min on 2 CPU cores
    python benchmarks/explain.py --quick         # smoke test, writes explain_quick.*
    KERAS_BACKEND=jax python benchmarks/explain.py --size 224 --tag gpu-jax   # on a GPU machine

Writes ``<out>/explain[_TAG].json`` and ``.md``. The peers (``lime``, ``tf-keras-vis``)
are not medlens dependencies: install them into the benchmark's environment
(``pip install lime tf-keras-vis``); a peer that is missing or fails is reported as such.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from common import machine_info, median_seconds, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_RUNS = Path("/tmp/medlens-bench-explain")
AIM_GRADCAM = 1.5  # Grad-CAM time / one forward pass
AIM_LIME = 1.3  # LIME time / N forward passes at the best batch size
AIM_LIME_SPEEDUP = 4.0  # lime package defaults / medlens LIME, at equal deletion AUC
AIM_LIME_POINTING = 0.9  # medlens LIME's peak inside the lesion, at its defaults
LIME_SETTINGS = (("mean", 50), ("blur", 50), ("blur", 100))  # (hide_color, n_segments); the last is the default

log = logging.getLogger("bench")


def _say(text: str) -> None:
    print(text, flush=True)


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]


# --------------------------------------------------------------------------- models


def transfer_models(size: int, seed: int = 0):
    """A medlens VGG16 classifier (backbone nested) and a flat copy with the same weights."""
    import keras

    from medlens.models.classifier import build_classifier

    keras.utils.set_random_seed(seed)
    nested = build_classifier("vgg16", 2, (size, size, 3), weights="none", dense_units=0, dropout=0.0)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(size, size, 3))
    base.set_weights(nested.get_layer("backbone").get_weights())
    pooled = keras.layers.GlobalAveragePooling2D()(base.output)
    head = nested.layers[-1]
    flat_out = keras.layers.Dense(head.units, activation=head.activation, name="probabilities")(pooled)
    flat = keras.Model(base.input, flat_out)
    flat.get_layer("probabilities").set_weights(head.get_weights())
    return nested, flat


def keras_io_heatmap(image: np.ndarray, model: Any, layer: str, grad_model: Any = None) -> np.ndarray:
    """keras-io ``make_gradcam_heatmap`` (examples/vision/grad_cam.py), one image, eager TensorFlow."""
    import keras
    import tensorflow as tf

    if grad_model is None:
        grad_model = keras.models.Model(model.inputs, [model.get_layer(layer).output, model.output])
    with tf.GradientTape() as tape:
        conv_output, preds = grad_model(image[None])
        pred_index = tf.argmax(preds[0])
        class_channel = preds[:, pred_index]
    grads = tape.gradient(class_channel, conv_output)
    pooled = tf.reduce_mean(grads, axis=(0, 1, 2))
    heatmap = tf.squeeze(conv_output[0] @ pooled[..., tf.newaxis])
    heatmap = tf.maximum(heatmap, 0) / tf.math.reduce_max(heatmap)
    return heatmap.numpy()


# --------------------------------------------------------------------------- part 1


def gradcam_speed(size: int, batch: int, repeats: int) -> dict[str, Any]:
    import keras

    from medlens.pipelines.explain.gradcam import GradCAM
    from medlens.pipelines.explain.gradcam_plus_plus import GradCAMPlusPlus

    nested, flat = transfer_models(size)
    images = np.random.default_rng(0).uniform(-110, 140, (batch, size, size, 3)).astype(np.float32)
    result: dict[str, Any] = {"model": f"vgg16 nested, {size}x{size}, batch {batch}", "rows": {}}
    rows = result["rows"]

    forward = median_seconds(lambda: nested.predict_on_batch(images), repeats)
    rows["forward pass (predict_on_batch)"] = {"seconds": forward}
    for name, method in (("medlens Grad-CAM", GradCAM), ("medlens Grad-CAM++", GradCAMPlusPlus)):
        explainer = method(nested, batch_size=batch)
        rows[name] = {"seconds": median_seconds(lambda e=explainer: e(images), repeats)}

    backend = keras.backend.backend()
    if backend == "tensorflow":
        layer = "block5_conv3"
        try:
            keras_io_heatmap(images[0], nested, layer)
            rows["keras-io recipe on the nested model"] = {"error": "no error"}
        except Exception as exc:  # the point: it fails on nested transfer models
            rows["keras-io recipe on the nested model"] = {"error": _error_line(exc)}

        def keras_io_loop(prebuilt: Any = None) -> None:
            for image in images:
                keras_io_heatmap(image, flat, layer, prebuilt)

        rows["keras-io recipe, eager loop (grad model rebuilt per image, as published)"] = {
            "seconds": median_seconds(keras_io_loop, max(1, repeats - 1)), "model": "flat copy"}
        prebuilt = keras.models.Model(flat.inputs, [flat.get_layer(layer).output, flat.output])
        rows["keras-io recipe, eager loop (grad model built once)"] = {
            "seconds": median_seconds(lambda: keras_io_loop(prebuilt), max(1, repeats - 1)), "model": "flat copy"}
        try:
            from tf_keras_vis.gradcam import Gradcam
            from tf_keras_vis.utils.scores import CategoricalScore

            score = CategoricalScore([0] * batch)
            try:
                Gradcam(nested, clone=True)(score, images[:2], penultimate_layer=layer)
                rows["tf-keras-vis Gradcam on the nested model"] = {"error": "no error"}
            except Exception as exc:
                rows["tf-keras-vis Gradcam on the nested model"] = {"error": _error_line(exc)}
            peer = Gradcam(flat, clone=True)
            rows["tf-keras-vis Gradcam (batched)"] = {
                "seconds": median_seconds(lambda: peer(score, images, penultimate_layer=layer), repeats),
                "model": "flat copy"}
        except ImportError:
            rows["tf-keras-vis Gradcam (batched)"] = {"error": "tf-keras-vis is not installed"}
    else:
        rows["keras-io recipe / tf-keras-vis"] = {"error": f"TensorFlow-only peers; backend is {backend}"}

    for row in rows.values():
        if "seconds" in row:
            row["images_per_s"] = round(batch / row["seconds"], 2)
            row["x_forward"] = round(row["seconds"] / forward, 2)
            row["seconds"] = round(row["seconds"], 4)
    medlens = rows["medlens Grad-CAM"]
    result["aim"] = f"medlens Grad-CAM within {AIM_GRADCAM}x of one forward pass"
    result["meets_aim"] = medlens["x_forward"] <= AIM_GRADCAM
    for name, row in rows.items():
        if "seconds" in row and not name.startswith(("medlens", "forward")):
            row["medlens_speedup"] = round(row["seconds"] / medlens["seconds"], 2)
    return result


# --------------------------------------------------------------------------- part 2


def lime_speed(size: int, samples: list[int], batch_sizes: list[int]) -> dict[str, Any]:
    from medlens.models.backbones import preprocess_function
    from medlens.pipelines.evaluation.probabilities import to_probabilities
    from medlens.pipelines.explain.lime import LimeExplainer

    nested, _ = transfer_models(size)
    preprocess = preprocess_function("vgg16")

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return to_probabilities(np.asarray(nested.predict_on_batch(preprocess(batch))), 2)

    rng = np.random.default_rng(1)
    image = (rng.uniform(0, 255, (size, size, 3))).astype(np.float32)
    floor: dict[int, float] = {}
    for batch in batch_sizes:
        images = np.repeat(image[None], batch, axis=0)
        floor[batch] = median_seconds(lambda im=images: predict_fn(im), 3) / batch
    best_batch = min(floor, key=floor.get)
    rows = []
    for count in samples:
        explainer = LimeExplainer(predict_fn, num_samples=count, batch_size=best_batch, seed=0)
        seconds = median_seconds(lambda e=explainer: e.explain(image, class_index=1), 2)
        floor_seconds = count * floor[best_batch]
        rows.append({"samples": count, "seconds": round(seconds, 3), "floor_seconds": round(floor_seconds, 3),
                     "x_floor": round(seconds / floor_seconds, 3)})
    return {
        "model": f"vgg16 nested, {size}x{size}",
        "seconds_per_image_by_batch": {str(b): round(s, 5) for b, s in floor.items()},
        "best_batch": best_batch,
        "rows": rows,
        "aim": f"within {AIM_LIME}x of N forward passes at the best batch size",
        "meets_aim": all(r["x_floor"] <= AIM_LIME for r in rows),
    }


# --------------------------------------------------------------------------- part 3


def faithfulness(runs: Path, images: int, samples: list[int], steps: int) -> dict[str, Any]:
    from explain_methods import demo_positives

    from medlens.pipelines.explain.faithfulness import deletion_auc, insertion_auc
    from medlens.pipelines.explain.gradcam import GradCAM
    from medlens.pipelines.explain.gradcam_plus_plus import GradCAMPlusPlus
    from medlens.pipelines.explain.lime import LimeExplainer, region_centre
    from medlens.pipelines.explain.localisation import pointing_game, random_saliency

    setup = demo_positives(runs, images)
    predictor, predict_fn, target = setup["predictor"], setup["predict_fn"], setup["target"]
    resized, masks = setup["resized"], setup["masks"]

    def score(maps: list[np.ndarray], peaks: list[tuple[int, int] | None] | None = None) -> dict[str, float]:
        dele = [deletion_auc(predict_fn, im, np.clip(m, 0, None), target, steps=steps)
                for im, m in zip(resized, maps, strict=True)]
        ins = [insertion_auc(predict_fn, im, np.clip(m, 0, None), target, steps=steps)
               for im, m in zip(resized, maps, strict=True)]
        if peaks is None:  # dense maps: the argmax
            hits = [pointing_game(np.clip(m, 0, None), mask) for m, mask in zip(maps, masks, strict=True)]
        else:  # superpixel maps: the centre of the strongest region (LimeResult.peak)
            hits = [p is not None and bool(mask[p]) for p, mask in zip(peaks, masks, strict=True)]
        return {"deletion_auc": round(float(np.mean(dele)), 4), "insertion_auc": round(float(np.mean(ins)), 4),
                "pointing_game": round(float(np.mean(hits)), 4), "n": len(maps)}

    model_batch = setup["batch"]
    methods: dict[str, dict[str, Any]] = {}
    for name, method in (("Grad-CAM", GradCAM), ("Grad-CAM++", GradCAMPlusPlus)):
        started = time.perf_counter()
        maps = list(method(predictor.model)(model_batch, class_index=target).maps)
        seconds = time.perf_counter() - started
        methods[name] = {**score(maps), "seconds_per_image": round(seconds / len(maps), 4)}
    methods["random map"] = score([random_saliency(m.shape, seed=i) for i, m in enumerate(masks)])
    lime_rows = []
    # The old default (mean-colour hiding, ~50 superpixels) against blurred hiding and finer superpixels.
    for hide, segments in LIME_SETTINGS:
        for count in samples:
            explainer = LimeExplainer(predict_fn, num_samples=count, batch_size=256, seed=0, hide_color=hide,
                                      n_segments=segments)
            started = time.perf_counter()
            results = [explainer.explain(im, class_index=target) for im in resized]
            seconds = (time.perf_counter() - started) / len(results)
            lime_rows.append({"samples": count, "segmentation": "slic", "hide": hide, "n_segments": segments,
                              "seconds_per_image": round(seconds, 4),
                              **score([r.map for r in results], [r.peak() for r in results])})

    peer: dict[str, Any] = {}
    try:
        import inspect

        from lime import lime_image

        # Some 0.2.0.1 builds have no progress_bar argument.
        quiet = ({"progress_bar": False} if "progress_bar" in
                 inspect.signature(lime_image.LimeImageExplainer.explain_instance).parameters else {})
        peer_maps, peer_peaks = [], []
        started = time.perf_counter()
        for i, image in enumerate(resized):
            with contextlib.redirect_stderr(io.StringIO()):  # its progress bar, where it cannot be turned off
                explanation = lime_image.LimeImageExplainer(random_state=i).explain_instance(
                    image.astype(np.double), predict_fn, labels=(target,), top_labels=None, num_samples=1000,
                    batch_size=10, random_seed=i, **quiet)
            lookup = np.zeros(int(explanation.segments.max()) + 1, np.float32)
            for segment, weight in explanation.local_exp[target]:
                lookup[segment] = weight
            peer_maps.append(lookup[explanation.segments])
            peer_peaks.append(region_centre(explanation.segments, int(lookup.argmax())) if lookup.max() > 0 else None)
        peer_seconds = (time.perf_counter() - started) / len(peer_maps)
        peer = {"settings": "lime 0.2.0.1 defaults: quickshift, batch_size=10, 1000 samples",
                "seconds_per_image": round(peer_seconds, 4), **score(peer_maps, peer_peaks)}
        defaults = [r for r in lime_rows if (r["hide"], r["n_segments"]) == LIME_SETTINGS[-1]]
        reaching = [r for r in defaults if r["deletion_auc"] <= peer["deletion_auc"]]
        if reaching:
            best = min(reaching, key=lambda r: r["seconds_per_image"])
            peer["medlens_samples_to_match"] = best["samples"]
            peer["speedup_at_equal_deletion_auc"] = round(peer_seconds / best["seconds_per_image"], 2)
        else:
            peer["medlens_samples_to_match"] = None
            peer["speedup_at_equal_deletion_auc"] = None
        peer["meets_aim"] = bool(peer["speedup_at_equal_deletion_auc"]) and \
            peer["speedup_at_equal_deletion_auc"] >= AIM_LIME_SPEEDUP
    except ImportError:
        peer = {"error": "the lime package is not installed"}
    # The pointing aim, per sample count: the default reaches it without a worse deletion AUC than the old default.
    pointing = []
    for count in samples:
        old, new = (next(r for r in lime_rows if r["samples"] == count and (r["hide"], r["n_segments"]) == k)
                    for k in (LIME_SETTINGS[0], LIME_SETTINGS[-1]))
        pointing.append({"samples": count, "old_pointing": old["pointing_game"], "pointing": new["pointing_game"],
                         "old_deletion_auc": old["deletion_auc"], "deletion_auc": new["deletion_auc"],
                         "meets_aim": new["pointing_game"] >= AIM_LIME_POINTING
                         and new["deletion_auc"] <= old["deletion_auc"] + 0.005})
    return {"model": "demo small CNN (global max pooling), phantoms 64x64, correctly classified positives",
            "steps": steps, "methods": methods, "lime_samples": lime_rows, "lime_package": peer,
            "lime_pointing": pointing,
            "random_is_worst": methods["random map"]["deletion_auc"] > max(
                [m["deletion_auc"] for k, m in methods.items() if k != "random map"]
                + [r["deletion_auc"] for r in lime_rows])}


# --------------------------------------------------------------------------- report


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# medlens explanations benchmark ({report['tag']})", "",
             f"Generated by `python benchmarks/explain.py` on {report['finished']}: {m['cpu_count']} CPU cores "
             f"({m.get('cpu_model', m['processor'])}), GPUs {m.get('gpus') or 'none'}, Keras {m['keras']} "
             f"on {m['keras_backend']}. Total {report['total_seconds']:.0f} s.", ""]
    if report.get("merged_runs"):
        lines += ["Parts re-run since the full run (`--merge`, latest last): "
                  + "; ".join(", ".join(run) for run in report["merged_runs"]) + f" (last at {report['finished']}).", ""]
    part = report.get("gradcam_speed")
    if part:
        lines += [f"## Grad-CAM speed: {part['model']}", "",
                  "| method | s / batch | images/s | × forward pass | medlens Grad-CAM is faster by |",
                  "|---|---|---|---|---|"]
        for name, row in part["rows"].items():
            if "seconds" in row:
                lines.append(f"| {name} | {row['seconds']:.3f} | {row['images_per_s']} | {row['x_forward']} | "
                             f"{row.get('medlens_speedup', '')}{'×' if 'medlens_speedup' in row else ''} |")
            else:
                lines.append(f"| {name} | fails: `{row['error']}` | | | |")
        lines += ["", f"Aim: {part['aim']}: **{'met' if part['meets_aim'] else 'missed'}**.", ""]
    part = report.get("lime_speed")
    if part:
        lines += [f"## LIME speed: {part['model']}, best batch {part['best_batch']}", "",
                  "| samples | s / image | N forward passes (floor), s | × floor |", "|---|---|---|---|"]
        lines += [f"| {r['samples']} | {r['seconds']} | {r['floor_seconds']} | {r['x_floor']} |" for r in part["rows"]]
        lines += ["", f"Aim: {part['aim']}: **{'met' if part['meets_aim'] else 'missed'}**.", ""]
    part = report.get("faithfulness")
    if part:
        lines += [f"## Faithfulness: {part['model']}", "",
                  f"Deletion AUC (lower is better) and insertion AUC (higher is better), {part['steps']} steps, "
                  "blurred baseline; pointing game = map peak inside the lesion mask.", "",
                  "| method | n | deletion AUC | insertion AUC | pointing game | s / image |", "|---|---|---|---|---|---|"]
        for name, row in part["methods"].items():
            lines.append(f"| {name} | {row['n']} | {row['deletion_auc']} | {row['insertion_auc']} | "
                         f"{row['pointing_game']} | {row.get('seconds_per_image', '')} |")
        for row in part["lime_samples"]:
            lines.append(f"| LIME (medlens, slic ~{row['n_segments']}, hide {row['hide']}, {row['samples']} samples) | "
                         f"{row['n']} | {row['deletion_auc']} | {row['insertion_auc']} | {row['pointing_game']} | "
                         f"{row['seconds_per_image']} |")
        peer = part["lime_package"]
        if "error" in peer:
            lines += ["", f"lime package: {peer['error']}"]
        else:
            lines.append(f"| lime package ({peer['settings']}) | {peer['n']} | {peer['deletion_auc']} | "
                         f"{peer['insertion_auc']} | {peer['pointing_game']} | {peer['seconds_per_image']} |")
            lines += ["", f"medlens LIME reaches the lime package's deletion AUC with "
                      f"{peer['medlens_samples_to_match']} samples: **{peer['speedup_at_equal_deletion_auc']}× "
                      f"faster** (aim ≥ {AIM_LIME_SPEEDUP}×: {'met' if peer['meets_aim'] else 'missed'})."]
        lines += ["", f"LIME's default (hide {LIME_SETTINGS[-1][0]}, ~{LIME_SETTINGS[-1][1]} superpixels) against the "
                  f"old one (hide {LIME_SETTINGS[0][0]}, ~{LIME_SETTINGS[0][1]}): pointing ≥ {AIM_LIME_POINTING} without "
                  "a worse deletion AUC (+0.005 tolerance):", "",
                  "| samples | pointing, old → default | deletion AUC, old → default | aim |", "|---|---|---|---|"]
        lines += [f"| {r['samples']} | {r['old_pointing']} → {r['pointing']} | {r['old_deletion_auc']} → "
                  f"{r['deletion_auc']} | {'met' if r['meets_aim'] else 'missed'} |" for r in part["lime_pointing"]]
        lines += ["", f"Random map scores worst on deletion AUC: **{part['random_is_worst']}**.", ""]
    if report.get("methods"):
        from explain_methods import methods_markdown

        lines += methods_markdown(report["methods"])
    if report.get("methods_vgg"):
        from explain_methods import methods_markdown

        lines += (methods_markdown(report["methods_vgg"]) if "error" not in report["methods_vgg"]
                  else [f"## Every method on VGG16: {report['methods_vgg']['error']}", ""])
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="Grad-CAM speed: image size")
    parser.add_argument("--batch", type=int, default=32, help="Grad-CAM speed: batch size")
    parser.add_argument("--lime-size", type=int, default=64, help="LIME speed: image size")
    parser.add_argument("--images", type=int, default=40, help="faithfulness: positives explained")
    parser.add_argument("--parts", default="gradcam,lime,faithfulness,methods,vgg")
    parser.add_argument("--quick", action="store_true", help="small sizes, few images (smoke test)")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. gpu-jax")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--runs-dir", type=Path, default=DEFAULT_RUNS)
    parser.add_argument("--vgg-images", type=int, default=8, help="VGG16 table: positives explained")
    parser.add_argument("--vgg-samples", type=int, default=150, help="VGG16 table: LIME / Kernel SHAP samples")
    parser.add_argument("--merge", action="store_true",
                        help="start from the existing result file and replace only the parts run now")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    parts = {p.strip() for p in args.parts.split(",")}
    if args.quick:
        args.size, args.batch, args.lime_size, args.images = 64, 8, 32, 8
    samples = [100, 250, 500, 1000] if not args.quick else [50, 100]
    started = time.time()
    tag = args.tag or ("quick" if args.quick else "")
    stem = "explain" + (f"_{tag}" if tag else "")
    report: dict[str, Any] = {"tag": tag or "cpu", "machine": machine_info(), "args": {
        k: str(v) for k, v in vars(args).items()}}
    if args.merge and (args.out / f"{stem}.json").is_file():  # keep the parts not run this time
        previous = json.loads((args.out / f"{stem}.json").read_text())
        report = {**previous, "machine": report["machine"], "args": report["args"]}
        report.setdefault("merged_runs", []).append(sorted(parts))
    if "gradcam" in parts:
        _say("1/5 Grad-CAM speed …")
        report["gradcam_speed"] = gradcam_speed(args.size, args.batch, repeats=3 if not args.quick else 1)
    if "lime" in parts:
        _say("2/5 LIME speed …")
        report["lime_speed"] = lime_speed(args.lime_size, [250, 1000] if not args.quick else [50],
                                          [16, 32, 64, 128] if not args.quick else [8, 16])
    if "faithfulness" in parts:
        _say("3/5 faithfulness …")
        report["faithfulness"] = faithfulness(args.runs_dir, args.images, samples, steps=20)
    if "methods" in parts:
        from explain_methods import methods_part

        _say("4/5 every method: faithfulness, ROAD, randomisation, stability, peers …")
        report["methods"] = methods_part(args.runs_dir, args.images, 1000 if not args.quick else 100, 20, args.quick)
    if "shap" in parts and "methods" not in parts:
        from explain_methods import SHAP_SAMPLES, demo_positives, shap_peer

        _say("shap package peer only …")
        peer = shap_peer(demo_positives(args.runs_dir, args.images), SHAP_SAMPLES if not args.quick else [50, 100], 20)
        peer["rerun_alone"] = (f"Re-run alone (--parts shap) on {time.strftime('%Y-%m-%d')}, on the demo model as "
                               f"{args.runs_dir} holds it then (trained anew on a new machine): medlens and shap "
                               "share one model and images here, but its deletion AUCs do not compare with the "
                               "table above.")
        report.setdefault("methods", {})["shap_package"] = peer
    if "tf-keras-vis" in parts and "methods" not in parts:
        from explain_methods import tf_keras_vis_peer

        _say("tf-keras-vis peer only …")
        report.setdefault("methods", {})["tf_keras_vis"] = tf_keras_vis_peer()
    if "quantus" in parts and "methods" not in parts:
        from explain_methods import demo_positives, quantus_peer

        _say("Quantus peer only …")
        report.setdefault("methods", {})["quantus"] = quantus_peer(demo_positives(args.runs_dir, args.images),
                                                                   4 if args.quick else 8)
    if "vgg" in parts:
        from explain_methods import vgg_part

        _say("5/5 every method on a VGG16 transfer model at 128 px …")
        report["methods_vgg"] = vgg_part(args.runs_dir, args.vgg_images if not args.quick else 4,
                                         args.vgg_samples if not args.quick else 50,
                                         20, args.quick, size=128 if not args.quick else 64)
    if not report.get("merged_runs"):
        report["total_seconds"] = round(time.time() - started, 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    text = markdown(report)
    _say(write_results(args.out, stem, report, text))
    _say(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
