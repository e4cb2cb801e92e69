"""Sanity checks for saliency maps: cascading model-parameter randomisation (Adebayo et al. 2018).

A map that explains the model must change when the model's weights are destroyed. For a run
and a set of images, :func:`randomisation_check` computes each method's maps on the trained
model, then on copies whose weights are re-drawn cumulatively from the top down — the head
first, then the backbone's blocks from the top block to the first (Quantus calls this MPRT) —
and compares each image's map with the original by Spearman rank correlation, SSIM and the
Pearson correlation of their histograms of oriented gradients (HOG), Adebayo's three measures.
Every method can be checked, LIME and Kernel SHAP included (their signed superpixel maps are
compared as they are; each randomised copy is explained with the same superpixels' settings and
seed).
A method **fails** when its maps stay similar after the whole network is randomised: mean
Spearman correlation at or above ``fail_at`` (0.5 by default). The result is written to
``RUN/explanation_checks.json`` and summarised in the model card; the report labels a failing
method's maps.

Weights are re-drawn per variable from a normal distribution with the variable's own standard
deviation (zero-mean), seeded; BatchNorm statistics are left as they are (re-drawing a variance
can make it negative). Only Conv and Dense kernels and biases change.

Example (needs a finished classifier run)::

    checks = randomisation_check("runs/demo", ["a.png", "b.png"], ("gradcam", "gradient"))
    checks["methods"]["gradcam"]["verdict"]
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import yaml
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from medlens.models.backbones import backbone_blocks
from medlens.models.classifier import BACKBONE_LAYER
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.runs import CHECKS_FILE, write_checks_to_card
from medlens.pipelines.explain import ExplainOptions, build_map_method, build_superpixel_method
from medlens.pipelines.explain.methods import METHODS, SUPERPIXEL, TITLES
from medlens.pipelines.imaging import read_image
from medlens.pipelines.rundir import RunDir, atomic_write_json

__all__ = ["CHECKS_FILE", "data_randomisation_check", "randomisation_check", "write_checks_to_card"]

log = logging.getLogger(__name__)

_TEST_KEYS = ("n", "auc", "macro_auc", "accuracy", "balanced_accuracy", "qwk")  # the shuffled model's test, shown
_WEIGHTED = (keras.layers.Conv2D, keras.layers.Dense, keras.layers.DepthwiseConv2D)


def _stages(model: keras.Model, backbone_name: str) -> list[tuple[str, list[keras.Layer]]]:
    """``(name, weighted layers)`` from the top down: the head, then each backbone block."""
    backbone = model.get_layer(BACKBONE_LAYER)
    head = [layer for layer in model.layers if layer is not backbone and isinstance(layer, _WEIGHTED)]
    stages = [("head", head[::-1])]
    for index, names in reversed(list(enumerate(backbone_blocks(backbone, backbone_name), start=1))):
        layers = [backbone.get_layer(n) for n in names if isinstance(backbone.get_layer(n), _WEIGHTED)]
        if layers:
            stages.append((f"block {index}", layers))
    return stages


def _randomise(layers: list[keras.Layer], rng: np.random.Generator) -> None:
    for layer in layers:
        layer.set_weights([rng.normal(0.0, float(np.std(w)) or 0.05, w.shape).astype(w.dtype)
                           for w in layer.get_weights()])


def _hog(saliency: np.ndarray) -> np.ndarray:
    cell = max(2, min(saliency.shape) // 8)
    return hog(saliency, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(2, 2), feature_vector=True)


def _similarity(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Spearman rank correlation, SSIM and HOG correlation of two maps (correlations 0 for a constant map)."""
    data_range = 2.0 if min(a.min(), b.min()) < 0 else 1.0  # signed superpixel maps span [-1, 1]
    ssim = float(structural_similarity(a, b, data_range=data_range))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return 0.0, ssim, 0.0
    rho = spearmanr(a.ravel(), b.ravel()).statistic
    ha, hb = _hog(a), _hog(b)
    hog_r = 0.0 if np.ptp(ha) == 0 or np.ptp(hb) == 0 else float(np.corrcoef(ha, hb)[0, 1])
    return float(0.0 if np.isnan(rho) else rho), ssim, hog_r


