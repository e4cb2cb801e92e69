"""ROAD (noisy linear imputation, MoRF/LeRF) and max-sensitivity, on models whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.pipelines.explain.localisation import energy_pointing
from medlens.pipelines.explain.robustness import max_sensitivity, noisy_linear_impute, road_curve, road_scores


def test_imputation_solves_the_neighbour_mean_and_keeps_the_rest():
    rng = np.random.default_rng(0)
    image = (rng.random((20, 24, 3)) * 255).astype(np.float32)
    removed = rng.random((20, 24)) < 0.4
    filled = noisy_linear_impute(image, removed, noise=0.0)
    np.testing.assert_array_equal(filled[~removed], image[~removed])
    # Every removed pixel is the weighted mean of its in-image neighbours (1/6 edge, 1/12 corner).
    for r, c in zip(*np.nonzero(removed), strict=True):
        total, weight = np.zeros(3), 0.0
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if (dr or dc) and 0 <= r + dr < 20 and 0 <= c + dc < 24:
                    w = 1 / 12 if dr and dc else 1 / 6
                    total += w * filled[r + dr, c + dc]
                    weight += w
        np.testing.assert_allclose(filled[r, c], total / weight, atol=1e-3)
    noisy = noisy_linear_impute(image, removed, noise=0.01, rng=np.random.default_rng(1))
    difference = (noisy - filled)[removed]
    assert 1.5 < difference.std() < 3.5  # σ = 0.01 × 255 ≈ 2.55 (clipped at 0 and 255)
    flat = noisy_linear_impute(np.full((6, 6), 80.0), np.ones((6, 6), bool), noise=0.0)
    np.testing.assert_allclose(flat, 80.0)
    with pytest.raises(ValueError, match="removed must be 20×24"):
        noisy_linear_impute(image, removed[:5])


def spot_model(batch: np.ndarray) -> np.ndarray:
    """p(1) = the brightness of a 6×6 spot at rows/cols 10..16."""
    p = np.clip(batch[:, 10:16, 10:16].mean(axis=(1, 2, 3)) / 255.0, 0, 1)
    return np.stack([1 - p, p], axis=1)


def test_road_separates_a_faithful_map_from_its_inverse():
    image = np.full((32, 32), 30.0, np.float32)
    image[10:16, 10:16] = 250.0
    good = np.zeros((32, 32))
    good[10:16, 10:16] = 1.0
    good += np.linspace(0, 0.1, 32)[None, :]  # an order among the rest
    inverse = 1.0 - good
    morf = road_curve(spot_model, image, good, 1, order="morf")
    assert morf.shape == (9,) and morf[-1] < 0.35 and morf[0] < 0.5  # the spot goes in the first 10 %
    faithful, unfaithful = road_scores(spot_model, image, good, 1), road_scores(spot_model, image, inverse, 1)
    assert faithful["road_gap"] > 0.4 and unfaithful["road_gap"] < -0.4, (faithful, unfaithful)
    assert faithful["road_morf"] < unfaithful["road_morf"] and faithful["road_lerf"] > unfaithful["road_lerf"]
    again = road_scores(spot_model, image, good, 1)
    assert again == faithful  # seeded: the same numbers twice
    with pytest.raises(ValueError, match="order must be morf or lerf"):
        road_curve(spot_model, image, good, 1, order="random")


def test_max_sensitivity_and_energy_pointing():
    images = np.random.default_rng(2).random((3, 16, 16, 3)).astype(np.float32)

    def steady(batch):  # ignores the noise entirely
        return np.tile(np.linspace(0, 1, 256).reshape(1, 16, 16), (len(batch), 1, 1))

    def jumpy(batch):  # the map is the input itself: it moves with every perturbation
        return batch.mean(axis=-1)

    assert np.all(max_sensitivity(steady, images) == 0.0)
    sensitive = max_sensitivity(jumpy, images, radius=0.05, samples=4)
    assert sensitive.shape == (3,) and np.all(sensitive > 0.01)
    assert np.all(max_sensitivity(jumpy, images, radius=0.2, samples=4) > sensitive)
    mask = np.zeros((16, 16))
    mask[:8] = 1
    assert energy_pointing(steady(images[:1])[0], mask) == pytest.approx(
        np.linspace(0, 1, 256)[:128].sum() / np.linspace(0, 1, 256).sum(), rel=1e-6)
    assert energy_pointing(np.zeros((4, 4)), mask) == 0.0
