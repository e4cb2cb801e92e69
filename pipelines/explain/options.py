"""What an explanation run is asked for, and the table columns it adds.

:func:`parse_methods` reads ``--explain gradcam,lime`` (aliases and one-line errors),
:class:`ExplainOptions` holds every option, :func:`column_names` and :func:`file_column_names`
name the ``predictions.csv`` columns (the latter those naming files, for the output layout),
and :func:`load_masks` reads a folder of lesion masks for the pointing game. Light: no Keras.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medlens.pipelines.errors import ConfigError
from medlens.pipelines.explain.methods import ALIASES, METHODS, SUPERPIXEL
from medlens.pipelines.imaging import list_images

__all__ = ["parse_methods", "ExplainOptions", "column_names", "file_column_names", "load_masks"]


def parse_methods(methods: str | Sequence[str], choices: dict[str, str] = METHODS,
                  aliases: dict[str, str] = ALIASES) -> tuple[str, ...]:
    """``"gradcam,lime"`` (or a list) → validated, de-duplicated method names in the given order.

    ``choices``/``aliases``: the accepted names (default the classifier methods; ``segment``
    passes :data:`~medlens.pipelines.explain.methods.SEGMENTATION_METHODS`).

    Raises:
        ConfigError: An unknown method, or none at all.
    """
    items = methods.split(",") if isinstance(methods, str) else list(methods)
    names: list[str] = []
    for item in items:
        name = item.strip().lower()
        name = aliases.get(name, name)
        if not name:
            continue
        if name not in choices:
            raise ConfigError(f"unknown explanation method {item.strip()!r}; choose from {', '.join(choices)}")
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"no explanation method given; choose from {', '.join(choices)}")
    return tuple(names)


@dataclass
class ExplainOptions:
    """What to explain and how.

    Attributes:
        methods: Any of :data:`~medlens.pipelines.explain.methods.METHODS`.
        class_name: Explain this class for every image instead of the predicted one.
        target_layer: Grad-CAM layer (default: the backbone's last convolutional map).
        lime_samples: Perturbed images per LIME or Kernel SHAP explanation (the original included).
        lime_segments: Approximate number of superpixels (LIME and Kernel SHAP share them).
        lime_segmentation: ``slic`` (default), ``felzenszwalb`` or ``quickshift``.
        lime_hide: What a hidden superpixel shows: ``blur`` (default), ``mean`` or ``zero``.
        lime_batch_size: Images per forward pass while LIME/Kernel SHAP predict their samples.
        lime_top_k: Regions of each sign outlined on the LIME/Kernel SHAP overlay.
        seed: The superpixel methods' and SmoothGrad's sampling seed; the same seed gives
            bit-identical explanations.
        alpha: Opacity of the heatmap colour on the overlays.
        faithfulness: Also compute deletion and insertion AUC for each map (costs
            ``faithfulness_steps + 1`` forward passes per curve and image).
        faithfulness_steps: Points on each deletion/insertion curve.
        masks: Stem (lower case) → mask file, for the pointing game and the share of the map's
            energy inside the mask (see :func:`load_masks`).
        road: Also score each map by ROAD (MoRF and LeRF means with noisy linear imputation,
            :mod:`medlens.pipelines.explain.robustness`; 18 forward passes and sparse solves per map).
        stability: Also score each map by its max-sensitivity: the largest relative change of the
            map over ``stability_draws`` copies of the image with uniform noise of
            ``stability_noise`` × its value range (Yeh et al. 2019; lower is steadier). Costs
            ``stability_draws`` more maps per image and target.
        stability_draws: Noisy copies per image for ``stability``.
        stability_noise: Noise bound for ``stability``, a fraction of the image's value range.
        findings: Multi-label runs: explain the ``positive`` findings of each image, ``all``,
            or the comma-separated names given.
        ig_steps: Integrated Gradients: points of the path integral.
        ig_baseline: Integrated Gradients: ``black``, ``blur``, or an image file (resized to the
            model's input, e.g. a healthy reference scan).
        smoothgrad_samples: SmoothGrad: noisy copies per image.
        smoothgrad_noise: SmoothGrad: noise sd as a fraction of the image's value range.
        occlusion_window: Occlusion: window side as a fraction of the image's longer side.
        occlusion_fill: Occlusion: ``blur`` or ``black``.
    """

    methods: tuple[str, ...] = ("gradcam",)
    class_name: str | None = None
    target_layer: str | None = None
    lime_samples: int = 1000
    lime_segments: int = 100
    lime_segmentation: str = "slic"
    lime_hide: str = "blur"
    lime_batch_size: int = 64
    lime_top_k: int = 5
    seed: int = 0
    alpha: float = 0.4
    faithfulness: bool = False
    faithfulness_steps: int = 20
    road: bool = False
    stability: bool = False
    stability_draws: int = 8
    stability_noise: float = 0.02
    masks: dict[str, Path] = field(default_factory=dict)
    findings: str = "positive"
    ig_steps: int = 32
    ig_baseline: str = "black"
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15
    occlusion_window: float = 0.125
    occlusion_fill: str = "blur"


def load_masks(folder: str | Path) -> dict[str, Path]:
    """Index a folder of lesion masks by file stem (lower case), for the pointing game.

    A mask belongs to the image with the same stem (``masks/case_01.png`` ↔
    ``images/case_01.dcm``); ``_mask`` / ``-mask`` suffixes are ignored.

    Raises:
        ConfigError: The folder does not exist or holds no image files.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"{root}: mask folder does not exist")
    found = {}
    for path in list_images(root):
        stem = re.sub(r"[_-]mask$", "", path.stem.lower())
        found.setdefault(stem, path)
    if not found:
        raise ConfigError(f"{root}: mask folder holds no image files")
    return found


def column_names(options: ExplainOptions, target: str | None = None) -> list[str]:
    """The ``predictions.csv`` columns an explanation adds, in order.

    With ``target`` (a multi-label finding), only that target's method columns, named
    ``<method>_<target>_<field>``; without, ``explained_class`` and ``<method>_<field>``.
    """
    columns = [] if target is not None else ["explained_class"]
    for method in options.methods:
        slug = _key(METHODS[method], target)
        columns += [f"{slug}_overlay", f"{slug}_map", f"{slug}_peak_row", f"{slug}_peak_col", f"{slug}_area"]
        if method in SUPERPIXEL:
            columns.append(f"{slug}_fit_r2")
        if method == "ig":
            columns.append(f"{slug}_completeness")
        if options.masks:
            columns += [f"{slug}_pointing", f"{slug}_energy"]
        if options.faithfulness:
            columns += [f"{slug}_deletion_auc", f"{slug}_insertion_auc"]
        if options.road:
            columns += [f"{slug}_road_morf", f"{slug}_road_lerf"]
        if options.stability:
            columns.append(f"{slug}_stability")
    return columns


def file_column_names(options: ExplainOptions, target: str | None = None) -> list[str]:
    """The columns of :func:`column_names` that name files: each method's overlay and map."""
    return [f"{_key(METHODS[method], target)}_{part}" for method in options.methods for part in ("overlay", "map")]


def _key(slug: str, target: str | None) -> str:
    """The column prefix of one method's fields for one target (None: the image's one target)."""
    return slug if target is None else f"{slug}_{target}"


def _file_part(target: str | None) -> str:
    return "" if target is None else "." + (re.sub(r"[^A-Za-z0-9_-]+", "_", target) or "target")