class _Images:
    """The images of a check, resized and preprocessed for a run, with each one's target (the trained model's)."""

    def __init__(self, predictor: Any, images: Sequence[str | Path], options: ExplainOptions):
        pixels = []
        for path in images:
            try:
                pixels.append(read_image(path).pixels)
            except Exception as exc:  # a bad image is skipped, the rest are checked
                log.warning("%s: skipped (%s)", path, getattr(exc, "reason", exc))
        if not pixels:
            raise ConfigError("no readable image to check the explanations on")
        resized = predictor.resize(pixels)
        batch = predictor.preprocess(resized)
        probabilities = predictor.scores(predictor.model.predict_on_batch(batch))
        targets = [t[0] if t else None
                   for t in predictor.explain_targets(probabilities, predictor.chosen_targets(options))]
        keep = [i for i, t in enumerate(targets) if t is not None]
        if not keep:
            raise ConfigError("no image has a target to explain (no finding called present)")
        self.batch, self.resized = batch[keep], resized[keep]
        self.targets = np.array([targets[i] for i in keep], np.int32)
        self.predictor, self.options = predictor, options

    def maps(self, model: keras.Model, methods: Sequence[str]) -> dict[str, np.ndarray]:
        """Each method's maps of these images under ``model`` (the trained one or a randomised one)."""
        predictor, maps = self.predictor, {}
        for m in methods:
            if m in SUPERPIXEL:
                def predict_rgb(rgb: np.ndarray, model: keras.Model = model) -> np.ndarray:
                    return predictor.scores(model.predict_on_batch(predictor.preprocess(rgb)))

                explainer = build_superpixel_method(m, predict_rgb, self.options)
                maps[m] = np.stack([explainer.explain(image, int(t)).map
                                    for image, t in zip(self.resized, self.targets, strict=True)])
            else:
                maps[m] = build_map_method(m, model, self.options, predictor.preprocess)(
                    self.batch, class_index=self.targets).maps
        return maps


def _compare(original: np.ndarray, other: np.ndarray) -> dict[str, float]:
    pairs = [_similarity(a, b) for a, b in zip(original, other, strict=True)]
    return {"spearman": round(float(np.mean([p[0] for p in pairs])), 4),
            "ssim": round(float(np.mean([p[1] for p in pairs])), 4),
            "hog": round(float(np.mean([p[2] for p in pairs])), 4)}


def _save(run_dir: str | Path, checks: dict[str, Any]) -> None:
    """Write the checks file (keeping the other kind of check already there) and the card's section."""
    run = RunDir(run_dir)
    path = run.root / CHECKS_FILE
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = {}
        if "data_randomisation" in previous and "data_randomisation" not in checks:
            checks = {**checks, "data_randomisation": previous["data_randomisation"]}
        elif "methods" in previous and "methods" not in checks:
            checks = {**previous, **checks}
    atomic_write_json(path, checks)
    write_checks_to_card(run.root, checks)


