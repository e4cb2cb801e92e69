"""Temperature scaling, ECE and their place in a run: fitted on validation, applied to predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medlens.pipelines.evaluation.calibration import (
    apply_temperature,
    ece_floor,
    ece_floor_draws,
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


def test_ece_floor_is_the_sampling_noise_of_a_perfectly_calibrated_model():
    # Coin flips called at 0.5 fill one bin: ECE = |accuracy - 0.5| with accuracy ~ Binomial(n, 0.5) / n,
    # so the floor is sqrt(0.25 / n) * sqrt(2 / pi). With 2,000 draws its Monte Carlo sd is
    # sqrt(0.25 / n) * sqrt(1 - 2 / pi) / sqrt(2000) (3.4e-4 at n = 400): tolerance 5 sd.
    for n in (100, 400, 1600):
        expected = np.sqrt(0.25 / n) * np.sqrt(2 / np.pi)
        sd = np.sqrt(0.25 / n) * np.sqrt(1 - 2 / np.pi) / np.sqrt(2000)
        assert ece_floor(np.full((n, 2), 0.5), draws=2000) == pytest.approx(expected, abs=5 * sd)
    # Certain and right: no noise at all. Deterministic for a seed, different across seeds.
    assert ece_floor(np.tile([[0.0, 1.0]], (50, 1))) == 0.0
    probs, _ = _overconfident(300, 4)
    assert ece_floor(probs) == ece_floor(probs) != ece_floor(probs, seed=1)
    # Labels truly drawn from the probabilities score about the floor; the overconfident labels score above it.
    draws = ece_floor_draws(probs, draws=500)
    assert draws.min() >= 0 and np.percentile(draws, 95) > np.mean(draws)
    calibrated, labels = _overconfident(300, 4)
    assert expected_calibration_error(calibrated, labels) > np.percentile(ece_floor_draws(calibrated, 500), 99)


def test_a_run_reports_its_ece_floor_beside_its_ece(tiny_run):
    metrics = json.loads((tiny_run / "metrics.json").read_text())
    card = (tiny_run / "model_card.md").read_text()
    floor = metrics["test"]["ece_floor"]
    assert 0 < floor < 0.5
    assert f"an ECE of about {floor:.3f}" in card and f"On {metrics['test']['n']} test images" in card
