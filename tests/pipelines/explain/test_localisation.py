"""The pointing game and its energy form: a map's peak and mass against a ground-truth mask."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.pipelines.explain.localisation import (
    energy_pointing,
    pointing_game,
    pointing_game_rate,
    random_saliency,
)


def test_pointing_game_hits_misses_and_tolerance():
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:10] = 255
    saliency = np.zeros((20, 20))
    saliency[7, 7] = 1.0
    assert pointing_game(saliency, mask)
    saliency = np.zeros((20, 20))
    saliency[12, 7] = 1.0  # three pixels below the mask's last row
    assert not pointing_game(saliency, mask)
    assert not pointing_game(saliency, mask, tolerance_px=2)
    assert pointing_game(saliency, mask, tolerance_px=3)
    # A map at another resolution is resized to the mask.
    coarse = np.zeros((4, 4))
    coarse[1, 1] = 1.0
    assert pointing_game(coarse, mask)
    # A flat map does not win by a tie: the first pixel counts.
    assert not pointing_game(np.ones((20, 20)), mask)
    with pytest.raises(ValueError):
        pointing_game(saliency, np.zeros((20, 20)))


def test_pointing_game_rate_and_random_saliency():
    mask = np.zeros((16, 16), bool)
    mask[:8] = True
    hit, miss = np.zeros((16, 16)), np.zeros((16, 16))
    hit[2, 2], miss[14, 2] = 1.0, 1.0
    assert pointing_game_rate([hit, miss, hit, hit], [mask] * 4) == 0.75
    with pytest.raises(ValueError):
        pointing_game_rate([hit], [mask, mask])
    first = random_saliency((16, 16), seed=3)
    assert np.array_equal(first, random_saliency((16, 16), seed=3))
    assert not np.array_equal(first, random_saliency((16, 16), seed=4))
    assert first.min() >= 0.0 and first.max() < 1.0


def test_energy_pointing_is_the_share_of_positive_mass_inside_the_mask():
    mask = np.zeros((8, 8))
    mask[:4] = 1
    saliency = np.zeros((8, 8))
    saliency[1, 1], saliency[6, 6], saliency[5, 0] = 3.0, 1.0, -5.0  # negative values carry no energy
    assert energy_pointing(saliency, mask) == pytest.approx(0.75)
    assert energy_pointing(np.zeros((8, 8)), mask) == 0.0
    with pytest.raises(ValueError, match="non-empty 2-D"):
        energy_pointing(saliency, np.zeros((8, 8)))
