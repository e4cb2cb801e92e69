"""Temperature scaling, ECE and their place in a run: fitted on validation, applied to predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.pipelines.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from medlens.pipelines.predict import predict_paths


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from true probabilities q, reported as the sharpened sigmoid(3·logit(q))."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(0, 1.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(int)
    reported = 1 / (1 + np.exp(-3.0 * true_logit))
    return np.stack([1 - reported, reported], axis=1), labels


def test_temperature_recovers_the_overconfidence_and_lowers_ece():
    val_probs, val_labels = _overconfident(4000, 0)
    temperature = fit_temperature(val_probs, val_labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    test_probs, test_labels = _overconfident(4000, 1)
    before = expected_calibration_error(test_probs, test_labels)
    after = expected_calibration_error(apply_temperature(test_probs, temperature), test_labels)
    assert before > 0.1 and after < 0.03, (before, after)
    # Ranking is untouched: same argmax, same order of the positive-class scores.
    calibrated = apply_temperature(test_probs, temperature)
    assert np.array_equal(calibrated.argmax(1), test_probs.argmax(1))
    assert np.array_equal(np.argsort(calibrated[:, 1], kind="stable"), np.argsort(test_probs[:, 1], kind="stable"))
    np.testing.assert_allclose(calibrated.sum(1), 1.0)


def test_multiclass_and_degenerate_inputs():
    rng = np.random.default_rng(2)
    logits = rng.normal(0, 2, (3000, 4))
    labels = np.array([rng.choice(4, p=np.exp(row) / np.exp(row).sum()) for row in logits])
    sharp = np.exp(2.0 * logits) / np.exp(2.0 * logits).sum(1, keepdims=True)
    assert fit_temperature(sharp, labels) == pytest.approx(2.0, rel=0.1)
    assert fit_temperature(sharp[:1], labels[:1]) == 1.0  # too little to fit
    assert fit_temperature(sharp[labels == 0], labels[labels == 0]) == 1.0  # one class only
    np.testing.assert_array_equal(apply_temperature(sharp, 1.0), sharp)


def test_a_run_stores_its_temperature_and_predictions_use_it(tiny_run, phantom_dir, tmp_path):
    state = json.loads((tiny_run / "run.json").read_text())
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    assert 0.05 <= state["temperature"] <= 20 and metrics["calibration"]["temperature"] == state["temperature"]
    assert 0 <= metrics["test"]["ece"] <= 1 and 0 <= metrics["test"]["ece_uncalibrated"] <= 1
    assert metrics["val"]["ece"] <= metrics["val"]["ece_uncalibrated"] + 1e-9  # fitted there: never worse
    assert (tiny_run / "plots" / "reliability_test.png").is_file()

    images = sorted((phantom_dir / "lesion").iterdir())[:4]
    calibrated = predict_paths(tiny_run, images, tmp_path / "a")
    state["temperature"] = 1.0
    (tiny_run / "run.json").write_text(json.dumps(state))
    try:
        raw = predict_paths(tiny_run, images, tmp_path / "b")
    finally:
        state["temperature"] = metrics["calibration"]["temperature"]
        (tiny_run / "run.json").write_text(json.dumps(state))
    # Both tables round probabilities to 6 decimals, so the raw probability behind each row is
    # only known to ±5e-7; temperature scaling is monotone, so the calibrated value lies between
    # the images of that interval's ends, then is itself rounded (±5e-7).
    temperature = metrics["calibration"]["temperature"]
    half_step = 5e-7

    def calibrate(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, 1e-12, 1 - 1e-12)
        return apply_temperature(np.stack([1 - p, p], 1), temperature)[:, 1]

    raw_p = np.array([r["p_lesion"] for r in raw.rows])
    low, high = calibrate(raw_p - half_step), calibrate(raw_p + half_step)
    got = np.array([r["p_lesion"] for r in calibrated.rows])
    slack = half_step + 1e-9  # the output's own rounding, plus float64 noise
    assert np.all(got >= np.minimum(low, high) - slack) and np.all(got <= np.maximum(low, high) + slack), (
        got, low, high)
    assert np.abs(got - calibrate(raw_p)).max() < 1e-3  # and the bound is not vacuous
