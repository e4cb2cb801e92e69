"""Segmentation losses and metrics: exact values on tiny hand-made masks, FOV weights."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medlens.models.losses import (
    LOSSES,
    BCEDiceLoss,
    DiceLoss,
    FocalLoss,
    TverskyLoss,
    get_loss,
)
from medlens.models.metrics import (
    DiceScore,
    IoUScore,
    PixelAccuracy,
    Sensitivity,
    Specificity,
    segmentation_metrics,
)
from medlens.pipelines.errors import ConfigError


def square_mask(batch: int = 2, size: int = 8) -> np.ndarray:
    mask = np.zeros((batch, size, size, 1), "float32")
    mask[:, 2:6, 2:6] = 1.0
    return mask


def value(tensor) -> float:
    return float(keras.ops.convert_to_numpy(tensor))


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize("loss", [DiceLoss(), TverskyLoss(), BCEDiceLoss(bce_weight=0.0)])
def test_perfect_prediction_gives_zero_overlap_loss(loss):
    mask = square_mask()
    assert value(loss(mask, mask)) == pytest.approx(0.0, abs=1e-6)


def test_dice_loss_disjoint_is_one_and_multiclass_works():
    mask = square_mask()
    assert value(DiceLoss()(mask, 1.0 - mask)) == pytest.approx(1.0, abs=0.02)
    assert value(DiceLoss(smooth=0.0)(mask, 1.0 - mask)) == pytest.approx(1.0, abs=1e-6)
    one_hot = np.concatenate([1.0 - mask, mask], axis=-1)
    assert value(DiceLoss()(one_hot, one_hot)) == pytest.approx(0.0, abs=1e-6)
    assert value(DiceLoss(smooth=0.0)(one_hot, one_hot[..., ::-1])) == pytest.approx(1.0, abs=1e-6)


def test_dice_loss_matches_hand_computation():
    truth = square_mask(1)
    pred = np.full_like(truth, 0.25)
    tp, total_pred, total_true = 16 * 0.25, 64 * 0.25, 16.0
    expected = 1.0 - (2 * tp + 1.0) / (total_pred + total_true + 1.0)
    assert value(DiceLoss()(truth, pred)) == pytest.approx(expected, rel=1e-5)


def test_tversky_with_equal_weights_is_dice():
    rng = np.random.default_rng(0)
    truth = (rng.random((3, 8, 8, 1)) > 0.6).astype("float32")
    pred = rng.random((3, 8, 8, 1)).astype("float32")
    for smooth in (0.0, 1.0):
        tversky = TverskyLoss(alpha=0.5, beta=0.5, smooth=smooth)(truth, pred)
        assert value(tversky) == pytest.approx(value(DiceLoss(smooth=smooth)(truth, pred)), rel=1e-5)
    # beta > alpha: eight missed foreground pixels cost more than eight false alarms.
    mask = square_mask(1)
    missed, extra = mask.copy(), mask.copy()
    missed[0, 2:4, 2:6] = 0.0
    extra[0, 6:8, 2:6] = 1.0
    assert value(TverskyLoss()(mask, missed)) > value(TverskyLoss()(mask, extra))


def test_focal_below_bce_for_confident_correct_predictions():
    mask = square_mask()
    confident = np.where(mask > 0, 0.95, 0.05).astype("float32")
    focal = value(FocalLoss()(mask, confident))
    bce = value(keras.losses.BinaryCrossentropy()(mask, confident))
    assert 0.0 < focal < bce
    assert value(FocalLoss(gamma=0.0, alpha=0.5)(mask, confident)) == pytest.approx(0.5 * bce, rel=1e-4)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("fov_rank", [3, 4])
def test_fov_sample_weight_excludes_pixels(name, fov_rank):
    loss = get_loss(name)
    truth = square_mask()
    pred = np.where(truth > 0, 0.8, 0.2).astype("float32")
    fov = np.zeros_like(truth)
    fov[:, 1:7, 1:7] = 1.0
    wrong_outside = pred.copy()
    wrong_outside[:, 0, :] = 1.0  # row 0 is outside the FOV
    weight = fov[..., 0] if fov_rank == 3 else fov
    inside = value(loss(truth, pred, sample_weight=weight))
    assert value(loss(truth, wrong_outside, sample_weight=weight)) == pytest.approx(inside, rel=1e-6)
    assert value(loss(truth, wrong_outside)) != pytest.approx(value(loss(truth, pred)), rel=1e-3)


def test_losses_take_fov_through_keras_fit_mechanism():
    rng = np.random.default_rng(1)
    x = rng.random((4, 8, 8, 1)).astype("float32")
    y = square_mask(4)
    fov = np.zeros((4, 8, 8), "float32")
    fov[:, 1:7, 1:7] = 1.0
    model = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Conv2D(1, 3, padding="same", activation="sigmoid")]
    )
    # Keras passes sample weights to `weighted_metrics` only; `metrics` ignore them.
    model.compile(loss=BCEDiceLoss(), metrics=[IoUScore()], weighted_metrics=[DiceScore()])
    result = model.evaluate(x, y, sample_weight=fov, batch_size=4, verbose=0, return_dict=True)
    pred = model.predict(x, verbose=0)
    assert result["loss"] == pytest.approx(value(BCEDiceLoss()(y, pred, sample_weight=fov)), rel=1e-5)
    dice, iou = DiceScore(), IoUScore()
    dice.update_state(y, pred, sample_weight=fov)
    iou.update_state(y, pred)
    assert result["dice"] == pytest.approx(value(dice.result()), rel=1e-5)
    assert result["iou"] == pytest.approx(value(iou.result()), rel=1e-5)


def test_get_loss_names_and_serialisation():
    assert isinstance(get_loss("bce"), keras.losses.BinaryCrossentropy)
    assert isinstance(get_loss("BCE-Dice"), BCEDiceLoss)
    with pytest.raises(ConfigError, match="unknown segmentation loss"):
        get_loss("hinge")
    loss = TverskyLoss(alpha=0.2, beta=0.8, smooth=0.5)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert isinstance(restored, TverskyLoss)
    assert (restored.alpha, restored.beta, restored.smooth) == (0.2, 0.8, 0.5)
    assert restored.name == loss.name


# ----------------------------------------------------------------- metrics
def hand_example():
    """TP=3, FP=1, TN=3, FN=1 on eight pixels (threshold 0.5)."""
    truth = np.array([1, 1, 1, 1, 0, 0, 0, 0], "float32").reshape(1, 2, 4, 1)
    pred = np.array([0.9, 0.6, 0.5, 0.2, 0.7, 0.1, 0.3, 0.0], "float32").reshape(1, 2, 4, 1)
    return truth, pred


def test_metrics_match_hand_counts():
    truth, pred = hand_example()
    tp, fp, tn, fn = 3, 1, 3, 1
    expected = {
        "dice": 2 * tp / (2 * tp + fp + fn),
        "iou": tp / (tp + fp + fn),
        "sensitivity": tp / (tp + fn),
        "specificity": tn / (tn + fp),
        "pixel_accuracy": (tp + tn) / 8,
    }
    metrics = segmentation_metrics()
    assert [metric.name for metric in metrics] == list(expected)
    for metric in metrics:
        metric.update_state(truth, pred)
        assert value(metric.result()) == pytest.approx(expected[metric.name], abs=1e-6), metric.name


def test_metrics_accumulate_over_batches():
    rng = np.random.default_rng(2)
    truth = (rng.random((4, 8, 8, 1)) > 0.5).astype("float32")
    pred = rng.random((4, 8, 8, 1)).astype("float32")
    for cls in (DiceScore, IoUScore, Sensitivity, Specificity, PixelAccuracy):
        split, whole = cls(), cls()
        split.update_state(truth[:1], pred[:1])
        split.update_state(truth[1:], pred[1:])
        whole.update_state(truth, pred)
        assert value(split.result()) == pytest.approx(value(whole.result()), abs=1e-6)
        split.reset_state()
        assert value(split.result()) == 0.0


@pytest.mark.parametrize("fov_rank", [3, 4])
def test_metrics_fov_excludes_pixels(fov_rank):
    truth, pred = hand_example()
    fov = np.ones_like(truth)
    fov[0, 1, 0] = 0.0  # drop the false positive (truth 0, pred 0.7)
    weight = fov[..., 0] if fov_rank == 3 else fov
    spec, dice = Specificity(), DiceScore()
    spec.update_state(truth, pred, sample_weight=weight)
    dice.update_state(truth, pred, sample_weight=weight)
    assert value(spec.result()) == pytest.approx(1.0)
    assert value(dice.result()) == pytest.approx(6 / 7, abs=1e-6)


def test_multiclass_metrics_score_foreground_classes():
    labels = np.array([[0, 1, 2, 2]]).reshape(1, 2, 2)
    predicted = np.array([[0, 1, 1, 2]]).reshape(1, 2, 2)
    truth = np.eye(3, dtype="float32")[labels]
    pred = np.eye(3, dtype="float32")[predicted] * 0.8 + 0.1
    dice = DiceScore()
    dice.update_state(truth, pred)
    # Foreground one-vs-rest: TP=2 (pixels 1, 3), FP=1 and FN=1 (pixel 2: class 1 for class 2).
    assert value(dice.result()) == pytest.approx(4 / 6, abs=1e-6)
    class_two = IoUScore(class_id=2)
    class_two.update_state(truth, pred)
    assert value(class_two.result()) == pytest.approx(0.5, abs=1e-6)
    restored = IoUScore.from_config(class_two.get_config())
    assert restored.class_id == 2 and restored.name == "iou"
