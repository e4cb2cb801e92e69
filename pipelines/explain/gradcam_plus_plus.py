"""Grad-CAM's variants: Grad-CAM++, HiRes-CAM and Layer-CAM, on Grad-CAM's one gradient step.

Same interface and machinery as :class:`medlens.pipelines.explain.gradcam.GradCAM`; only the way the
activations ``A`` and the gradients ``g = dS/dA`` of the class score become a map differs:

* **HiRes-CAM** (Draelos & Carin 2020): ``Σ_k A_k ⊙ g_k``, the element-wise product instead of
  Grad-CAM's spatially averaged gradient, so the map is the exact contribution of each position
  when the head is linear after the pooled map; with global average pooling it equals Grad-CAM.
* **Layer-CAM** (Jiang et al. 2021): ``Σ_k A_k ⊙ ReLU(g_k)``: only positive gradients count,
  position by position; meant for shallower layers (``--layer``) where Grad-CAM blurs.
* **Grad-CAM++** (Chattopadhyay et al. 2018): pixel-weighted gradients as channel weights.

Grad-CAM++'s channel weights: With the class score taken as ``exp(S)`` of the logit
``S`` (the paper's closed form), the higher-order derivatives reduce to powers of
the first-order gradient ``g = dS/dA``::

    alpha_kij = g² / (2·g² + Σ_ab A_kab · g³)          (0 where g = 0)
    w_k       = Σ_ij alpha_kij · ReLU(g_kij)

Example:
    >>> import numpy as np
    >>> from medlens.models.classifier import build_classifier
    >>> model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none")
    >>> result = GradCAMPlusPlus(model)(np.ones((2, 32, 32, 3), np.float32))
    >>> result.maps.shape
    (2, 32, 32)
"""

from __future__ import annotations

import numpy as np

from medlens.pipelines.explain.gradcam import CamResult, GradCAM

__all__ = ["CamResult", "GradCAMPlusPlus", "HiResCAM", "LayerCAM"]


class GradCAMPlusPlus(GradCAM):
    """Grad-CAM++ explainer; arguments, call and result as :class:`GradCAM`.

    Example:
        >>> import numpy as np
        >>> from medlens.models.classifier import build_classifier
        >>> model = build_classifier("small_cnn", 3, (32, 32, 3), weights="none")
        >>> GradCAMPlusPlus(model)(np.ones((1, 32, 32, 3)), class_index=2).class_index.tolist()
        [2]
    """

    def _channel_weights(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        """N×c weights ``Σ_ij alpha_ij · ReLU(g_ij)`` with the exp-score closed-form alpha."""
        grads = gradients.astype(np.float64)
        squared = grads**2
        activation_sums = activations.astype(np.float64).sum(axis=(1, 2), keepdims=True)
        denominator = 2.0 * squared + activation_sums * squared * grads
        safe = np.where(denominator != 0.0, denominator, 1.0)
        alpha = np.where((grads != 0.0) & (denominator != 0.0), squared / safe, 0.0)
        return (alpha * np.maximum(grads, 0.0)).sum(axis=(1, 2)).astype(np.float32)


class HiResCAM(GradCAM):
    """HiRes-CAM: ``ReLU(Σ_k A_k ⊙ g_k)``; arguments, call and result as :class:`GradCAM`."""

    def _cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return (activations * gradients).sum(axis=-1)


class LayerCAM(GradCAM):
    """Layer-CAM: ``ReLU(Σ_k A_k ⊙ ReLU(g_k))``; arguments, call and result as :class:`GradCAM`."""

    def _cam(self, activations: np.ndarray, gradients: np.ndarray) -> np.ndarray:
        return (activations * np.maximum(gradients, 0.0)).sum(axis=-1)
