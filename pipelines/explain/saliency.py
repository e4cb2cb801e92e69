"""Input saliency: vanilla gradient, SmoothGrad, Integrated Gradients and occlusion, batched.

All three differentiate a class score (the output layer's logit where the model has one,
as Grad-CAM does) with respect to the model-ready input pixels, through the one gradient
helper of :mod:`medlens.pipelines.explain.gradients`, so they run on TensorFlow, JAX and PyTorch.
They share Grad-CAM's call signature (``method(images, class_index=...)``) and result
fields, so the explainer, multi-label findings and ordinal ``grade ≥ k`` targets use them
unchanged.

* **Vanilla gradient** (Simonyan et al. 2014): ``|∂s/∂x|``, maximum over channels.
* **SmoothGrad** (Smilkov et al. 2017): the vanilla map averaged over ``samples`` copies of
  the image with Gaussian noise of ``noise`` × the image's value range; all copies of a batch
  go through one gradient call.
* **Integrated Gradients** (Sundararajan et al. 2017): ``(x − x') · mean_α ∂s/∂x(x' + α(x − x'))``
  over ``steps`` points of a midpoint Riemann sum, from a baseline ``x'``: ``black`` (the
  preprocessed black image), ``blur`` (the image blurred, σ = 5 % of its side: no edges, same
  brightness) or an array. The map is the positive part of the attributions summed over
  channels. ``completeness`` reports ``|Σ attributions − (s(x) − s(x'))| / |s(x) − s(x')|``:
  0 for an exact integral; it shrinks as ``steps`` grows.

* **Occlusion sensitivity** (Zeiler & Fergus 2014): a window slides over the image (side
  ``window`` × the image's longer side, stride half the window, the last window flush with the
  edge); each position is replaced by the blurred image (``fill="blur"``, as IG's baseline) or
  black, and the drop in the class probability is spread over the pixels the window covered
  (mean over the windows covering each pixel). No gradients: it needs only forward passes, all
  positions of all images of a batch in ``batch_size`` chunks — about ``(2/window − 1)²``
  passes per image (225 at the default ⅛).

Maps are ``[0, 1]`` at the input size, each normalised by its own maximum (``empty`` where it
is all zero).

**Regions of a segmentation output.** Every method also explains a segmentation model: call
it with ``regions`` (N×H×W, 1 inside the region, e.g. the predicted mask) instead of a class,
and the score is the class logit summed over the region (as Seg-Grad-CAM's,
:mod:`medlens.pipelines.explain.seg_gradcam`); occlusion then measures the drop of the region's mean
probability. ``class_index`` names the output channel (default 0, the one sigmoid channel).

Example:
    >>> import numpy as np
    >>> from medlens.models.classifier import build_classifier
    >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
    >>> result = IntegratedGradients(model, steps=8)(np.random.rand(2, 32, 32, 3).astype("float32"), class_index=1)
    >>> result.maps.shape, result.extras["completeness"].shape
    ((2, 32, 32), (2,))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import keras
import numpy as np

from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.explain.gradcam import CamResult, build_gradient_model
from medlens.pipelines.explain.gradients import (
    PREDICTED,
    class_score_gradients,
    region_score_gradients,
    region_targets,
)

__all__ = ["IntegratedGradients", "Occlusion", "SaliencyResult", "SmoothGrad", "VanillaGradient", "as_probabilities"]

_INPUT_LAYER = "saliency_input"


@dataclass
class SaliencyResult(CamResult):
    """Maps of one batch (the fields of :class:`~medlens.pipelines.explain.gradcam.CamResult`), plus per-image extras."""

    extras: dict[str, np.ndarray] = field(default_factory=dict)


def as_probabilities(output: np.ndarray) -> np.ndarray:
    """A model's output as per-class probabilities on the last axis: a classifier's N×K, a
    segmentation model's N×H×W×K (one sigmoid channel becomes ``[1 − p, p]`` either way).

    Example:
        >>> as_probabilities(np.full((1, 2, 2, 1), 0.25)).shape
        (1, 2, 2, 2)
    """
    output = np.asarray(output)
    if output.ndim > 2:  # a dense (segmentation) output: one sigmoid channel becomes [1 - p, p]
        output = output.astype(np.float64)
        return np.concatenate([1.0 - output, output], axis=-1) if output.shape[-1] == 1 else output
    return to_probabilities(output) if output.ndim == 1 or output.shape[-1] == 1 else output.astype(np.float64)


def _pick(values: np.ndarray, targets: np.ndarray, *, mean: bool = False) -> np.ndarray:
    """Each image's target score: ``values[i, class_i]``, or for region weights ``Σ values · weights``
    (``mean``: divided by the weights' sum, the region's mean)."""
    if targets.ndim == 1:
        return values[np.arange(len(values)), targets]
    weights = targets.reshape(len(targets), -1).astype(np.float64)
    total = (np.asarray(values, np.float64).reshape(len(values), -1) * weights).sum(axis=1)
    return total / np.maximum(weights.sum(axis=1), 1e-12) if mean else total


def _baselines(pixels: np.ndarray, baseline: str | np.ndarray,
               preprocess: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """Model-ready ``black`` or ``blur`` images (or a given array) of a batch's shape."""
    if isinstance(baseline, np.ndarray):
        return np.broadcast_to(np.asarray(baseline, np.float32), pixels.shape).copy()
    if baseline == "blur":
        # A blur commutes with the backbones' affine preprocessing, so blurring model-ready pixels is exact.
        sigma = 0.05 * max(pixels.shape[1:3])
        return np.stack([cv2.GaussianBlur(image, (0, 0), sigma).reshape(image.shape) for image in pixels])
    black = np.zeros((1, *pixels.shape[1:]), np.float32)
    black = preprocess(black) if preprocess is not None else black
    return np.broadcast_to(np.asarray(black, np.float32), pixels.shape).copy()


