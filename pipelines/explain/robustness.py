"""Faithfulness without distribution shift (ROAD) and stability (max-sensitivity) of saliency maps.

**ROAD** (Rong et al., ICML 2022, "A consistent and efficient evaluation strategy for attribution
methods"). Deletion curves replace pixels by a baseline; the model then sees images unlike any it
was trained on, and the hole's *shape* can leak the map to the model (the score falls because of
the artefact, not the evidence). ROAD removes a fraction of the pixels — most relevant first
(**MoRF**, a faithful map makes the probability fall fast: lower is better) or least relevant first
(**LeRF**, it should barely move: higher is better) — and fills each removed pixel by
**noisy linear imputation**: the weighted mean of its 8 neighbours (edge neighbours 1/6, corner ones
1/12, renormalised at the border), solved jointly for all removed pixels as one sparse linear
system, plus Gaussian noise (σ = ``noise`` × 255). The filled image carries no trace of the map
but the missing information. :func:`road_scores` gives both curves' mean over the fractions and
their gap (LeRF − MoRF, higher is better).

**Max-sensitivity** (Yeh et al., NeurIPS 2019): the largest relative change of a map under small
input noise, ``max_δ ||Φ(x + δ) − Φ(x)|| / ||Φ(x)||`` over ``samples`` draws of uniform noise with
``|δ| ≤ radius`` × the image's value range. A map that jumps under noise the model ignores is not
one to trust. :func:`max_sensitivity` calls a batched map method once for all noisy copies.

Both take ``predict_fn`` (RGB ``0..255`` batch → ``(B, K)`` probabilities) or a map method, as
:mod:`medlens.pipelines.explain.faithfulness` does, so they need no Keras.

Example:
    >>> import numpy as np
    >>> image = np.zeros((8, 8, 3), np.float32); image[:, 4:] = 200.0
    >>> removed = np.zeros((8, 8), bool); removed[3:5, 3:5] = True
    >>> filled = noisy_linear_impute(image, removed, noise=0.0)
    >>> bool(np.allclose(filled[~removed], image[~removed])), bool(0 < filled[3, 3, 0] < 200)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import sparse
from scipy.sparse.linalg import spsolve

from medlens.pipelines.explain.faithfulness import PredictFn, as_rgb_image, class_probabilities, resize_map

__all__ = ["ROAD_FRACTIONS", "max_sensitivity", "noisy_linear_impute", "road_curve", "road_scores"]

ROAD_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_NEIGHBOURS = [(-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
               (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12)]


def noisy_linear_impute(image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01,
                        rng: np.random.Generator | None = None) -> np.ndarray:
    """Fill the ``removed`` pixels of an image from their neighbours (ROAD's imputation).

    Each removed pixel equals the weighted mean of its in-image neighbours, kept or removed;
    the system is solved once for every channel. Then noise ``N(0, (noise·255)²)`` is added to
    the filled pixels.

    Args:
        image: ``H×W[×C]`` in ``0..255``.
        removed: ``H×W`` bool, True where a pixel is removed.
        noise: Noise sd as a fraction of 255 (ROAD's 0.01 for images in ``0..1``).
        rng: Noise source (default: ``default_rng(0)``).

    Returns:
        ``float32`` array of the image's shape.
    """
    pixels = np.asarray(image, np.float32)
    squeeze = pixels.ndim == 2
    values = pixels[..., None] if squeeze else pixels
    height, width, channels = values.shape
    removed = np.asarray(removed, bool)
    if removed.shape != (height, width):
        raise ValueError(f"removed must be {height}×{width}, got {removed.shape}")
    out = values.astype(np.float64).copy()
    count = int(removed.sum())
    if count == 0:
        return pixels.copy()
    if count == removed.size:
        out[:] = values.mean(axis=(0, 1))  # nothing left to impute from
    else:
        index = -np.ones((height, width), np.int64)
        index[removed] = np.arange(count)
        rows, cols = np.nonzero(removed)
        total = np.zeros(count)
        entries_r, entries_c, entries_v = [], [], []
        rhs = np.zeros((count, channels))
        for dr, dc, weight in _NEIGHBOURS:
            r, c = rows + dr, cols + dc
            inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
            me, r, c = np.nonzero(inside)[0], r[inside], c[inside]
            total[me] += weight
            unknown = removed[r, c]
            entries_r.append(me[unknown])
            entries_c.append(index[r[unknown], c[unknown]])
            entries_v.append(np.full(int(unknown.sum()), -weight))
            np.add.at(rhs, me[~unknown], weight * values[r[~unknown], c[~unknown]])
        # Row i: total_i · x_i − Σ_unknown w_ij x_j = Σ_known w_ik v_k  (the mean, times the weights' sum).
        matrix = sparse.csr_matrix((np.concatenate([total, *entries_v]),
                                    (np.concatenate([np.arange(count), *entries_r]),
                                     np.concatenate([np.arange(count), *entries_c]))), shape=(count, count))
        solved = spsolve(matrix.tocsc(), rhs)
        out[removed] = np.asarray(solved).reshape(count, channels)
    if noise > 0:
        rng = rng or np.random.default_rng(0)
        out[removed] += rng.normal(0.0, noise * 255.0, (count, channels))
    out = np.clip(out, 0.0, 255.0).astype(np.float32)
    return out[..., 0] if squeeze else out


def road_curve(predict_fn: PredictFn, image: np.ndarray, saliency: np.ndarray, class_index: int, *,
               order: str = "morf", fractions: Sequence[float] = ROAD_FRACTIONS, noise: float = 0.01,
               seed: int = 0) -> np.ndarray:
    """The class probability after removing each fraction of the pixels (ROAD), one batched call.

    Args:
        predict_fn: RGB ``0..255`` batch → ``(B, K)`` probabilities.
        image: ``H×W[×C]`` in ``0..255`` at the model's size.
        saliency: Map of any size (resized to the image); higher = more relevant.
        class_index: The class whose probability is followed.
        order: ``"morf"`` (most relevant removed first) or ``"lerf"`` (least relevant first).
        fractions: Fractions of the pixels removed, each a separate image.
        noise: Imputation noise (see :func:`noisy_linear_impute`).
        seed: Seed of the noise and of the order among equal saliency values.

    Returns:
        ``(len(fractions),)`` probabilities.
    """
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be morf or lerf, got {order!r}")
    rgb = as_rgb_image(image)
    height, width = rgb.shape[:2]
    salient = resize_map(saliency, (height, width)).ravel()
    rng = np.random.default_rng(seed)
    tiebreak = rng.random(salient.size)  # equal values (flat regions, superpixels) in a seeded random order
    ranking = np.lexsort((tiebreak, -salient if order == "morf" else salient))
    batch = []
    for fraction in fractions:
        removed = np.zeros(salient.size, bool)
        removed[ranking[: int(round(float(fraction) * salient.size))]] = True
        batch.append(noisy_linear_impute(rgb, removed.reshape(height, width), noise=noise, rng=rng))
    return class_probabilities(predict_fn(np.stack(batch)), len(batch))[:, class_index]


def road_scores(predict_fn: PredictFn, image: np.ndarray, saliency: np.ndarray, class_index: int,
                **options: Any) -> dict[str, float]:
    """ROAD's MoRF and LeRF means over the fractions, and their gap (LeRF − MoRF; higher is better)."""
    morf = float(road_curve(predict_fn, image, saliency, class_index, order="morf", **options).mean())
    lerf = float(road_curve(predict_fn, image, saliency, class_index, order="lerf", **options).mean())
    return {"road_morf": morf, "road_lerf": lerf, "road_gap": lerf - morf}


def max_sensitivity(map_fn: Callable[[np.ndarray], np.ndarray], images: np.ndarray, *, radius: float = 0.02,
                    samples: int = 8, seed: int = 0) -> np.ndarray:
    """Max-sensitivity of a batched map method: the largest relative map change under small noise.

    Args:
        map_fn: ``(B, H, W, C)`` model-ready batch → ``(B, h, w)`` maps (e.g. a CAM's
            ``lambda x: cam(x, class_index=targets_repeated).maps``; it is called once with
            ``len(images) · (samples + 1)`` images: every image, then its noisy copies).
        images: ``(N, H, W, C)`` model-ready batch.
        radius: Noise bound as a fraction of each image's value range (uniform in ``±radius``).
        samples: Noisy copies per image.
        seed: Noise seed.

    Returns:
        ``(N,)`` ``max ||Φ(x+δ) − Φ(x)||₂ / ||Φ(x)||₂`` (0 for a map that never changes; inf for an
        all-zero original map that changes).
    """
    pixels = np.asarray(images, np.float32)
    count = len(pixels)
    spread = (pixels.reshape(count, -1).max(axis=1) - pixels.reshape(count, -1).min(axis=1)).astype(np.float32)
    rng = np.random.default_rng(seed)
    noise = rng.uniform(-1.0, 1.0, (count, samples, *pixels.shape[1:])).astype(np.float32)
    noisy = pixels[:, None] + radius * spread[:, None, None, None, None] * noise
    batch = np.concatenate([pixels, noisy.reshape(-1, *pixels.shape[1:])])
    maps = np.asarray(map_fn(batch), np.float64)
    original, perturbed = maps[:count], maps[count:].reshape(count, samples, *maps.shape[1:])
    change = np.sqrt(((perturbed - original[:, None]) ** 2).reshape(count, samples, -1).sum(axis=2)).max(axis=1)
    norm = np.sqrt((original**2).reshape(count, -1).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(norm > 0, change / np.where(norm > 0, norm, 1.0), np.where(change > 0, np.inf, 0.0))
