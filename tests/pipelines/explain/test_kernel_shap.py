"""Kernel SHAP over superpixels: exact Shapley values, efficiency, seeded sampling, a real model's lesion."""

from __future__ import annotations

import itertools
from math import factorial

import numpy as np
import pytest

from medlens.pipelines.explain.kernel_shap import KernelShapExplainer, shapley_kernel
from medlens.pipelines.explain.lime import LimeExplainer

# Four quadrants of a 16×16 image: the players.
QUADRANTS = np.zeros((16, 16), np.int64)
QUADRANTS[:8, 8:], QUADRANTS[8:, :8], QUADRANTS[8:, 8:] = 1, 2, 3


def game(kept: np.ndarray) -> np.ndarray:
    """A set function with main effects and 2- and 3-way interactions: Kernel SHAP is not exact by luck."""
    a, b, c, d = kept.T
    return 0.1 + 0.3 * a + 0.2 * b * c - 0.1 * d + 0.15 * a * b * d


def quadrant_model(batch: np.ndarray) -> np.ndarray:
    """The game played on which quadrants are still white (hidden ones are black)."""
    kept = np.stack([batch[:, QUADRANTS == i, 0].mean(axis=1) > 127 for i in range(4)], axis=1).astype(float)
    p = game(kept)
    return np.stack([1 - p, p], axis=1)


def brute_force_shapley(value, players: int) -> np.ndarray:
    """Shapley values by the definition: weighted marginal contributions over every coalition."""
    phi = np.zeros(players)
    for i in range(players):
        others = [j for j in range(players) if j != i]
        for size in range(players):
            for coalition in itertools.combinations(others, size):
                without = np.zeros(players)
                without[list(coalition)] = 1
                with_i = without.copy()
                with_i[i] = 1
                weight = factorial(size) * factorial(players - size - 1) / factorial(players)
                phi[i] += weight * (value(with_i[None])[0] - value(without[None])[0])
    return phi


def test_few_regions_give_the_exact_shapley_values():
    image = np.full((16, 16), 255, np.uint8)
    result = KernelShapExplainer(quadrant_model, num_samples=100, hide_color=0.0).explain(
        image, class_index=1, segments=QUADRANTS)
    np.testing.assert_allclose(result.weights, brute_force_shapley(game, 4), atol=1e-12)
    assert result.num_samples == 16  # all 2^4 coalitions, not the 100 asked for
    assert result.intercept == pytest.approx(0.1)  # f(every region hidden)
    assert result.method == "kernel_shap"
    # The signed map: the largest |φ| is 1, the negative quadrant (d) is negative.
    assert result.map[0, 0] == pytest.approx(1.0) and result.map[15, 15] < 0


def test_sampled_values_keep_efficiency_and_are_bit_identical_for_a_seed():
    blocks = (np.arange(64)[:, None] // 8) * 8 + np.arange(64)[None, :] // 8  # 64 regions of 8×8
    slope = np.linspace(0.0, 0.01, 64)

    def model(batch: np.ndarray) -> np.ndarray:
        kept = np.stack([batch[:, blocks == i, 0].mean(axis=1) > 127 for i in range(64)], axis=1).astype(float)
        p = 0.05 + kept @ slope + 0.1 * kept[:, 3] * kept[:, 5] - 0.05 * kept[:, 10] * kept[:, 20] * kept[:, 30]
        return np.stack([1 - p, p], axis=1)

    expected = slope.copy()  # the closed form (2^64 coalitions are too many to enumerate)
    expected[[3, 5]] += 0.05  # a pairwise term splits equally
    expected[[10, 20, 30]] -= 0.05 / 3
    image = np.full((64, 64), 255, np.uint8)
    runs = [KernelShapExplainer(model, num_samples=600, hide_color=0.0, seed=s).explain(image, 1, segments=blocks)
            for s in (7, 7, 8)]
    first, again, other = runs
    np.testing.assert_array_equal(first.weights, again.weights)
    assert not np.array_equal(first.weights, other.weights)
    for result in runs:
        # Efficiency is a constraint, exact whatever the sample: Σφ + f(∅) = f(x).
        assert result.weights.sum() + result.intercept == pytest.approx(model(np.repeat(image[None, :, :, None], 3, axis=3))[0, 1],
                                                                        abs=1e-12)
        # Paired sampling of a game with at most 3-way terms: close to the closed form (measured max error ~0.004).
        assert np.abs(result.weights - expected).max() < 0.01, np.abs(result.weights - expected).max()
        assert result.num_samples == 600


def test_kernel_shap_samples_in_complementary_pairs_from_the_shapley_kernel():
    explainer = KernelShapExplainer(lambda b: np.full((len(b), 2), 0.5), num_samples=2002, seed=0)
    samples = explainer._draw(np.random.default_rng(0), 30)
    assert samples[0].all() and not samples[1].any()
    first, second = samples[2:1002], samples[1002:]
    np.testing.assert_array_equal(first, ~second)
    sizes = first.sum(axis=1)
    assert sizes.min() >= 1 and sizes.max() <= 29
    # Sizes follow p(s) ∝ 1/(s(S−s)): the ends are the most likely, the middle the least.
    counts = np.bincount(sizes, minlength=30)
    assert counts[1] + counts[29] > 5 * (counts[14] + counts[15])
    np.testing.assert_allclose(shapley_kernel(4, np.array([0, 1, 2, 4])), [np.inf, 0.25, 0.125, np.inf])


def test_kernel_shap_and_lime_share_superpixels_and_find_the_bright_region():
    rng = np.random.default_rng(0)
    image = (rng.random((48, 48)) * 40).astype(np.uint8)
    image[30:40, 8:18] = 230  # the "lesion" the model looks for

    def model(batch: np.ndarray) -> np.ndarray:
        p = 1 / (1 + np.exp(-(batch[:, 30:40, 8:18].mean(axis=(1, 2, 3)) - 100) / 20))
        return np.stack([1 - p, p], axis=1)

    shap = KernelShapExplainer(model, num_samples=300, n_segments=30).explain(image, class_index=1)
    lime = LimeExplainer(model, num_samples=300, n_segments=30).explain(image, class_index=1)
    np.testing.assert_array_equal(shap.segments, lime.segments)
    for result in (shap, lime):
        row, col = result.peak()
        assert 30 <= row < 40 and 8 <= col < 18, (result.method, row, col)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="num_samples"):
        KernelShapExplainer(quadrant_model, num_samples=1)
    with pytest.raises(ValueError, match="hide_color"):
        KernelShapExplainer(quadrant_model, hide_color="purple")
    with pytest.raises(ValueError, match="class_index 5 out of range"):
        KernelShapExplainer(quadrant_model, num_samples=20).explain(np.zeros((16, 16)), 5, segments=QUADRANTS)