def _explained(targets: np.ndarray) -> np.ndarray:
    """The result's per-image class: the indices, or for region weights the channel they select."""
    if targets.ndim == 1:
        return targets
    return targets.reshape(len(targets), -1, targets.shape[-1]).sum(axis=1).argmax(axis=1).astype(np.int32)


def _normalise(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    empty = ~(np.isfinite(peaks) & (peaks > 0))
    maps = np.where(empty[:, None, None], 0.0, raw / np.where(empty, 1.0, peaks)[:, None, None])
    return np.clip(maps, 0.0, 1.0).astype(np.float32), empty


class VanillaGradient:
    """``|∂ class score / ∂ input|``, maximum over channels.

    Args:
        model: A classifier (one input, one output).
        target_layer: Ignored (input saliency has no layer); accepted for Grad-CAM's signature.
        batch_size: Images per gradient call (larger batches are split).
    """

    name = "gradient"

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, batch_size: int = 32):
        self.model = model
        self.batch_size = int(batch_size)
        self.layer = "input"
        self._gradient_models: dict[tuple[int, ...], keras.Model] = {}

    def _gradient_model(self, shape: tuple[int, ...]) -> keras.Model:
        if shape not in self._gradient_models:
            wrapper = keras.Sequential([keras.Input(shape), keras.layers.Identity(name=_INPUT_LAYER), self.model],
                                       name=f"{self.model.name}_saliency")
            self._gradient_models[shape] = build_gradient_model(wrapper, _INPUT_LAYER, shape, inline_all=True)
        return self._gradient_models[shape]

    def _indices(self, class_index: Any, count: int) -> np.ndarray:
        if class_index is None:
            return np.full(count, PREDICTED, np.int32)
        indices = np.asarray(class_index, np.int32).reshape(-1)
        return np.full(count, int(indices[0]), np.int32) if indices.size == 1 else indices

    def gradients(self, images: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(∂s/∂x, model output)`` for a batch, ``batch_size`` images per call.

        ``indices``: one class per image, or region weights of the scores' shape (N×H×W×K)."""
        grad_model = self._gradient_model(tuple(images.shape[1:]))
        score_gradients = region_score_gradients if indices.ndim > 1 else class_score_gradients
        grads, outputs = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = slice(start, start + self.batch_size)
            _, gradient, output = score_gradients(grad_model, images[chunk], indices[chunk])
            grads.append(gradient)
            outputs.append(output)
        return np.concatenate(grads), np.concatenate(outputs)

    def scores(self, images: np.ndarray) -> np.ndarray:
        """``N×K`` class scores (the logits the gradients are of)."""
        grad_model = self._gradient_model(tuple(images.shape[1:]))
        parts = [np.asarray(grad_model.predict_on_batch([images[i:i + self.batch_size],
                                                         np.zeros_like(images[i:i + self.batch_size])])[1])
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts).astype(np.float64)

    def _resolve(self, images: Any, class_index: Any, *, probabilities: bool = True, regions: Any = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Pixels, targets (class indices, or region weights) and (when asked, or needed for the
        predicted class) the probabilities."""
        pixels = np.asarray(images, np.float32)
        if pixels.ndim != 4:
            raise ValueError(f"images must be N×H×W×C, got shape {pixels.shape}")
        if regions is not None:
            units = self.model.outputs[0].shape[-1]  # the scores have 2 channels for one sigmoid ([-z, z])
            weights = region_targets(regions, pixels.shape[:3], 2 if units == 1 else units, units,
                                     0 if class_index is None else int(class_index))
            output = as_probabilities(self.model.predict_on_batch(pixels)) if probabilities else None
            return pixels, weights, output
        indices = self._indices(class_index, len(pixels))
        output = None
        if probabilities or (indices < 0).any():  # one forward pass
            output = as_probabilities(self.model.predict_on_batch(pixels))
        if (indices < 0).any():  # the predicted class
            indices = np.where(indices < 0, output.argmax(axis=1), indices).astype(np.int32)
        return pixels, indices, output

    def __call__(self, images: Any, class_index: int | Sequence[int] | np.ndarray | None = None, *,
                 regions: np.ndarray | None = None) -> SaliencyResult:
        """Maps of a batch for ``class_index`` (default: the predicted class), or for ``regions``
        of a segmentation output (see the module docstring)."""
        pixels, indices, probabilities = self._resolve(images, class_index, probabilities=False, regions=regions)
        gradients, output = self.gradients(pixels, indices)
        if probabilities is None:  # the gradient step's own output: no second forward pass
            probabilities = as_probabilities(output)
        raw = np.abs(gradients).max(axis=-1)
        maps, empty = _normalise(raw)
        return SaliencyResult(maps, raw, _explained(indices), probabilities, self.layer, empty)


class SmoothGrad(VanillaGradient):
    """The vanilla map averaged over ``samples`` noisy copies (σ = ``noise`` × value range)."""

    name = "smoothgrad"

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, samples: int = 16,
                 noise: float = 0.15, seed: int = 0, batch_size: int = 32):
        super().__init__(model, batch_size=batch_size)
        if samples < 1 or noise < 0:
            raise ValueError(f"SmoothGrad needs samples >= 1 and noise >= 0, got {samples}, {noise}")
        self.samples, self.noise, self.seed = int(samples), float(noise), int(seed)

    def __call__(self, images: Any, class_index: int | Sequence[int] | np.ndarray | None = None, *,
                 regions: np.ndarray | None = None) -> SaliencyResult:
        pixels, indices, probabilities = self._resolve(images, class_index, regions=regions)
        rng = np.random.default_rng(self.seed)
        spread = (pixels.reshape(len(pixels), -1).max(1) - pixels.reshape(len(pixels), -1).min(1))
        noisy = np.repeat(pixels, self.samples, axis=0)
        noisy += rng.normal(size=noisy.shape).astype(np.float32) * (self.noise * np.repeat(spread, self.samples)
                                                                    )[:, None, None, None].astype(np.float32)
        gradients, _ = self.gradients(noisy, np.repeat(indices, self.samples, axis=0))
        raw = np.abs(gradients).max(axis=-1).reshape(len(pixels), self.samples, *pixels.shape[1:3]).mean(axis=1)
        maps, empty = _normalise(raw)
        return SaliencyResult(maps, raw, _explained(indices), probabilities, self.layer, empty)


class IntegratedGradients(VanillaGradient):
    """Integrated Gradients from a baseline, with the completeness error of each image.

    Args:
        steps: Points of the (midpoint) Riemann sum along the straight path.
        baseline: ``"black"``, ``"blur"`` or an array of the images' shape (model-ready pixels).
        preprocess: Maps ``0..255`` RGB to model-ready pixels (for the black baseline).
    """

    name = "ig"

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, steps: int = 32,
                 baseline: str | np.ndarray = "black", preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                 batch_size: int = 32):
        super().__init__(model, batch_size=batch_size)
        if steps < 1:
            raise ValueError(f"Integrated Gradients needs steps >= 1, got {steps}")
        if isinstance(baseline, str) and baseline not in ("black", "blur"):
            raise ValueError(f"baseline must be black, blur or an array; got {baseline!r}")
        self.steps, self.baseline, self.preprocess = int(steps), baseline, preprocess

    def baselines(self, pixels: np.ndarray) -> np.ndarray:
        """The baseline of each image, model-ready."""
        return _baselines(pixels, self.baseline, self.preprocess)

    def __call__(self, images: Any, class_index: int | Sequence[int] | np.ndarray | None = None, *,
                 regions: np.ndarray | None = None) -> SaliencyResult:
        pixels, indices, probabilities = self._resolve(images, class_index, regions=regions)
        base = self.baselines(pixels)
        alphas = (np.arange(self.steps, dtype=np.float32) + 0.5) / self.steps
        path = base[:, None] + alphas[None, :, None, None, None] * (pixels - base)[:, None]
        gradients, _ = self.gradients(path.reshape(-1, *pixels.shape[1:]), np.repeat(indices, self.steps, axis=0))
        mean_gradient = gradients.reshape(len(pixels), self.steps, *pixels.shape[1:]).mean(axis=1)
        attributions = (pixels - base) * mean_gradient
        difference = _pick(self.scores(pixels), indices) - _pick(self.scores(base), indices)
        total = attributions.reshape(len(pixels), -1).sum(axis=1)
        completeness = np.abs(total - difference) / np.maximum(np.abs(difference), 1e-6)
        raw = np.clip(attributions.sum(axis=-1), 0.0, None)
        maps, empty = _normalise(raw)
        return SaliencyResult(maps, raw, _explained(indices), probabilities, self.layer, empty,
                              {"completeness": completeness.astype(np.float64),
                               "score_difference": difference.astype(np.float64)})


def window_starts(side: int, window: int, stride: int) -> list[int]:
    """Start offsets of a window sliding over ``side`` pixels; the last one is flush with the edge.

    Example:
        >>> window_starts(10, 4, 3)
        [0, 3, 6]
        >>> window_starts(11, 4, 3)
        [0, 3, 6, 7]
    """
    starts = list(range(0, max(1, side - window + 1), stride))
    if starts[-1] + window < side:
        starts.append(side - window)
    return starts


class Occlusion(VanillaGradient):
    """Occlusion sensitivity: the class probability's drop when a window of the image is hidden.

    Args:
        model: A classifier (one input, one output).
        target_layer: Ignored (accepted for Grad-CAM's signature).
        window: Window side as a fraction of the image's longer side (0 < window ≤ 1).
        stride: Step as a fraction of the window (0 < stride ≤ 1; ½ by default).
        fill: What a hidden window shows: ``"blur"`` (the blurred image) or ``"black"``.
        preprocess: Maps ``0..255`` RGB to model-ready pixels (for the black fill).
        batch_size: Occluded images per forward pass.

    The raw map is the mean probability drop (negative where hiding raises the probability);
    ``extras["max_drop"]`` is the largest drop of a single window per image.
    """

    name = "occlusion"

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, window: float = 0.125,
                 stride: float = 0.5, fill: str = "blur", preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
                 batch_size: int = 64):
        super().__init__(model, batch_size=batch_size)
        if not (0 < window <= 1 and 0 < stride <= 1):
            raise ValueError(f"occlusion needs 0 < window <= 1 and 0 < stride <= 1, got {window}, {stride}")
        if fill not in ("blur", "black"):
            raise ValueError(f"occlusion fill must be blur or black, got {fill!r}")
        self.window, self.stride, self.fill, self.preprocess = float(window), float(stride), fill, preprocess

    def windows(self, height: int, width: int) -> list[tuple[int, int, int]]:
        """``(row, col, side)`` of every window position on an image of this size."""
        side = max(1, min(height, width, round(self.window * max(height, width))))
        step = max(1, round(self.stride * side))
        return [(r, c, side) for r in window_starts(height, side, step) for c in window_starts(width, side, step)]

    def __call__(self, images: Any, class_index: int | Sequence[int] | np.ndarray | None = None, *,
                 regions: np.ndarray | None = None) -> SaliencyResult:
        pixels, indices, probabilities = self._resolve(images, class_index, regions=regions)
        count, height, width = pixels.shape[:3]
        fill = _baselines(pixels, self.fill, self.preprocess)
        positions = self.windows(height, width)
        hidden = np.zeros((len(positions), height, width), bool)
        for k, (r, c, side) in enumerate(positions):
            hidden[k, r:r + side, c:c + side] = True
        coverage = hidden.sum(axis=0).astype(np.float64)
        pairs = [(n, k) for n in range(count) for k in range(len(positions))]
        drops = np.zeros((count, len(positions)))
        original = _pick(probabilities, indices, mean=True)
        for start in range(0, len(pairs), self.batch_size):
            chunk = np.array(pairs[start:start + self.batch_size])
            occluded = np.where(hidden[chunk[:, 1], :, :, None], fill[chunk[:, 0]], pixels[chunk[:, 0]])
            scores = as_probabilities(self.model.predict_on_batch(occluded))
            drops[chunk[:, 0], chunk[:, 1]] = original[chunk[:, 0]] - _pick(scores, indices[chunk[:, 0]], mean=True)
        raw = np.einsum("nk,khw->nhw", drops, hidden.astype(np.float64)) / coverage
        maps, empty = _normalise(np.clip(raw, 0.0, None))
        return SaliencyResult(maps, raw.astype(np.float32), _explained(indices), probabilities, self.layer, empty,
                              {"max_drop": drops.max(axis=1)})
