"""Faithfulness metrics for saliency maps: deletion/insertion (RISE); the pointing game is in ``localisation``.

A saliency map is *faithful* when the pixels it ranks highest are the ones the
model actually relies on. Deletion and insertion (Petsiuk et al., RISE, 2018)
measure this with the model itself:

* **deletion** replaces the most salient pixels by a baseline, a growing
  fraction at a time, and records the class probability; a faithful map makes
  it fall fast, so a *lower* area under the curve is better;
* **insertion** starts from the baseline and puts the most salient pixels back
  first; a faithful map makes the probability rise fast, so a *higher* area is
  better.

The pointing game, which needs no model, is in :mod:`~medlens.pipelines.explain.localisation`.

Every function takes a ``predict_fn``: a callable from a ``(B, H, W, 3)``
``float32`` batch of RGB images in ``0..255`` to ``(B, K)`` class probabilities.
The caller wraps the backbone's ``preprocess_input`` and ``model.predict`` in it,
so this module needs only NumPy and OpenCV (for resizing and blurring).

Example:
    >>> import numpy as np
    >>> def predict_fn(batch):
    ...     p = batch[:, 8:16, 8:16].mean(axis=(1, 2, 3)) / 255.0
    ...     return np.stack([1.0 - p, p], axis=1)
    >>> image = np.zeros((32, 32, 3), np.float32)
    >>> image[8:16, 8:16] = 255.0
    >>> saliency = np.zeros((32, 32))
    >>> saliency[8:16, 8:16] = 1.0
    >>> round(deletion_auc(predict_fn, image, saliency, 1, baseline="zero"), 3)
    0.032
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import cv2
import numpy as np

__all__ = [
    "PredictFn",
    "as_rgb_image",
    "make_baseline",
    "resize_map",
    "class_probabilities",
    "deletion_curve",
    "insertion_curve",
    "curve_auc",
    "deletion_auc",
    "insertion_auc",
    "summarize",
]

logger = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], Any]
"""``(B, H, W, 3) float32 RGB 0..255 -> (B, K)`` class probabilities."""

BASELINES = ("blur", "mean", "zero")


def as_rgb_image(image: np.ndarray) -> np.ndarray:
    """An image as ``float32`` ``H×W×3`` in ``0..255``, the form every ``predict_fn`` receives.

    Args:
        image: ``H×W``, ``H×W×1`` or ``H×W×3``, ``uint8`` or float already in ``0..255``.
            Grey images are replicated to three channels.

    Returns:
        A new ``float32`` array of shape ``(H, W, 3)``.

    Raises:
        ValueError: Wrong shape, or values that are not finite.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image must be H×W, H×W×1 or H×W×3; got shape {np.shape(image)}")
    array = array.astype(np.float32, copy=True)
    if not np.isfinite(array).all():
        raise ValueError("image contains NaN or infinite values")
    return array


def make_baseline(image: np.ndarray, baseline: str | float = "blur") -> np.ndarray:
    """The image that "removed" pixels are replaced by.

    Args:
        image: ``H×W×3`` ``float32`` in ``0..255`` (see :func:`as_rgb_image`).
        baseline: ``"blur"`` — Gaussian blur with σ = 5% of the longer side (RISE's
            insertion start); ``"mean"`` — the image's mean colour everywhere;
            ``"zero"`` — black (RISE's deletion substrate); or a number, a constant grey
            level in ``0..255``.

    Returns:
        ``float32`` ``H×W×3`` array.

    Raises:
        ValueError: Unknown baseline name.
    """
    image = np.asarray(image, dtype=np.float32)
    if isinstance(baseline, str):
        if baseline == "blur":
            sigma = max(1.0, 0.05 * max(image.shape[:2]))
            return cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT)
        if baseline == "mean":
            return np.broadcast_to(
                image.mean(axis=(0, 1), dtype=np.float64).astype(np.float32), image.shape
            ).copy()
        if baseline == "zero":
            return np.zeros_like(image)
        raise ValueError(f"baseline must be one of {BASELINES} or a number; got {baseline!r}")
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float, np.number)):
        raise ValueError(f"baseline must be one of {BASELINES} or a number; got {baseline!r}")
    return np.full(image.shape, float(baseline), dtype=np.float32)


