"""Grad-CAM++ (Chattopadhyay et al. 2018): Grad-CAM with pixel-weighted gradients.

Same interface and machinery as :class:`medlens.pipelines.gradcam.GradCAM`; only the
channel weights differ. With the class score taken as ``exp(S)`` of the logit
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

from medlens.pipelines.gradcam import CamResult, GradCAM

__all__ = ["GradCAMPlusPlus", "CamResult"]


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
