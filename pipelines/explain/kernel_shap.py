"""Kernel SHAP over superpixels: Shapley values of image regions, batched and seeded.

Kernel SHAP (Lundberg & Lee, 2017) explains a prediction ``f(x)`` by the Shapley values
``φ_1..φ_S`` of the players "superpixel ``i`` is shown": the unique additive attribution with
``Σ φ_i = f(x) − f(∅)`` (efficiency: the values add up to the change from the image with every
region hidden to the image itself) that also satisfies symmetry, dummy and linearity. It finds
them as the weighted least-squares fit of ``f(z) ≈ f(∅) + φ·z`` over coalitions ``z`` under the
Shapley kernel ``π(z) = (S − 1) / (C(S, |z|) · |z| · (S − |z|))``, with efficiency as an exact
constraint.

How it is computed here:

* **Exact for few regions**: when all ``2^S`` coalitions fit in ``num_samples``, every one is
  predicted and weighted by ``π``; the result is the exact Shapley value.
* **Sampled otherwise**: coalition sizes are drawn with probability proportional to
  ``(S − 1) / (|z| (S − |z|))`` and members uniformly at random given the size (so the fit is
  unweighted), in **complementary pairs** (each ``z`` with ``1 − z``; Covert & Lee 2021: lower
  variance at the same cost). ``f(x)`` and ``f(∅)`` are always predicted and enter as the
  constraint, not as samples.
* **Shared with LIME** (:mod:`medlens.pipelines.explain.superpixels`): the same superpixels, the same
  hiding (a blurred copy of the image by default: ``f(∅)`` is the blurred image) and the same
  batched prediction, ``batch_size`` perturbed images at a time, every draw from
  ``numpy.random.default_rng(seed)``: the same seed gives bit-identical values.

The ``shap`` package's model-agnostic ``KernelExplainer`` does the same estimation (it also
enumerates small and large coalition sizes first); ``benchmarks/explain.py`` runs it on the same
superpixels and samples as a peer.

Example:
    >>> import numpy as np
    >>> def predict_fn(batch):  # the probability is the brightness of the top-left quarter
    ...     p = batch[:, :16, :16].mean(axis=(1, 2, 3)) / 255.0
    ...     return np.stack([1.0 - p, p], axis=1)
    >>> image = np.zeros((32, 32, 3), np.uint8); image[:16, :16] = 255
    >>> explainer = KernelShapExplainer(predict_fn, n_segments=4, num_samples=64, hide_color=0.0)
    >>> result = explainer.explain(image, class_index=1)
    >>> round(float(result.weights.sum() + result.intercept), 6)  # efficiency: Σφ + f(∅) = f(x)
    1.0
"""

from __future__ import annotations

from math import comb

import numpy as np

from medlens.pipelines.explain.superpixels import SuperpixelExplainer

__all__ = ["KernelShapExplainer", "shapley_kernel"]


def shapley_kernel(count: int, sizes: np.ndarray) -> np.ndarray:
    """The Shapley kernel weight of coalitions of the given sizes among ``count`` players.

    Infinite for the empty and the full coalition (they are constraints, not samples).

    Example:
        >>> shapley_kernel(4, np.array([1, 2, 3])).round(4).tolist()
        [0.25, 0.125, 0.25]
    """
    sizes = np.asarray(sizes, np.int64)
    weights = np.full(sizes.shape, np.inf)
    inside = (sizes > 0) & (sizes < count)
    s = sizes[inside]
    weights[inside] = (count - 1) / (np.array([comb(count, int(k)) for k in s], np.float64) * s * (count - s))
    return weights


class KernelShapExplainer(SuperpixelExplainer):
    """Shapley values of superpixels for one image's prediction.

    Args:
        predict_fn: ``(B, H, W, 3) float32 RGB 0..255 -> (B, K)`` probabilities; the
            caller wraps the model's preprocessing and prediction.
        **settings: The settings shared with LIME (see
            :class:`~medlens.pipelines.explain.superpixels.SuperpixelExplainer`): ``segmentation``,
            ``n_segments``, ``compactness``, ``num_samples`` (the image and the all-hidden
            image included), ``batch_size``, ``hide_color``, ``seed``, ``segmentation_kwargs``.

    Raises:
        ValueError: Invalid settings.
    """

    method = "kernel_shap"

    def _draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        ends = np.array([np.ones(count, bool), np.zeros(count, bool)])
        if count <= 20 and 2**count <= self.num_samples:
            codes = np.arange(1, 2**count - 1, dtype=np.int64)
            every = ((codes[:, None] >> np.arange(count)) & 1).astype(bool)
            return np.concatenate([ends, every])
        if count == 1:
            return ends
        pairs, odd = divmod(self.num_samples - 2, 2)
        sizes = np.arange(1, count)
        probability = (count - 1) / (sizes * (count - sizes))
        drawn = rng.choice(sizes, size=pairs + odd, p=probability / probability.sum())
        # A uniform subset of each drawn size: the members are the `size` smallest of random keys.
        ranks = np.argsort(np.argsort(rng.random((len(drawn), count)), axis=1), axis=1)
        kept = ranks < drawn[:, None]
        return np.concatenate([ends, kept[:pairs], ~kept[:pairs], kept[pairs:]])

    def _fit(self, samples: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float, float]:
        full, empty = float(target[0]), float(target[1])  # _draw puts the image and the all-hidden image first
        count = samples.shape[1]
        if count == 1:
            return np.array([full - empty]), empty, 1.0
        z, y = samples[2:].astype(np.float64), target[2:].astype(np.float64) - empty
        exact = count <= 20 and len(samples) == 2**count  # every coalition (see _draw), else a sample
        weights = shapley_kernel(count, z.sum(axis=1).astype(np.int64)) if exact else np.ones(len(z))
        # Efficiency as a constraint: φ_last = (f(x) − f(∅)) − Σ other φ, substituted into the fit.
        total = full - empty
        design = z[:, :-1] - z[:, -1:]
        response = y - z[:, -1] * total
        root = np.sqrt(weights)[:, None]
        head, *_ = np.linalg.lstsq(design * root, response * root[:, 0], rcond=None)
        values = np.append(head, total - head.sum())
        fitted = z @ values
        mean = np.average(y, weights=weights)
        spread = float(np.sum(weights * (y - mean) ** 2))
        score = 1.0 - float(np.sum(weights * (y - fitted) ** 2)) / spread if spread > 0 else 1.0
        return values, empty, score
