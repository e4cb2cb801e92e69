"""Explanations of predicted masks: every method of ``segment --explain``, one target (the mask).

Seg-Grad-CAM and the input-saliency methods explain the mask's summed class logit, occlusion,
LIME and Kernel SHAP its mean probability, on a copy of the image no larger than
``_EXPLAIN_SIDE``; each writes an overlay, the raw map and the share of the map's energy
inside the mask.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.pipelines.explain.methods import SEGMENTATION_ALIASES, SEGMENTATION_METHODS, SUPERPIXEL
from medlens.pipelines.explain.overlay import heatmap_overlay, save_npy, save_png, signed_overlay
from medlens.pipelines.seg_model import SegModel

__all__ = ["MaskExplainer", "segmentation_methods"]

log = logging.getLogger(__name__)

_EXPLAIN_SIDE = 1024  # explanations run on a copy whose longer side is at most this
_EXPLAIN_BATCH = 4  # images (noisy copies, path points, occluded copies) per gradient or forward call


class MaskExplainer:
    """Maps of each predicted mask by every method asked, on a copy no larger than ``_EXPLAIN_SIDE``.

    One target for all: the predicted mask. Seg-Grad-CAM explains its summed logit at the
    bottleneck; the input-saliency methods (:mod:`medlens.pipelines.explain.saliency`) the same sum at
    the pixels; LIME and Kernel SHAP the mask's mean foreground probability as superpixels
    are hidden (signed weights: for, against).
    """

    def __init__(self, model: SegModel, methods: Sequence[str], samples: int | None = None):
        from medlens.pipelines.explain import ExplainOptions, build_map_method
        from medlens.pipelines.explain.seg_gradcam import SegGradCAM

        self.model = model
        self.methods: dict[str, Any] = {}
        # blur: exact in any affine pixel scaling; superpixel samples as asked (default as predict's)
        self.options = ExplainOptions(methods=(), ig_baseline="blur",
                                      **({} if samples is None else {"lime_samples": int(samples)}))
        for method in methods:
            slug = SEGMENTATION_METHODS[method]
            if method == "seg-gradcam":
                self.methods[slug] = SegGradCAM(model.model, threshold=model.threshold)
            elif method in SUPERPIXEL:
                self.methods[slug] = method  # built per image: its score is that image's region
            else:
                self.methods[slug] = build_map_method(method, model.model, self.options, None,
                                                      batch_size=_EXPLAIN_BATCH)

    def columns(self) -> list[str]:
        """Every explanation column of ``segmentation.csv``."""
        return ["explanation"] + [f"{slug}_{part}" for slug in self.methods for part in ("overlay", "map", "inside")]

    def file_columns(self) -> list[str]:
        """The columns that name a file: ``explanation`` and each method's overlay and map."""
        return ["explanation"] + [f"{slug}_{part}" for slug in self.methods for part in ("overlay", "map")]

    def __call__(self, pixels: np.ndarray, mask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Slug → (map at the explained size, the region at that size)."""
        x = self.model.model_input(pixels)
        height, width = x.shape[:2]
        scale = min(1.0, _EXPLAIN_SIDE / max(height, width))
        multiple = self.model.multiple
        new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
        new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
        small = cv2.resize(x, (new_w, new_h), interpolation=cv2.INTER_AREA)
        small = small[..., None] if small.ndim == 2 else small
        region = cv2.resize((mask > 0).astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        maps = {}
        for slug, method in self.methods.items():
            if isinstance(method, str):
                maps[slug] = (self._superpixel_map(method, pixels, (new_h, new_w), region), region)
            else:
                maps[slug] = (method(small[None], regions=region[None]).maps[0], region)
        return maps

    def _superpixel_map(self, method: str, pixels: np.ndarray, size: tuple[int, int], region: np.ndarray
                        ) -> np.ndarray:
        """LIME / Kernel SHAP of the region's mean foreground probability (signed superpixel weights)."""
        from medlens.pipelines.explain import build_superpixel_method
        from medlens.pipelines.explain.saliency import as_probabilities

        area = max(float(region.sum()), 1.0)

        def region_probability(batch: np.ndarray) -> np.ndarray:  # RGB 0..255 → N×2 [1 − m, m]
            x = np.stack([self.model.model_input(image / np.float32(255.0)) for image in batch])
            x = x[..., None] if x.ndim == 3 else x
            foreground = 1.0 - as_probabilities(self.model.model.predict_on_batch(x))[..., 0]
            mean = (foreground * region).reshape(len(batch), -1).sum(axis=1) / area
            return np.stack([1.0 - mean, mean], axis=1)

        small = cv2.resize(np.asarray(pixels, np.float32), size[::-1], interpolation=cv2.INTER_AREA)
        image = np.clip(small * 255.0, 0.0, 255.0)
        return build_superpixel_method(method, region_probability, self.options).explain(image, class_index=1).map

    def write(self, out: Path, stem: str, pixels: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
        """Each method's overlay PNG (original size) and map ``.npy``; the row's explanation fields."""
        from medlens.pipelines.explain.faithfulness import resize_map
        from medlens.pipelines.explain.localisation import energy_pointing

        fields: dict[str, Any] = {}
        for slug, (saliency, region) in self(pixels, mask).items():
            if slug in SUPERPIXEL:  # signed weights: green for the region, red against
                picture = signed_overlay(pixels, resize_map(saliency, pixels.shape[:2]))
            else:
                picture = heatmap_overlay(pixels, saliency)
            overlay = save_png(out / "explanations" / f"{stem}.{slug}.png", picture)
            saved = save_npy(out / "explanations" / f"{stem}.{slug}.npy", saliency.astype(np.float32))
            fields[f"{slug}_overlay"] = overlay.relative_to(out).as_posix()
            fields[f"{slug}_map"] = saved.relative_to(out).as_posix()
            positive = np.clip(saliency, 0.0, None)
            fields[f"{slug}_inside"] = round(energy_pointing(positive, region), 4) if region.any() else ""
            fields.setdefault("explanation", fields[f"{slug}_overlay"])  # the first method's, as before
        return fields


def segmentation_methods(explain: bool | str | Sequence[str]) -> tuple[str, ...]:
    """``segment``'s ``explain``: False/None (none), True (Seg-Grad-CAM) or method names."""
    from medlens.pipelines.explain import parse_methods

    if explain is True:
        return ("seg-gradcam",)
    if not explain:
        return ()
    return parse_methods(explain, SEGMENTATION_METHODS, SEGMENTATION_ALIASES)


