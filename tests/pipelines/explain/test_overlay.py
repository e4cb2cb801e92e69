"""Overlays: RGB colour order, the original's resolution, atomic PNG/NPY writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from medlens.pipelines.explain.overlay import (
    colorize,
    heatmap_overlay,
    save_npy,
    save_png,
    signed_overlay,
    to_rgb_uint8,
)


def test_colorize_is_rgb_high_red_low_blue():
    colours = colorize(np.array([[1.0, 0.0]]))
    assert colours.dtype == np.uint8 and colours.shape == (1, 2, 3)
    high, low = colours[0, 0].astype(int), colours[0, 1].astype(int)
    assert high[0] > high[2] and high[0] > high[1]  # red dominates
    assert low[2] > low[0] and low[2] > low[1]  # blue dominates
    with pytest.raises(ValueError):
        colorize(np.zeros((2, 2)), colormap="no-such-map")


def test_overlay_of_full_heatmap_is_red_and_of_empty_is_blue():
    original = np.full((10, 10, 3), 128, np.uint8)
    red = heatmap_overlay(original, np.ones((10, 10)), alpha=0.8)[5, 5].astype(int)
    blue = heatmap_overlay(original, np.zeros((10, 10)), alpha=0.8)[5, 5].astype(int)
    assert red[0] > red[2] and blue[2] > blue[0]


def test_overlay_matches_a_16_bit_grey_original_of_odd_size():
    rng = np.random.default_rng(0)
    original = rng.integers(0, 4096, (37, 53), dtype=np.uint16)
    heatmap = rng.random((7, 7))
    overlay = heatmap_overlay(original, heatmap)
    assert overlay.shape == (37, 53, 3) and overlay.dtype == np.uint8
    assert signed_overlay(original, heatmap * 2 - 1).shape == (37, 53, 3)


@pytest.mark.parametrize(
    "original",
    [
        np.linspace(0, 1, 12 * 9, dtype=np.float32).reshape(12, 9),
        np.linspace(0, 1, 12 * 9, dtype=np.float64).reshape(12, 9, 1),
        np.arange(12 * 9 * 3, dtype=np.uint8).reshape(12, 9, 3),
        np.arange(12 * 9, dtype=np.uint16).reshape(12, 9) * 100,
    ],
)
def test_alpha_zero_returns_the_original_as_rgb(original):
    result = heatmap_overlay(original, np.ones((3, 3)), alpha=0.0)
    assert np.array_equal(result, to_rgb_uint8(original))
    assert result.shape == (12, 9, 3)


def test_to_rgb_uint8_conversions():
    assert np.array_equal(to_rgb_uint8(np.array([[0.0, 1.0]]))[0, :, 0], [0, 255])
    assert np.array_equal(to_rgb_uint8(np.array([[0.0, 255.0]]))[0, :, 0], [0, 255])  # float 0..255
    assert np.array_equal(to_rgb_uint8(np.array([[100, 4000]], np.uint16))[0, :, 0], [0, 255])
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., 0] = 9
    assert to_rgb_uint8(rgba).shape == (2, 2, 3) and to_rgb_uint8(rgba)[0, 0, 0] == 9
    with pytest.raises(ValueError):
        to_rgb_uint8(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError):
        heatmap_overlay(np.zeros((4, 4)), np.zeros((4, 4)), alpha=1.5)


def test_signed_overlay_green_positive_red_negative():
    original = np.full((4, 4), 0.5, np.float32)
    signed = np.zeros((4, 4))
    signed[:, :2], signed[:, 2:] = 1.0, -1.0
    result = signed_overlay(original, signed, alpha=0.8).astype(int)
    assert result[0, 0, 1] > result[0, 0, 0] and result[0, 0, 1] > result[0, 0, 2]
    assert result[0, 3, 0] > result[0, 3, 1] and result[0, 3, 0] > result[0, 3, 2]
    unchanged = signed_overlay(original, np.zeros((4, 4)))
    assert np.array_equal(unchanged, to_rgb_uint8(original))


def test_png_roundtrip_is_rgb_and_atomic(tmp_path):
    image = np.zeros((5, 7, 3), np.uint8)
    image[..., 0] = 200  # red
    image[1, 2] = [10, 20, 30]
    path = save_png(tmp_path / "sub" / "overlay.png", image)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), image)
    assert np.array_equal(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB), image)
    grey = np.arange(35, dtype=np.uint8).reshape(5, 7)
    assert np.array_equal(np.asarray(Image.open(save_png(tmp_path / "grey.png", grey))), grey)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["grey.png", "overlay.png", "sub"]
    with pytest.raises(ValueError):
        save_png(tmp_path / "bad.png", image.astype(np.float32))


def test_npy_roundtrip_is_atomic(tmp_path):
    array = np.random.default_rng(0).random((3, 4)).astype(np.float32)
    path = save_npy(tmp_path / "map.npy", array)
    assert np.array_equal(np.load(path), array)
    save_npy(path, array * 2)  # overwrite in place
    assert np.array_equal(np.load(path), array * 2)
    assert [p.name for p in tmp_path.iterdir()] == ["map.npy"]
