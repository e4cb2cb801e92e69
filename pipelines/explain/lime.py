"""LIME for images: which superpixels push a classifier towards a class.

LIME (Ribeiro et al., 2016) splits the image into superpixels, predicts many
copies of the image with random subsets of superpixels hidden, and fits a
weighted linear model from "which superpixels were kept" to the class
probability. The linear weights are the explanation.

This is a reimplementation rather than a wrapper of the ``lime`` package, for
three reasons:

* **Reproducible**: every random draw comes from ``numpy.random.default_rng(seed)``,
  so the same seed gives bit-identical weights and maps. (Old ``lime`` releases
  sampled from the global NumPy state, lime#67 and lime#477; in ``lime`` 0.2.0.1
  ``explain_instance(random_seed=...)`` only seeds the segmentation, and sampling is
  repeatable only when ``LimeImageExplainer(random_state=...)`` is set as well.)
* **Fast**: perturbed images are built a batch at a time with one vectorised
  ``np.where`` and predicted in large batches, so the model's forward passes are
  the cost, and memory stays bounded by ``batch_size`` images.
* **Fitting segmentation**: SLIC by default (quickshift, ``lime``'s default, is
  slow and over-segments smooth medical images); grey images are segmented on
  their single channel.
* **Hiding that hides**: a hidden superpixel shows a blurred copy of the image by default,
  not its mean colour (see :class:`~medlens.pipelines.explain.superpixels.SuperpixelExplainer`).

The segmentation, hiding and batched prediction are shared with Kernel SHAP
(:mod:`medlens.pipelines.explain.superpixels`); LIME draws each superpixel kept with probability 1/2
and fits a ridge regression weighted by an exponential kernel on the cosine distance to the
original image.

The classifier enters only through ``predict_fn``: a callable from a
``(B, H, W, 3)`` ``float32`` batch of RGB images in ``0..255`` to ``(B, K)`` class
probabilities (``(B,)`` or ``(B, 1)`` sigmoid outputs are accepted for binary
models). The caller wraps the backbone's ``preprocess_input`` and the model call,
e.g.::

    def predict_fn(batch):
        return model.predict(preprocess(batch), verbose=0)

so this module never imports Keras.

Example:
    >>> import numpy as np
    >>> def predict_fn(batch):
    ...     p = batch[:, :16, :16].mean(axis=(1, 2, 3)) / 255.0
    ...     return np.stack([1.0 - p, p], axis=1)
    >>> image = np.zeros((32, 32, 3), np.uint8); image[:16, :16] = 255
    >>> explainer = LimeExplainer(predict_fn, n_segments=16, num_samples=200, hide_color=0.0)
    >>> result = explainer.explain(image, class_index=1)
    >>> result.map.shape, bool(result.map.max() == 1.0)
    ((32, 32), True)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.linear_model import Ridge

from medlens.pipelines.explain.faithfulness import PredictFn
from medlens.pipelines.explain.superpixels import (
    HIDE_COLORS,
    SEGMENTATIONS,
    SuperpixelExplainer,
    SuperpixelResult,
    region_centre,
    segment_image,
)

__all__ = ["HIDE_COLORS", "LimeExplainer", "LimeResult", "SEGMENTATIONS", "region_centre", "segment_image"]

#: A LIME explanation (the result type every superpixel method returns).
LimeResult = SuperpixelResult


class LimeExplainer(SuperpixelExplainer):
    """Explain one image's prediction with LIME over superpixels.

    Args:
        predict_fn: ``(B, H, W, 3) float32 RGB 0..255 -> (B, K)`` probabilities; the
            caller wraps the model's preprocessing and prediction.
        kernel_width: Width of the exponential kernel on cosine distance (``lime``'s 0.25).
        **settings: The shared settings of
            :class:`~medlens.pipelines.explain.superpixels.SuperpixelExplainer` (``segmentation``,
            ``n_segments``, ``compactness``, ``num_samples`` — the original included, as in
            ``lime`` —, ``batch_size``, ``hide_color``, ``seed``, ``segmentation_kwargs``).

    Raises:
        ValueError: Invalid settings.

    Example:
        >>> explainer = LimeExplainer(lambda b: np.full((len(b), 2), 0.5), num_samples=20)
        >>> explainer.explain(np.zeros((16, 16), np.uint8)).weights.shape[0] >= 1
        True
    """

    method = "lime"

    def __init__(self, predict_fn: PredictFn, *, kernel_width: float = 0.25,
                 segmentation_kwargs: Mapping[str, Any] | None = None, **settings: Any) -> None:
        super().__init__(predict_fn, segmentation_kwargs=segmentation_kwargs, **settings)
        if not kernel_width > 0:
            raise ValueError(f"kernel_width must be positive, got {kernel_width}")
        self.kernel_width = float(kernel_width)

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        samples = rng.integers(0, 2, size=(self.num_samples, count), dtype=np.uint8).astype(bool)
        samples[0] = True  # the first sample is the original image, as in lime
        return samples

    def _fit(self, samples: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
        # Cosine distance to the all-ones original: 1 - sqrt(kept / S) for a binary vector
        # (an all-zero sample counts as distance 1, as in sklearn).
        distances = 1.0 - np.sqrt(samples.sum(axis=1) / samples.shape[1])
        sample_weight = np.sqrt(np.exp(-(distances**2) / self.kernel_width**2))
        design = samples.astype(np.float64)
        ridge = Ridge(alpha=1.0, fit_intercept=True)
        ridge.fit(design, target, sample_weight=sample_weight)
        score = float(ridge.score(design, target, sample_weight=sample_weight))
        return np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_), score
