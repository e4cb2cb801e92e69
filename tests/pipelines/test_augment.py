"""Tests for medlens.pipelines.augment: presets, image/mask alignment, seeding."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from medlens.pipelines.augment import PRESETS, augment, build_augmentation


def _asymmetric_image(channels: int = 1, size: int = 64) -> np.ndarray:
    """Bright band in the top quarter only, so a vertical flip is unmistakable."""
    image = np.full((size, size, channels), 0.1, np.float32)
    image[: size // 4, :, :] = 0.9
    return image


def _square(size: int = 64, top: int = 12, left: int = 20, side: int = 14) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((size, size, 1), np.float32)
    image[top : top + side, left : left + side] = 1.0
    mask = np.zeros((size, size), np.uint8)
    mask[top : top + side, left : left + side] = 1
    return image, mask


def test_presets_build() -> None:
    assert build_augmentation("none") is None
    for preset in PRESETS[1:]:
        assert build_augmentation(preset) is not None


def test_unknown_preset() -> None:
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        build_augmentation("ct")


def test_none_transform_is_identity() -> None:
    image = _asymmetric_image()
    out, mask = augment(None, image)
    assert mask is None
    np.testing.assert_array_equal(out, image)


def test_xray_never_flips_vertically() -> None:
    transform = build_augmentation("xray")
    image = _asymmetric_image()
    for seed in range(200):
        out, _ = augment(transform, image, seed=seed)
        top = out[:16].mean()
        bottom = out[-16:].mean()
        assert top > bottom, f"seed {seed}: top {top:.3f} <= bottom {bottom:.3f}"


def test_tumour_does_flip_sometimes() -> None:
    transform = build_augmentation("tumour")
    image = _asymmetric_image()
    changed = 0
    for seed in range(50):
        out, _ = augment(transform, image, seed=seed)
        changed += int(out[:16].mean() < out[-16:].mean() or out[:, :16].mean() > out[:, -16:].mean())
    assert changed > 5


@pytest.mark.parametrize("preset", ["xray", "tumour", "fundus"])
def test_mask_stays_aligned(preset: str) -> None:
    transform = build_augmentation(preset)
    image, mask = _square()
    for seed in range(30):
        out, out_mask = augment(transform, image, mask, seed=seed)
        assert out_mask is not None and out_mask.dtype == np.uint8
        assert set(np.unique(out_mask)) <= {0, 1}
        bright = np.argwhere(out[..., 0] > 0.5)
        labelled = np.argwhere(out_mask > 0)
        if len(labelled) < 20 or len(bright) < 20:
            continue  # square pushed (mostly) out of frame
        distance = np.linalg.norm(bright.mean(axis=0) - labelled.mean(axis=0))
        assert distance < 2.0, f"{preset} seed {seed}: centroids {distance:.2f} px apart"


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_dtypes_ranges(preset: str, channels: int) -> None:
    transform = build_augmentation(preset)
    rng = np.random.default_rng(0)
    image = rng.random((48, 48, channels), dtype=np.float32)
    mask = (rng.random((48, 48)) > 0.5).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(10):
            out, out_mask = augment(transform, image, mask, seed=seed)
            assert out.shape == image.shape
            assert out.dtype == np.float32
            assert out.min() >= 0.0 and out.max() <= 1.0
            assert out_mask is not None and out_mask.shape == mask.shape and out_mask.dtype == mask.dtype


def test_two_dimensional_image_accepted() -> None:
    out, _ = augment(build_augmentation("xray"), np.zeros((32, 32), np.float32), seed=0)
    assert out.shape == (32, 32, 1)


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError, match="C in"):
        augment(build_augmentation("xray"), np.zeros((8, 8, 2), np.float32))
    with pytest.raises(ValueError, match="mask shape"):
        augment(build_augmentation("xray"), np.zeros((8, 8, 1), np.float32), np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("preset", ["xray", "tumour", "fundus"])
def test_reproducible_with_seed(preset: str) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((40, 40, 3), dtype=np.float32)
    mask = (rng.random((40, 40)) > 0.5).astype(np.uint8)
    first = augment(build_augmentation(preset), image, mask, seed=7)
    second = augment(build_augmentation(preset), image, mask, seed=7)
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    outputs = [augment(build_augmentation(preset), image, seed=s)[0] for s in range(8)]
    assert any(not np.array_equal(outputs[0], other) for other in outputs[1:])


def test_rng_argument_reproducible() -> None:
    image = _asymmetric_image(3)
    transform = build_augmentation("fundus")
    a, _ = augment(transform, image, rng=np.random.default_rng(3))
    b, _ = augment(transform, image, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