def randomisation_check(run_dir: str | Path, images: Sequence[str | Path], methods: Sequence[str] = ("gradcam",),
                        *, seed: int = 0, fail_at: float = 0.5, options: ExplainOptions | None = None,
                        write: bool = True) -> dict[str, Any]:
    """Cascading randomisation of a classifier run's weights; per method, similarity per stage and a verdict.

    Args:
        run_dir: A finished classifier run (single-label, multi-label or ordinal).
        images: Image files to explain (each for its reported target).
        methods: Explanation methods (any of :data:`~medlens.pipelines.explain.methods.METHODS`).
        seed: Seed of the re-drawn weights.
        fail_at: Mean Spearman correlation after full randomisation at or above which a method fails.
        options: Method settings (IG steps, SmoothGrad samples, ...).
        write: Write ``RUN/explanation_checks.json`` and the model card's section.

    Raises:
        ConfigError: No readable image, or none with a target.
    """
    from medlens.pipelines.predictors import load_predictor

    started = time.time()
    options = options or ExplainOptions(methods=tuple(methods))
    predictor = load_predictor(run_dir)
    shown = _Images(predictor, images, options)
    original = shown.maps(predictor.model, methods)
    copy = keras.models.clone_model(predictor.model)
    copy.set_weights(predictor.model.get_weights())
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {m: {"title": TITLES[METHODS[m]], "stages": []} for m in methods}
    for name, layers in _stages(copy, predictor.state["backbone"]):
        _randomise(layers, rng)
        randomised = shown.maps(copy, methods)
        for method in methods:
            report[method]["stages"].append({"randomised_down_to": name,
                                             **_compare(original[method], randomised[method])})
    for method, item in report.items():
        final = item["stages"][-1]["spearman"]
        item.update(final_spearman=final, verdict="fail" if final >= fail_at else "pass")
        log.info("%s: Spearman %.3f after full randomisation: %s", method, final, item["verdict"])
    checks = {"check": "cascading model-parameter randomisation (Adebayo et al. 2018)", "images": len(shown.targets),
              "seed": seed, "fail_at": fail_at, "methods": report, "seconds": round(time.time() - started, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if write:
        _save(run_dir, checks)
    return checks


def data_randomisation_check(run_dir: str | Path, images: Sequence[str | Path], methods: Sequence[str] = ("gradcam",),
                             *, fail_at: float = 0.5, epochs: int | None = 5, options: ExplainOptions | None = None,
                             retrain: bool = False, write: bool = True) -> dict[str, Any]:
    """Adebayo's data randomisation: the same recipe trained on shuffled labels; do the maps change?

    A model trained on permuted labels can only memorise; maps that still look like the trained
    model's come from the image (edges, brightness), not from what was learned. The shuffled-label
    model is trained once from the run's own configuration (``data.shuffle_labels``; each phase at
    most ``epochs`` epochs, "trained briefly") into ``RUN/sanity/shuffled-labels`` and reused after.

    Args:
        run_dir: A finished classifier run.
        images: Image files to explain, each for the trained model's target.
        methods: Explanation methods.
        fail_at: Mean Spearman correlation at or above which a method fails.
        epochs: Cap on each phase's epochs (None: the run's own).
        options: Method settings.
        retrain: Train the shuffled-label model again even if one is there.
        write: Add the result to ``RUN/explanation_checks.json`` and the model card.

    Raises:
        ConfigError: Not a classifier run (a segmentation run), no readable image, or none with a target.
    """
    from medlens.pipelines.config import load_config
    from medlens.pipelines.predictors import load_predictor
    from medlens.pipelines.train import train

    started = time.time()
    run = RunDir(run_dir)
    options = options or ExplainOptions(methods=tuple(methods))
    predictor = load_predictor(run_dir)
    shown = _Images(predictor, images, options)
    config = yaml.safe_load(run.config_path.read_text())  # a classifier run's: load_predictor refused the others
    config.setdefault("data", {})["shuffle_labels"] = True
    config["name"] = f"{config.get('name', run.root.name)}-shuffled-labels"
    if epochs is not None:
        for phase in ("phase1", "phase2"):
            section = config.setdefault("train", {}).setdefault(phase, {})
            section["epochs"] = min(int(section.get("epochs", epochs)), int(epochs))
    shuffled_dir = run.root / "sanity" / "shuffled-labels"
    if retrain or not (shuffled_dir / "model.keras").is_file():
        train(load_config(config), shuffled_dir, overwrite=True)
    shuffled = load_predictor(shuffled_dir)
    original, other = shown.maps(predictor.model, methods), shown.maps(shuffled.model, methods)
    report: dict[str, Any] = {}
    for method in methods:
        similarity = _compare(original[method], other[method])
        report[method] = {"title": TITLES[METHODS[method]], **similarity,
                          "verdict": "fail" if similarity["spearman"] >= fail_at else "pass"}
        log.info("%s: Spearman %.3f against the shuffled-label model: %s", method, similarity["spearman"],
                 report[method]["verdict"])
    metrics_path = shuffled_dir / "metrics.json"
    test = json.loads(metrics_path.read_text()).get("test", {}) if metrics_path.is_file() else {}
    result = {"check": "data randomisation (Adebayo et al. 2018): the recipe trained on shuffled labels",
              "model": str(shuffled_dir.relative_to(run.root)), "epochs_cap": epochs, "images": len(shown.targets),
              "fail_at": fail_at,
              "shuffled_model_test": {k: test[k] for k in _TEST_KEYS if isinstance(test.get(k), (int, float))},
              "methods": report, "seconds": round(time.time() - started, 1)}
    if write:
        _save(run_dir, {"data_randomisation": result})
    return result
