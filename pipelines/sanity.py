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

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
from scipy.stats import spearmanr
from skimage.feature import hog
from skimage.metrics import structural_similarity

from medlens.models.backbones import backbone_blocks
from medlens.models.classifier import BACKBONE_LAYER
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.runs import CHECKS_FILE, write_checks_to_card
from medlens.pipelines.explain import ExplainOptions, build_map_method, build_superpixel_method
from medlens.pipelines.io import read_image
from medlens.pipelines.methods import METHODS, SUPERPIXEL, TITLES
from medlens.pipelines.rundir import RunDir, atomic_write_json

__all__ = ["CHECKS_FILE", "randomisation_check", "write_checks_to_card"]

log = logging.getLogger(__name__)

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


def randomisation_check(run_dir: str | Path, images: Sequence[str | Path], methods: Sequence[str] = ("gradcam",),
                        *, seed: int = 0, fail_at: float = 0.5, options: ExplainOptions | None = None,
                        write: bool = True) -> dict[str, Any]:
    """Cascading randomisation of a classifier run's weights; per method, similarity per stage and a verdict.

    Args:
        run_dir: A finished classifier run (single-label, multi-label or ordinal).
        images: Image files to explain (each for its reported target).
        methods: Explanation methods (any of :data:`~medlens.pipelines.methods.METHODS`).
        seed: Seed of the re-drawn weights.
        fail_at: Mean Spearman correlation after full randomisation at or above which a method fails.
        options: Method settings (IG steps, SmoothGrad samples, ...).
        write: Write ``RUN/explanation_checks.json`` and the model card's section.

    Raises:
        ConfigError: No readable image, or none with a target.
    """
    from medlens.pipelines.predict import load_predictor

    started = time.time()
    options = options or ExplainOptions(methods=tuple(methods))
    predictor = load_predictor(run_dir)
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
    targets = [t[0] if t else None for t in predictor.explain_targets(probabilities, predictor.chosen_targets(options))]
    keep = [i for i, t in enumerate(targets) if t is not None]
    if not keep:
        raise ConfigError("no image has a target to explain (no finding called present)")
    batch, resized, wanted = batch[keep], resized[keep], np.array([targets[i] for i in keep], np.int32)

    def maps_of(model: keras.Model) -> dict[str, np.ndarray]:
        maps = {}
        for m in methods:
            if m in SUPERPIXEL:
                def predict_rgb(rgb: np.ndarray, model: keras.Model = model) -> np.ndarray:
                    return predictor.scores(model.predict_on_batch(predictor.preprocess(rgb)))

                explainer = build_superpixel_method(m, predict_rgb, options)
                maps[m] = np.stack([explainer.explain(image, int(t)).map for image, t in zip(resized, wanted, strict=True)])
            else:
                maps[m] = build_map_method(m, model, options, predictor.preprocess)(batch, class_index=wanted).maps
        return maps

    original = maps_of(predictor.model)
    copy = keras.models.clone_model(predictor.model)
    copy.set_weights(predictor.model.get_weights())
    rng = np.random.default_rng(seed)
    report: dict[str, Any] = {m: {"title": TITLES[METHODS[m]], "stages": []} for m in methods}
    for name, layers in _stages(copy, predictor.state["backbone"]):
        _randomise(layers, rng)
        randomised = maps_of(copy)
        for method in methods:
            pairs = [_similarity(a, b) for a, b in zip(original[method], randomised[method], strict=True)]
            report[method]["stages"].append({"randomised_down_to": name,
                                             "spearman": round(float(np.mean([p[0] for p in pairs])), 4),
                                             "ssim": round(float(np.mean([p[1] for p in pairs])), 4),
                                             "hog": round(float(np.mean([p[2] for p in pairs])), 4)})
    for method, item in report.items():
        final = item["stages"][-1]["spearman"]
        item.update(final_spearman=final, verdict="fail" if final >= fail_at else "pass")
        log.info("%s: Spearman %.3f after full randomisation: %s", method, final, item["verdict"])
    checks = {"check": "cascading model-parameter randomisation (Adebayo et al. 2018)", "images": len(keep),
              "seed": seed, "fail_at": fail_at, "methods": report, "seconds": round(time.time() - started, 1),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if write:
        run = RunDir(run_dir)
        atomic_write_json(run.root / CHECKS_FILE, checks)
        write_checks_to_card(run.root, checks)
    return checks
