"""Seg-Grad-CAM (Vinogradova et al. 2020): Grad-CAM for a segmentation output.

A classifier's Grad-CAM explains one class score; a segmentation model has a score per
pixel. Seg-Grad-CAM explains the *sum* of one class's pixel logits over a region: the
predicted mask (default), or a box or mask the user gives ("why did the model call this
region vessel?"). The channel weights are the spatial mean of that score's gradient at a
target layer, exactly as in Grad-CAM, so the map says which features at that depth drove
the region's prediction.

The target layer defaults to the U-Net's bottleneck (``bottleneck_relu2`` for a plain
U-Net, the encoder's output for a VGG16/ResNet50 encoder), the layer Seg-Grad-CAM was
introduced on; any 4-D layer can be named instead (``dec1_relu2`` gives finer maps).
Scores are the pre-sigmoid/softmax logits of the 1×1 output convolution. The gradient
step is the shared backend-specific one (:mod:`medlens.pipelines.explain.gradients`).

Example:
    >>> import numpy as np
    >>> from medlens.models.unet import build_unet
    >>> model = build_unet((None, None, 1), depth=2, filters=4)
    >>> explainer = SegGradCAM(model)
    >>> result = explainer(np.random.default_rng(0).random((2, 32, 32, 1), np.float32))
    >>> result.maps.shape, explainer.layer
    ((2, 32, 32), 'bottleneck_relu2')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np

from medlens.pipelines.errors import ConfigError
from medlens.pipelines.explain.gradcam import GradCAM, _upsample_and_normalise
from medlens.pipelines.explain.gradients import region_score_gradients, region_targets

__all__ = ["SegCamResult", "SegGradCAM", "box_region"]


@dataclass
class SegCamResult:
    """Seg-Grad-CAM maps for a batch.

    Attributes:
        maps: N×H×W ``float32`` in ``[0, 1]`` at the input size.
        raw: N×h×w maps at the target layer, after ReLU, before normalisation.
        regions: N×H×W ``float32`` regions whose score was explained.
        probabilities: The model's output, N×H×W×K.
        layer: Target layer name.
        empty: ``(N,)`` True where the map is all zero (or the region was empty).
    """

    maps: np.ndarray
    raw: np.ndarray
    regions: np.ndarray
    probabilities: np.ndarray
    layer: str
    empty: np.ndarray


def box_region(shape: Sequence[int], top: int, left: int, bottom: int, right: int) -> np.ndarray:
    """An ``H×W`` region that is 1 inside the box ``[top:bottom, left:right]``.

    Example:
        >>> float(box_region((4, 4), 1, 1, 3, 3).sum())
        4.0
    """
    region = np.zeros(tuple(shape[:2]), np.float32)
    region[max(0, top):bottom, max(0, left):right] = 1.0
    return region


def _default_layer(model: keras.Model) -> str:
    names = [layer.name for layer in model.layers]
    if "encoder" in names:
        return "encoder"
    bottleneck = [name for name in names if name.startswith("bottleneck_relu")]
    if bottleneck:
        return bottleneck[-1]
    raise ConfigError(f"model {model.name!r} has no U-Net bottleneck; name the Seg-Grad-CAM layer")


class SegGradCAM(GradCAM):
    """Seg-Grad-CAM explainer: construct once with a segmentation model, call with batches.

    Args:
        model: A U-Net (or any model with one N×H×W×K output ending in a 1×1 convolution).
        target_layer: Layer name; default the bottleneck (see the module docstring).
        class_index: Output channel explained (0 for one sigmoid channel).
        threshold: Probability at which a pixel joins the default region (the prediction).
        batch_size: Images per gradient step.
    """

    def __init__(self, model: keras.Model, target_layer: str | None = None, *, class_index: int = 0,
                 threshold: float = 0.5, batch_size: int = 8):
        super().__init__(model, target_layer or _default_layer(model), batch_size=batch_size)
        units = model.outputs[0].shape[-1]
        if not 0 <= class_index < max(1, units):
            raise ValueError(f"class_index must be in 0..{units - 1}, got {class_index}")
        self.class_index = class_index
        self.threshold = threshold

    def _check_images(self, images: np.ndarray) -> np.ndarray:
        pixels = np.asarray(images, dtype=np.float32)
        if pixels.ndim != 4 or pixels.shape[0] == 0:
            raise ValueError(f"images must be a non-empty batch N×H×W×C, got shape {pixels.shape}")
        return pixels

    def __call__(self, images: np.ndarray, regions: np.ndarray | None = None) -> SegCamResult:  # type: ignore[override]
        """Explain each image's score summed over its region.

        Args:
            images: N×H×W×C model-ready images (sides multiples of the network's divisor).
            regions: N×H×W (or H×W for all) weights, 1 inside the region; None: the
                predicted mask of ``class_index`` (probability ≥ ``threshold``).

        Returns:
            A :class:`SegCamResult`.
        """
        pixels = self._check_images(images)
        grad_model = self.gradient_model(tuple(pixels.shape[1:]))
        units = grad_model.outputs[1].shape[-1]  # binary outputs are expanded to 2 score channels
        raw_parts, output_parts, region_parts = [], [], []
        for start in range(0, pixels.shape[0], self.batch_size):
            chunk = pixels[start:start + self.batch_size]
            if regions is None:
                output = np.asarray(self.model.predict_on_batch(chunk), np.float32)
                region = (output[..., self.class_index] >= self.threshold).astype(np.float32)
            else:
                region = np.asarray(regions, np.float32)
                if region.shape[-2:] != chunk.shape[1:3]:
                    raise ValueError(f"regions are {region.shape[-2:]}, the images {chunk.shape[1:3]}")
                region = np.broadcast_to(region, (pixels.shape[0], *pixels.shape[1:3]))[start:start + len(chunk)]
            weights = region_targets(region, chunk.shape[:3], units, self.model.outputs[0].shape[-1], self.class_index)
            activations, gradients, output = region_score_gradients(grad_model, chunk, weights)
            cam = np.einsum("nhwc,nc->nhw", activations, self._channel_weights(activations, gradients))
            raw_parts.append(np.maximum(cam, 0.0).astype(np.float32))
            output_parts.append(output)
            region_parts.append(np.array(region, np.float32))
        raw = np.concatenate(raw_parts)
        maps, empty = _upsample_and_normalise(raw, pixels.shape[1:3])
        regions_all = np.concatenate(region_parts)
        empty |= regions_all.reshape(len(regions_all), -1).sum(axis=1) == 0
        maps[empty] = 0.0
        return SegCamResult(maps, raw, regions_all, np.concatenate(output_parts), self.layer, empty)
