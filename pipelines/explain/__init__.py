"""Explanations: every method, the explainers that run them beside predictions, and the checks on them.

- methods by name, options and output columns: ``methods.py`` (no heavy imports; the report reads
  it without a deep-learning backend), ``options.py`` (:class:`ExplainOptions`, ``parse_methods``);
- the maps: ``gradients.py`` (the one gradient helper, every Keras backend), ``gradcam.py``,
  ``gradcam_plus_plus.py`` (Grad-CAM++, HiResCAM, Layer-CAM), ``target_layer.py``,
  ``saliency.py`` (vanilla gradient, SmoothGrad, Integrated Gradients, occlusion), ``guided.py``,
  ``superpixels.py``, ``lime.py``, ``kernel_shap.py``, ``seg_gradcam.py`` (Seg-Grad-CAM);
- the explainers: ``explainer.py`` (:class:`Explainer`, a classifier's predictions) and
  ``segmentation.py`` (a predicted mask); ``overlay.py`` draws the maps onto the image;
- the checks: ``faithfulness.py`` (deletion/insertion), ``localisation.py`` (pointing game), ``robustness.py`` (ROAD,
  max-sensitivity), ``sanity.py`` (cascading randomisation).

The names that ``medlens.pipelines.explain`` exported as one module (``ExplainOptions``,
``Explainer``, ``parse_methods``, ...) are still importable from here; they load on first use,
so importing ``medlens.pipelines.explain.methods`` starts no backend.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["METHODS", "TITLES", "ExplainOptions", "build_map_method", "build_superpixel_method", "Explainer",
           "parse_methods", "load_masks", "column_names", "file_column_names"]

_HOME = {"METHODS": "methods", "TITLES": "methods", "ExplainOptions": "options", "parse_methods": "options",
         "load_masks": "options", "column_names": "options", "file_column_names": "options",
         "Explainer": "explainer", "build_map_method": "explainer", "build_superpixel_method": "explainer"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        value = getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
