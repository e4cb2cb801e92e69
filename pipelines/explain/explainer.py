"""Explanations alongside predictions: CAMs, input saliency, occlusion, LIME and Kernel SHAP for every image.

:class:`Explainer` is built once from a loaded :class:`~medlens.pipelines.predict.Predictor`
and called with each prediction batch. For every image it

* explains the class the prediction reports (the validation threshold's label for
  binary runs, the argmax otherwise) or a class the user names;
* writes, per method, an overlay PNG at the image's *own* resolution (colour map
  blended onto the original, RGB order) and the map itself as ``.npy`` at the
  model input size (heatmap methods: ``[0, 1]``; LIME and Kernel SHAP: signed ``[-1, 1]``);
* returns summary fields for ``predictions.csv`` (overlay and map paths relative to
  the output folder, the peak's row/column in the original image, the area above
  half the peak) and, when asked, faithfulness scores: deletion and insertion AUC
  (RISE) and the pointing game against a lesion mask.

Grad-CAM's gradient step also yields the model output, so a batch explained with
Grad-CAM costs about one forward-and-backward pass, not a forward pass plus that.

Example:
    from medlens.pipelines.predictors import Predictor
    explainer = Explainer(Predictor("runs/demo"), ExplainOptions(methods=("gradcam", "lime")),
                          out_dir="out")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.explain.faithfulness import deletion_auc, insertion_auc, resize_map
from medlens.pipelines.explain.gradcam import GradCAM
from medlens.pipelines.explain.gradcam_plus_plus import GradCAMPlusPlus, HiResCAM, LayerCAM
from medlens.pipelines.explain.guided import GuidedBackprop
from medlens.pipelines.explain.kernel_shap import KernelShapExplainer
from medlens.pipelines.explain.lime import LimeExplainer
from medlens.pipelines.explain.localisation import energy_pointing
from medlens.pipelines.explain.methods import METHODS, SUPERPIXEL, TITLES
from medlens.pipelines.explain.options import (
    ExplainOptions,
    _file_part,
    _key,
    column_names,
    file_column_names,
    load_masks,
    parse_methods,
)
from medlens.pipelines.explain.overlay import heatmap_overlay, save_npy, save_png, signed_overlay
from medlens.pipelines.explain.robustness import max_sensitivity, road_scores
from medlens.pipelines.explain.saliency import IntegratedGradients, Occlusion, SmoothGrad, VanillaGradient
from medlens.pipelines.imaging import ImageRecord, read_image
from medlens.pipelines.inference import content_digest, output_stem
from medlens.pipelines.scale import field_pixels, to_input_frame

if TYPE_CHECKING:  # pragma: no cover
    from medlens.pipelines.predictors import Predictor

__all__ = ["METHODS", "TITLES", "ExplainOptions", "build_map_method", "build_superpixel_method", "Explainer",
           "parse_methods", "load_masks", "column_names", "file_column_names"]

log = logging.getLogger(__name__)

# Methods called like Grad-CAM (batch, class_index) → maps; the superpixel methods explain image by image.
_CAMS = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "gradient": VanillaGradient, "smoothgrad": SmoothGrad,
         "ig": IntegratedGradients, "occlusion": Occlusion, "hirescam": HiResCAM, "layercam": LayerCAM,
         "guided": GuidedBackprop}
_SUPERPIXEL = {"lime": LimeExplainer, "kernelshap": KernelShapExplainer}
_GREEN = np.array([0, 255, 0], np.uint8)
_RED = np.array([255, 0, 0], np.uint8)


def build_map_method(method: str, model: Any, options: ExplainOptions, preprocess: Any,
                     batch_size: int | None = None) -> Any:
    """The object computing ``method``'s maps (``(batch, class_index) → result``) for ``model``.

    Every method but the superpixel ones (LIME, Kernel SHAP); used by the explainer, by the
    sanity checks (on randomised copies) and, for the input-saliency methods, by ``segment``.
    ``batch_size``: images per gradient call (default each method's own).
    """
    if method not in _CAMS:
        raise ConfigError(f"{method} has no batched map object (LIME and Kernel SHAP explain image by image)")
    settings = {"smoothgrad": {"samples": options.smoothgrad_samples, "noise": options.smoothgrad_noise,
                               "seed": options.seed},
                "ig": {"steps": options.ig_steps, "baseline": _ig_baseline(options.ig_baseline, model, preprocess),
                       "preprocess": preprocess},
                "occlusion": {"window": options.occlusion_window, "fill": options.occlusion_fill,
                              "preprocess": preprocess}}
    sizes = {} if batch_size is None else {"batch_size": int(batch_size)}
    return _CAMS[method](model, options.target_layer, **settings.get(method, {}), **sizes)


def _ig_baseline(baseline: str, model: Any, preprocess: Any) -> str | np.ndarray:
    """``black``/``blur`` as named, or the image file given, at the model's input size and model-ready."""
    if baseline in ("black", "blur"):
        return baseline
    from medlens.pipelines.data.images import prepare_image

    size = tuple(int(v) for v in model.input_shape[1:3])
    pixels = prepare_image(read_image(baseline).pixels, size)[None]
    return np.asarray(preprocess(pixels) if preprocess is not None else pixels / np.float32(255.0), np.float32)[0]


def build_superpixel_method(method: str, predict_fn: Any, options: ExplainOptions) -> Any:
    """The LIME or Kernel SHAP explainer for ``predict_fn`` (RGB ``0..255`` batch → probabilities).

    Both get the same superpixels, hiding, sample count and seed from ``options``.
    """
    if method not in _SUPERPIXEL:
        raise ConfigError(f"{method} is not a superpixel method ({', '.join(_SUPERPIXEL)})")
    return _SUPERPIXEL[method](predict_fn, segmentation=options.lime_segmentation, n_segments=options.lime_segments,
                               num_samples=options.lime_samples, batch_size=options.lime_batch_size,
                               hide_color=options.lime_hide, seed=options.seed)


def _peak(saliency: np.ndarray) -> tuple[int, int]:
    row, col = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    return int(row), int(col)


def _outline_regions(canvas: np.ndarray, segments: np.ndarray, ids: list[int], colour: np.ndarray) -> None:
    if not ids:
        return
    labels = np.where(np.isin(segments, ids), segments + 1, 0)
    thick = max(1, round(max(canvas.shape[:2]) / 300))
    edges = find_boundaries(labels, mode="inner", background=0)
    if thick > 1:
        edges = cv2.dilate(edges.astype(np.uint8), np.ones((thick, thick), np.uint8)) > 0
    canvas[edges] = colour


class Explainer:
    """Explains prediction batches and writes the overlays and maps under ``out_dir/explanations``.

    Args:
        predictor: A loaded run.
        options: Methods and settings.
        out_dir: The prediction output folder; paths in the summary are relative to it.

    Raises:
        ConfigError: An unknown class name or target layer.
    """

    def __init__(self, predictor: Predictor, options: ExplainOptions, out_dir: str | Path):
        self.predictor = predictor
        self.options = options
        self.retarget(out_dir)
        # The outputs every image is explained for (a named class or findings), else None: per image.
        self.chosen: list[int] | None = predictor.chosen_targets(options)
        self.class_index: int | None = self.chosen[0] if self.chosen and len(self.chosen) == 1 else None
        self.cams = {m: build_map_method(m, predictor.model, options, predictor.preprocess)
                     for m in options.methods if m in _CAMS}
        self.superpixel = {m: build_superpixel_method(m, self.predict_rgb, options)
                           for m in options.methods if m in _SUPERPIXEL}

    def retarget(self, out_dir: str | Path) -> None:
        """Write the next batches' files under ``out_dir`` (a long-lived explainer, e.g. in the service)."""
        self.out_dir = Path(out_dir)
        self.folder = self.out_dir / "explanations"
        self.seconds = dict.fromkeys(self.options.methods, 0.0)

    # ------------------------------------------------------------------ model access
    def predict_rgb(self, batch: np.ndarray) -> np.ndarray:
        """``(B, H, W, 3)`` RGB ``0..255`` at the model size → ``(B, K)`` probabilities."""
        return self.predictor.scores(self.predictor.model.predict_on_batch(self.predictor.preprocess(batch)))

    # ------------------------------------------------------------------ one batch
    def explain(self, records: list[ImageRecord], digests: Mapping[str, str] | None = None,
                ) -> tuple[np.ndarray, list[dict[str, Any]]]:
        """Predict and explain one batch.

        The files of an image are named by :func:`~medlens.pipelines.inference.output_stem` from
        its file's SHA-256 (``digests`` by path, when the caller has them; else read here).

        Each image is explained for its targets (:meth:`Predictor.explain_targets`: the
        reported class, a named class, or a multi-label run's findings); all (image, target)
        pairs of the batch go through each CAM method in one batched call, and LIME and Kernel
        SHAP share one set of perturbed samples among an image's targets.

        Returns:
            ``(probabilities N×K, fields)``: one dict of ``predictions.csv`` fields
            (see :func:`column_names`) per record, plus a ``"details"`` entry for the
            JSON output (LIME's and Kernel SHAP's superpixel weights and top regions).
        """
        resized = self.predictor.resize([field_pixels(r) for r in records])  # the matched field (--match-scale)
        model_batch = self.predictor.preprocess(resized)
        probabilities, cam_results = self._cams(model_batch)
        targets = self.predictor.explain_targets(probabilities, self.chosen)
        jobs = [(i, t) for i, image_targets in enumerate(targets) for t in image_targets]
        fields: list[dict[str, Any]] = [
            {**self.predictor.explained_fields(image_targets), "details": {}} for image_targets in targets
        ]
        stems = [output_stem(r.path, (digests or {}).get(r.path) or content_digest(r.path, r.pixels), r.frame)
                 for r in records]
        self.folder.mkdir(parents=True, exist_ok=True)
        for method in self.options.methods:
            started = time.perf_counter()
            slug = METHODS[method]
            if method in self.cams:
                maps = self._cam_maps(method, model_batch, jobs, cam_results.get(method), fields)
            else:
                maps = self._superpixel_maps(method, resized, targets, fields)
            for (i, t), saliency in zip(jobs, maps, strict=True):
                target = self.predictor.target_name(t)
                fields[i].update(self._write(method, records[i], stems[i] + _file_part(target), saliency,
                                             fields[i], _key(slug, target), t))
                if self.options.faithfulness:
                    positive = np.clip(saliency, 0.0, None)
                    key = _key(slug, target)
                    fields[i][f"{key}_deletion_auc"] = round(
                        deletion_auc(self.predict_rgb, resized[i], positive, int(t),
                                     steps=self.options.faithfulness_steps), 4)
                    fields[i][f"{key}_insertion_auc"] = round(
                        insertion_auc(self.predict_rgb, resized[i], positive, int(t),
                                      steps=self.options.faithfulness_steps), 4)
                if self.options.road:
                    road = road_scores(self.predict_rgb, resized[i], saliency, int(t), seed=self.options.seed)
                    key = _key(slug, target)
                    fields[i][f"{key}_road_morf"] = round(road["road_morf"], 4)
                    fields[i][f"{key}_road_lerf"] = round(road["road_lerf"], 4)
            if self.options.stability and jobs:
                for (i, t), value in zip(jobs, self._stability(method, model_batch, resized, jobs), strict=True):
                    fields[i][f"{_key(slug, self.predictor.target_name(t))}_stability"] = round(float(value), 4)
            self.seconds[method] += time.perf_counter() - started
        for item in fields:
            for name in [k for k in item if k.startswith("_sp_")]:
                item.pop(name)
        return probabilities, fields

    def _stability(self, method: str, model_batch: np.ndarray, resized: np.ndarray,
                   jobs: list[tuple[int, int]]) -> np.ndarray:
        """Each (image, target) job's max-sensitivity: its map made again on noisy copies of the image.

        Gradient and CAM methods see the noise in the model's input space, superpixel methods in
        the image's 0..255 pixels; either way the bound is a fraction of the image's value range.
        """
        images = np.array([i for i, _ in jobs], np.int64)
        wanted = np.array([t for _, t in jobs], np.int32)
        draws = self.options.stability_draws
        # max_sensitivity asks for every original first, then each image's noisy copies in turn.
        targets = np.concatenate([wanted, np.repeat(wanted, draws)])
        step = max(1, len(model_batch))  # the batch size the caller chose, for memory's sake
        if method in self.cams:
            def maps(batch: np.ndarray, cam: Any = self.cams[method]) -> np.ndarray:
                return np.concatenate([cam(batch[k:k + step], class_index=targets[k:k + step]).maps
                                       for k in range(0, len(batch), step)])
            inputs = model_batch[images]
        else:
            def maps(batch: np.ndarray, explainer: Any = self.superpixel[method]) -> np.ndarray:
                return np.stack([explainer.explain(np.clip(image, 0, 255), class_index=int(t)).map
                                 for image, t in zip(batch, targets, strict=True)])
            inputs = resized[images].astype(np.float32)
        return max_sensitivity(maps, inputs, radius=self.options.stability_noise, samples=draws,
                               seed=self.options.seed)

    def _cam_maps(self, method: str, model_batch: np.ndarray, jobs: list[tuple[int, int]], first: Any,
                  fields: list[dict[str, Any]]) -> list[np.ndarray]:
        """One CAM per (image, target) job; maps of the first pass are reused where the target matches."""
        slug = METHODS[method]
        images = np.array([i for i, _ in jobs], np.int64)
        wanted = np.array([t for _, t in jobs], np.int32)
        maps: list[Any] = [None] * len(jobs)
        empty = np.zeros(len(jobs), bool)
        extras: list[dict[str, float]] = [{} for _ in jobs]

        def take(j: int, result: Any, k: int) -> None:
            maps[j], empty[j] = result.maps[k], result.empty[k]
            extras[j] = {name: float(values[k]) for name, values in getattr(result, "extras", {}).items()}

        if first is not None:
            for j, (i, t) in enumerate(jobs):
                if int(first.class_index[i]) == t:
                    take(j, first, i)
        redo = [j for j, m in enumerate(maps) if m is None]
        if redo:
            again = self.cams[method](model_batch[images[redo]], class_index=wanted[redo])
            for k, j in enumerate(redo):
                take(j, again, k)
        for j, (i, t) in enumerate(jobs):
            key = _key(slug, self.predictor.target_name(t))
            fields[i][f"{key}_empty"] = bool(empty[j])
            if "completeness" in extras[j]:
                fields[i][f"{key}_completeness"] = round(extras[j]["completeness"], 4)
        return maps

    def _superpixel_maps(self, method: str, resized: np.ndarray, targets: list[list[int]],
                         fields: list[dict[str, Any]]) -> list[np.ndarray]:
        """LIME or Kernel SHAP maps in job order; one sample set per image, shared by its targets."""
        maps = []
        explainer = self.superpixel[method]
        for i, image_targets in enumerate(targets):
            if not image_targets:
                continue
            for t, lime in zip(image_targets, explainer.explain_many(resized[i], list(image_targets)), strict=True):
                key = _key(METHODS[method], self.predictor.target_name(t))
                maps.append(lime.map)
                fields[i][f"{key}_fit_r2"] = round(lime.score, 4)
                fields[i]["details"][key] = {
                    "weights": [round(float(w), 6) for w in lime.weights],
                    "intercept": round(float(lime.intercept), 6),
                    "top_positive": lime.top_regions(self.options.lime_top_k, positive=True),
                    "top_negative": lime.top_regions(self.options.lime_top_k, positive=False),
                    "segments": int(lime.segments.max()) + 1,
                    "samples": lime.num_samples,
                }
                fields[i]["_sp_segments"] = lime.segments
                fields[i][f"_sp_peak_{key}"] = lime.peak()
        return maps

    def _cams(self, model_batch: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """Probabilities for the batch, from the first CAM's gradient step when there is one."""
        if not self.cams:
            return self.predictor.calibrate(self.predictor.model.predict_on_batch(model_batch)), {}
        method, cam = next(iter(self.cams.items()))
        started = time.perf_counter()
        # Explain each image's argmax class first; images whose reported class differs
        # (a binary threshold other than 0.5, or a named class) are redone with it.
        result = cam(model_batch, class_index=self.class_index)
        self.seconds[method] += time.perf_counter() - started
        return self.predictor.calibrate(result.probabilities), {method: result}

    def _write(self, method: str, record: ImageRecord, stem: str, saliency: np.ndarray,
               item: dict[str, Any], key: str, target: int) -> dict[str, Any]:
        """Overlay PNG at the original size, the map as .npy, and the map's summary fields (named ``key_*``)."""
        slug = METHODS[method]
        height, width = record.pixels.shape[:2]
        full = to_input_frame(resize_map(saliency, saliency.shape[:2]), record)
        if method in SUPERPIXEL:
            overlay = signed_overlay(record.pixels, full, alpha=min(1.0, self.options.alpha + 0.2))
            segments = to_input_frame(item["_sp_segments"].astype(np.float32) + 1, record,
                                      cv2.INTER_NEAREST).astype(np.int32) - 1  # -1: outside the matched field
            details = item["details"][key]
            _outline_regions(overlay, segments, details["top_negative"], _RED)
            _outline_regions(overlay, segments, details["top_positive"], _GREEN)
            positive = np.clip(full, 0.0, None)
        else:
            overlay = heatmap_overlay(record.pixels, full, alpha=self.options.alpha)
            positive = full
        overlay_path = save_png(self.folder / f"{stem}.{slug}.png", overlay)
        map_path = save_npy(self.folder / f"{stem}.{slug}.npy", saliency.astype(np.float32))
        peak_value = float(positive.max())
        row, col = _peak(positive)
        if method in SUPERPIXEL and item.get(f"_sp_peak_{key}") is not None:
            # Centre of the strongest superpixel, mapped to the original image.
            model_row, model_col = item[f"_sp_peak_{key}"]
            top, left, box_height, box_width = record.meta.get("field_box") or (0, 0, height, width)
            row = min(height - 1, max(0, top + int((model_row + 0.5) * box_height / saliency.shape[0])))
            col = min(width - 1, max(0, left + int((model_col + 0.5) * box_width / saliency.shape[1])))
        fields: dict[str, Any] = {
            f"{key}_overlay": overlay_path.relative_to(self.out_dir).as_posix(),
            f"{key}_map": map_path.relative_to(self.out_dir).as_posix(),
            f"{key}_peak_row": row if peak_value > 0 else "",
            f"{key}_peak_col": col if peak_value > 0 else "",
            f"{key}_area": round(float(np.mean(positive >= 0.5 * peak_value)), 4) if peak_value > 0 else 0.0,
        }
        if self.options.masks:
            mask = self._mask(record, positive.shape, self.predictor.target_name(target))
            fields[f"{key}_pointing"] = "" if mask is None else int(peak_value > 0 and mask[row, col] > 0)
            fields[f"{key}_energy"] = "" if mask is None else round(energy_pointing(positive, mask), 4)
        return fields

    def _mask(self, record: ImageRecord, shape: tuple[int, ...], target: str | None = None) -> np.ndarray | None:
        """The image's lesion mask at ``shape``, or None (no mask, unreadable, or empty: no lesion).

        A multi-label finding's mask is ``<stem>_<finding>`` (e.g. ``case_01_nodule.png``),
        else the image's one mask."""
        stem = Path(record.path).stem.lower()
        mask_path = self.options.masks.get(f"{stem}_{target.lower()}") if target else None
        mask_path = mask_path or (None if target else self.options.masks.get(stem))
        if mask_path is None or record.frame not in (None, 0):
            return None
        try:
            mask = read_image(mask_path).pixels
        except MedlensError as exc:
            log.warning("mask %s unreadable: %s", mask_path, exc)
            return None
        mask = mask.max(axis=-1) if mask.ndim == 3 else mask
        if mask.shape != tuple(shape):
            mask = cv2.resize(mask.astype(np.float32), tuple(shape)[::-1], interpolation=cv2.INTER_NEAREST)
        return mask if (mask > 0).any() else None  # no lesion: the pointing game does not apply