def resize_map(saliency: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a 2-D map to ``shape[:2]`` (bilinear), as ``float32``; a no-op when sizes match.

    Raises:
        ValueError: ``saliency`` is not 2-D (a trailing channel of 1 is allowed) or not finite.
    """
    array = np.asarray(saliency, dtype=np.float32)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise ValueError(f"saliency must be a 2-D map; got shape {np.shape(saliency)}")
    if not np.isfinite(array).all():
        raise ValueError("saliency contains NaN or infinite values")
    height, width = int(shape[0]), int(shape[1])
    if array.shape != (height, width):
        array = cv2.resize(array, (width, height), interpolation=cv2.INTER_LINEAR)
    return array


def class_probabilities(output: Any, batch: int) -> np.ndarray:
    """Check a ``predict_fn`` result and return it as ``(B, K)`` ``float64``.

    A ``(B,)`` or ``(B, 1)`` sigmoid output becomes ``[1 - p, p]``.
    """
    array = np.asarray(output, dtype=np.float64)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim == 1:
        array = np.stack([1.0 - array, array], axis=1)
    if array.ndim != 2 or array.shape[0] != batch:
        raise ValueError(
            f"predict_fn must return (B, K) probabilities for a batch of {batch}; got shape {np.shape(output)}"
        )
    return array


def _predict_masked(
    predict_fn: PredictFn,
    image: np.ndarray,
    baseline: np.ndarray,
    ranks: np.ndarray,
    counts: np.ndarray,
    *,
    keep_ranked: bool,
    batch_size: int,
) -> np.ndarray:
    """Predict images where the pixels ranked below ``counts[i]`` come from one source, the rest from the other."""
    rows = []
    for start in range(0, len(counts), batch_size):
        chunk = counts[start : start + batch_size]
        selected = (ranks[None, :, :] < chunk[:, None, None])[..., None]
        if keep_ranked:
            batch = np.where(selected, image, baseline)
        else:
            batch = np.where(selected, baseline, image)
        rows.append(class_probabilities(predict_fn(batch.astype(np.float32, copy=False)), len(chunk)))
    return np.concatenate(rows, axis=0)


def _curve(
    predict_fn: PredictFn,
    image: np.ndarray,
    saliency: np.ndarray,
    class_index: int | None,
    *,
    steps: int = 50,
    baseline: str | float = "blur",
    batch_size: int = 64,
    insertion: bool = False,
) -> np.ndarray:
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    rgb = as_rgb_image(image)
    height, width = rgb.shape[:2]
    salient = resize_map(saliency, (height, width))
    # Most salient first; a stable sort breaks ties by raster order, so curves are reproducible.
    order = np.argsort(-salient.ravel(), kind="stable")
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    ranks = ranks.reshape(height, width)
    counts = np.round(np.linspace(0.0, 1.0, steps + 1) * order.size).astype(np.int64)
    fill = make_baseline(rgb, baseline)
    probs = _predict_masked(
        predict_fn, rgb, fill, ranks, counts, keep_ranked=insertion, batch_size=batch_size
    )
    if class_index is None:
        # The untouched image is the last insertion step and the first deletion step.
        class_index = int(np.argmax(probs[-1] if insertion else probs[0]))
    if not 0 <= class_index < probs.shape[1]:
        raise ValueError(f"class_index {class_index} out of range for {probs.shape[1]} classes")
    return probs[:, class_index]


def deletion_curve(
    predict_fn: PredictFn,
    image: np.ndarray,
    saliency: np.ndarray,
    class_index: int | None = None,
    *,
    steps: int = 50,
    baseline: str | float = "blur",
    batch_size: int = 64,
) -> np.ndarray:
    """Class probability as the most salient pixels are replaced by the baseline.

    Point ``i`` (``0..steps``) removes the top ``i / steps`` fraction of pixels, so
    point 0 is the original image and point ``steps`` is the baseline. All
    ``steps + 1`` images are predicted in batches of ``batch_size``.

    Args:
        predict_fn: ``(B, H, W, 3) float32 0..255 -> (B, K)`` probabilities.
        image: ``H×W[×1|×3]`` image in ``0..255`` (``uint8`` or float).
        saliency: 2-D map, any size (resized bilinearly to the image); higher = more important.
        class_index: Class whose probability is tracked; None: the original's top class.
        steps: Number of removal steps.
        baseline: ``"blur"``, ``"mean"``, ``"zero"`` or a constant (see :func:`make_baseline`).
            RISE used ``"zero"`` for deletion.
        batch_size: Images per ``predict_fn`` call.

    Returns:
        ``float64`` array of ``steps + 1`` probabilities.

    Raises:
        ValueError: Bad arguments or a ``predict_fn`` output of the wrong shape.
    """
    return _curve(predict_fn, image, saliency, class_index, steps=steps, baseline=baseline, batch_size=batch_size)


def insertion_curve(
    predict_fn: PredictFn,
    image: np.ndarray,
    saliency: np.ndarray,
    class_index: int | None = None,
    **options: Any,
) -> np.ndarray:
    """Class probability as the most salient pixels are put back onto the baseline.

    Point 0 is the baseline (a blurred image by default, as in RISE) and point
    ``steps`` the original image. Arguments and keyword options (``steps``, ``baseline``,
    ``batch_size``) as for :func:`deletion_curve`.

    Returns:
        ``float64`` array of ``steps + 1`` probabilities.
    """
    return _curve(predict_fn, image, saliency, class_index, insertion=True, **options)


def curve_auc(curve: np.ndarray) -> float:
    """Trapezoid area under a curve sampled evenly on ``x ∈ [0, 1]``.

    Example:
        >>> curve_auc(np.array([1.0, 0.0]))
        0.5
    """
    values = np.asarray(curve, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError("a curve needs at least two points")
    return float(np.sum(values[1:] + values[:-1]) / (2.0 * (values.size - 1)))


def deletion_auc(
    predict_fn: PredictFn,
    image: np.ndarray,
    saliency: np.ndarray,
    class_index: int | None = None,
    **kwargs: Any,
) -> float:
    """Area under :func:`deletion_curve` in ``[0, 1]``; lower means a more faithful map."""
    return curve_auc(deletion_curve(predict_fn, image, saliency, class_index, **kwargs))


def insertion_auc(
    predict_fn: PredictFn,
    image: np.ndarray,
    saliency: np.ndarray,
    class_index: int | None = None,
    **kwargs: Any,
) -> float:
    """Area under :func:`insertion_curve` in ``[0, 1]``; higher means a more faithful map."""
    return curve_auc(insertion_curve(predict_fn, image, saliency, class_index, **kwargs))


def summarize(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, standard deviation (population) and count of each numeric metric over images.

    Non-numeric values (image ids, paths) are skipped, booleans count as 0/1, and
    None or NaN values are left out of that metric's count.

    Returns:
        ``{metric: {"mean": ..., "std": ..., "n": ...}}``; mean and std are None
        when a metric has no values, so the result is strict JSON.

    Example:
        >>> summarize([{"id": "a", "deletion_auc": 0.2}, {"id": "b", "deletion_auc": 0.4}])
        {'deletion_auc': {'mean': 0.3, 'std': 0.1, 'n': 2}}
    """
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, value in row.items():
            if isinstance(value, (bool, np.bool_, int, float, np.number)):
                number = float(value)
                values.setdefault(name, [])
                if math.isfinite(number):
                    values[name].append(number)
    summary: dict[str, dict[str, float | int | None]] = {}
    for name, numbers in values.items():
        if numbers:
            array = np.asarray(numbers)
            summary[name] = {
                "mean": round(float(array.mean()), 12),
                "std": round(float(array.std()), 12),
                "n": int(array.size),
            }
        else:
            summary[name] = {"mean": None, "std": None, "n": 0}
    return summary
