"""Tiled inference, segmentation metrics and mask helpers."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medlens.pipelines.evaluation.segmentation import seg_metrics
from medlens.pipelines.inference.masks import binarize, mask_stats, postprocess
from medlens.pipelines.inference.tiling import (
    gaussian_window,
    sliding_window_predict,
    tile_starts,
    whole_image_predict,
)


def _first_channel(batch: np.ndarray) -> np.ndarray:
    return batch[..., :1]


def _box_filter(batch: np.ndarray) -> np.ndarray:
    """A translation-equivariant 'model' with a 5×5 receptive field (edge effects at tile borders)."""
    return np.stack([cv2.blur(tile[..., 0], (5, 5))[..., None] for tile in batch])


# --------------------------------------------------------------------------- tiling


def test_window_and_starts() -> None:
    window = gaussian_window(32)
    assert window.shape == (32, 32) and window.max() == pytest.approx(1.0) and window.min() > 0
    np.testing.assert_allclose(window, window.T)
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    assert tile_starts(32, 32, 24) == [0]


@pytest.mark.parametrize("shape", [(97, 131, 3), (20, 30, 3), (128, 128, 1), (1, 5, 2), (300, 40)])
def test_constant_model_gives_constant_map(shape: tuple[int, ...]) -> None:
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    out = sliding_window_predict(lambda b: np.full(b.shape[:3] + (1,), 0.37, np.float32), image, tile=32,
                                 overlap=0.5)
    assert out.shape == shape[:2]
    np.testing.assert_allclose(out, 0.37, rtol=0, atol=1e-6)
    multi = sliding_window_predict(lambda b: np.broadcast_to(np.array([0.2, 0.3, 0.5], np.float32), b.shape[:3] + (3,)),
                                   image, tile=32)
    assert multi.shape == shape[:2] + (3,)
    np.testing.assert_allclose(multi, np.broadcast_to([0.2, 0.3, 0.5], multi.shape), atol=1e-6)


@pytest.mark.parametrize("shape", [(97, 131, 3), (20, 30, 3), (64, 64, 1)])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5])
def test_identity_model_reproduces_input(shape: tuple[int, ...], overlap: float) -> None:
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    out = sliding_window_predict(_first_channel, image, tile=48, overlap=overlap, multiple=16)
    assert out.shape == shape[:2] and out.dtype == np.float32
    np.testing.assert_allclose(out, image[..., 0], atol=1e-5)


def test_batch_sizes_respected() -> None:
    seen: list[int] = []

    def record(batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1:] == (32, 32, 3)
        seen.append(batch.shape[0])
        return batch[..., :1]

    sliding_window_predict(record, np.zeros((97, 131, 3), np.float32), tile=32, overlap=0.25, batch_size=4)
    rows, cols = len(tile_starts(97, 32, 24)), len(tile_starts(131, 32, 24))
    assert sum(seen) == rows * cols
    assert max(seen) == 4 and all(size == 4 for size in seen[:-1])


def test_tiled_matches_whole_image_away_from_borders() -> None:
    rng = np.random.default_rng(2)
    image = cv2.GaussianBlur(rng.random((150, 170), dtype=np.float32), (0, 0), 3)[..., None]
    whole = cv2.blur(image[..., 0], (5, 5))
    tiled = sliding_window_predict(_box_filter, image, tile=48, overlap=0.5)
    interior = (slice(8, -8), slice(8, -8))  # next to the image border every tile is near its edge
    assert np.max(np.abs(tiled[interior] - whole[interior])) < 1e-3


def test_pointwise_model_tiled_equals_whole() -> None:
    weights = np.array([0.5, -1.0, 2.0], np.float32)

    def pointwise(batch: np.ndarray) -> np.ndarray:  # a 1×1 convolution with a sigmoid, like a U-Net head
        return 1 / (1 + np.exp(-(batch @ weights)))[..., None]

    image = np.random.default_rng(3).random((70, 90, 3), dtype=np.float32)
    tiled = sliding_window_predict(pointwise, image, tile=32, batch_size=16)
    whole = whole_image_predict(pointwise, image)
    assert tiled.shape == whole.shape == (70, 90)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_whole_image_predict_pads_to_multiple() -> None:
    shapes: list[tuple[int, ...]] = []

    def check(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return np.concatenate([batch[..., :1], 1 - batch[..., :1]], axis=-1)

    image = np.random.default_rng(4).random((37, 50, 3), dtype=np.float32)
    out = whole_image_predict(check, image, multiple=16)
    assert shapes == [(1, 48, 64, 3)] and out.shape == (37, 50, 2)
    np.testing.assert_allclose(out[..., 0], image[..., 0])


def test_bad_arguments() -> None:
    image = np.zeros((40, 40, 3), np.float32)
    with pytest.raises(ValueError, match="multiple"):
        sliding_window_predict(_first_channel, image, tile=40, multiple=16)
    with pytest.raises(ValueError, match="overlap"):
        sliding_window_predict(_first_channel, image, tile=32, overlap=1.0)
    with pytest.raises(ValueError, match="predict_fn returned"):
        sliding_window_predict(lambda b: b[:, :16, :16, :1], image, tile=32)


# --------------------------------------------------------------------------- metrics


def test_seg_metrics_hand_computed() -> None:
    prob = np.array([[0.9, 0.2], [0.7, 0.1]])
    truth = np.array([[1, 0], [0, 0]])
    metrics = seg_metrics(prob, truth)
    # tp = 1, fp = 1, fn = 0, tn = 2
    assert (metrics["tp"], metrics["fp"], metrics["fn"], metrics["tn"]) == (1, 1, 0, 2)
    assert metrics["dice"] == pytest.approx(2 / 3)
    assert metrics["iou"] == pytest.approx(1 / 2)
    assert metrics["sensitivity"] == pytest.approx(1.0)
    assert metrics["specificity"] == pytest.approx(2 / 3)
    assert metrics["precision"] == pytest.approx(1 / 2)
    assert metrics["accuracy"] == pytest.approx(3 / 4)
    assert metrics["auc"] == pytest.approx(1.0)
    # The false positive lies outside the FOV: it no longer counts.
    fov = np.array([[1, 1], [0, 1]])
    inside = seg_metrics(prob, truth, fov=fov)
    assert inside["pixels"] == 3 and inside["fp"] == 0
    assert inside["dice"] == inside["precision"] == inside["accuracy"] == pytest.approx(1.0)
    # Threshold: a pixel equal to the threshold is positive.
    assert seg_metrics(prob, truth, threshold=0.9)["fp"] == 0


def test_seg_metrics_undefined_values() -> None:
    empty = seg_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    assert empty["dice"] == empty["iou"] == 1.0
    assert empty["sensitivity"] is None and empty["auc"] is None and empty["specificity"] == 1.0


def test_auc_matches_sklearn_small_and_large() -> None:
    rng = np.random.default_rng(5)
    truth = rng.random((20, 30)) < 0.3
    prob = np.clip(truth * 0.3 + rng.random((20, 30)) * 0.8, 0, 1)
    fov = rng.random((20, 30)) < 0.8
    expected = roc_auc_score(truth[fov], prob[fov])
    assert seg_metrics(prob, truth, fov)["auc"] == pytest.approx(expected, abs=1e-12)
    # Large images take the rank path; ties (2-decimal probabilities) are handled the same way.
    truth = rng.random((600, 600)) < 0.12
    prob = np.round(np.clip(truth * 0.25 + rng.random((600, 600)) * 0.75, 0, 1), 2)
    assert seg_metrics(prob, truth)["auc"] == pytest.approx(roc_auc_score(truth.ravel(), prob.ravel()), abs=1e-9)


def test_seg_metrics_multiclass() -> None:
    truth = np.array([[0, 0, 1], [1, 2, 2]])
    predicted = np.array([[0, 1, 1], [1, 2, 0]])
    prob = np.eye(3)[predicted] * 0.8 + 0.1 / 3
    metrics = seg_metrics(prob, truth)
    # class 0: tp 1, fp 1, fn 1; class 1: tp 2, fp 1, fn 0; class 2: tp 1, fp 0, fn 1
    np.testing.assert_allclose(metrics["dice_per_class"], [0.5, 0.8, 2 / 3])
    np.testing.assert_allclose(metrics["iou_per_class"], [1 / 3, 2 / 3, 1 / 2])
    assert metrics["mean_dice"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert metrics["mean_dice_foreground"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert seg_metrics(prob, np.eye(3)[truth])["mean_dice"] == metrics["mean_dice"]
    with pytest.raises(ValueError, match="shape"):
        seg_metrics(prob, truth[:, :2])


# --------------------------------------------------------------------------- masks


def test_mask_stats_binarize_postprocess() -> None:
    mask = np.zeros((20, 20), np.uint8)
    mask[1:5, 1:5] = 1  # 16 px
    mask[10:12, 10:11] = 1  # 2 px
    mask[15, 18] = 1  # 1 px
    stats = mask_stats(mask)
    assert stats == {"foreground_fraction": 19 / 400, "foreground_pixels": 19, "components": 3,
                     "largest_component": 16}
    assert mask_stats(np.zeros((3, 3)))["components"] == 0
    cleaned = postprocess(mask, min_size=2)
    assert mask_stats(cleaned)["components"] == 2 and cleaned[15, 18] == 0
    assert mask_stats(postprocess(mask, min_size=5))["foreground_pixels"] == 16
    np.testing.assert_array_equal(postprocess(mask * 255), mask)
    np.testing.assert_array_equal(binarize(np.array([0.2, 0.5, 0.7]), 0.5), [0, 1, 1])
