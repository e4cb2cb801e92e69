"""Localisation of saliency maps against a ground-truth mask: the pointing game and its energy form.

The pointing game (Zhang et al., 2016) needs no model: it asks whether the map's maximum falls
inside a ground-truth mask (e.g. a lesion outline); its energy-based form (Wang et al.,
Score-CAM, 2020) asks what share of the map's positive mass lies inside, so a map is not judged
by one pixel. A uniform random map (:func:`random_saliency`) is the baseline every method must beat.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from medlens.pipelines.explain.faithfulness import resize_map

__all__ = ["pointing_game", "pointing_game_rate", "energy_pointing", "random_saliency"]


def pointing_game(saliency: np.ndarray, mask: np.ndarray, tolerance_px: float = 0) -> bool:
    """Whether the saliency maximum falls inside ``mask``, or within ``tolerance_px`` of it.

    The map is resized (bilinear) to the mask's size first. When several pixels
    share the maximum, the first in raster order counts, so a flat map cannot win
    by a tie.

    Args:
        saliency: 2-D map, any size.
        mask: 2-D ground truth, nonzero inside the target.
        tolerance_px: Euclidean distance in mask pixels by which the mask is grown.

    Returns:
        True for a hit.

    Raises:
        ValueError: Empty mask, negative tolerance or malformed inputs.

    Example:
        >>> mask = np.zeros((8, 8), np.uint8); mask[2:4, 2:4] = 1
        >>> saliency = np.zeros((8, 8)); saliency[5, 3] = 1.0
        >>> pointing_game(saliency, mask), pointing_game(saliency, mask, tolerance_px=2)
        (False, True)
    """
    target = np.asarray(mask)
    if target.ndim == 3 and target.shape[2] == 1:
        target = target[:, :, 0]
    if target.ndim != 2:
        raise ValueError(f"mask must be 2-D; got shape {np.shape(mask)}")
    if tolerance_px < 0:
        raise ValueError(f"tolerance_px must be 0 or more, got {tolerance_px}")
    inside = target > 0
    if not inside.any():
        raise ValueError("mask is empty: the pointing game needs a target")
    salient = resize_map(saliency, inside.shape)
    row, col = np.unravel_index(int(np.argmax(salient)), salient.shape)
    if inside[row, col]:
        return True
    if tolerance_px == 0:
        return False
    points = np.argwhere(inside)
    distance_sq = (points[:, 0] - row) ** 2 + (points[:, 1] - col) ** 2
    return bool(distance_sq.min() <= tolerance_px**2)


def energy_pointing(saliency: np.ndarray, mask: np.ndarray) -> float:
    """The share of the map's positive energy inside ``mask`` (the map resized to the mask first).

    0 for a map with no positive value.

    Raises:
        ValueError: An empty or malformed mask.

    Example:
        >>> mask = np.zeros((4, 4)); mask[:2, :2] = 1
        >>> saliency = np.zeros((4, 4)); saliency[0, 0] = 3.0; saliency[3, 3] = 1.0
        >>> energy_pointing(saliency, mask)
        0.75
    """
    target = np.asarray(mask)
    if target.ndim == 3 and target.shape[2] == 1:
        target = target[:, :, 0]
    if target.ndim != 2 or not (target > 0).any():
        raise ValueError(f"mask must be a non-empty 2-D array; got shape {np.shape(mask)}")
    positive = np.clip(resize_map(saliency, target.shape), 0.0, None)
    total = float(positive.sum())
    return 0.0 if total <= 0 else float(positive[target > 0].sum() / total)


def pointing_game_rate(
    saliencies: Iterable[np.ndarray], masks: Iterable[np.ndarray], tolerance_px: float = 0
) -> float:
    """Fraction of hits of :func:`pointing_game` over paired maps and masks.

    Raises:
        ValueError: The two sequences differ in length or are empty.
    """
    saliency_list, mask_list = list(saliencies), list(masks)
    if len(saliency_list) != len(mask_list):
        raise ValueError(f"{len(saliency_list)} saliency maps but {len(mask_list)} masks")
    if not saliency_list:
        raise ValueError("no saliency maps given")
    hits = [pointing_game(s, m, tolerance_px) for s, m in zip(saliency_list, mask_list, strict=True)]
    return float(np.mean(hits))


def random_saliency(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A uniform random map in ``[0, 1)``: the baseline every real method must beat.

    Example:
        >>> random_saliency((2, 3), seed=1).shape
        (2, 3)
    """
    return np.random.default_rng(seed).random(tuple(int(s) for s in shape))
