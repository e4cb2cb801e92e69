"""Input saliency: exact on a linear model, complete as IG steps grow, occlusion finds the spot, the same on JAX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from medlens.models.classifier import build_classifier
from medlens.pipelines.saliency import (
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
    VanillaGradient,
    window_starts,
)

REPO = Path(__file__).resolve().parents[1]


def linear_model() -> keras.Model:
    """Flatten → Dense(3, softmax): the logit of class c is w_c · x + b_c exactly."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_gradients_and_integrated_gradients_are_exact_on_a_linear_model():
    model = linear_model()
    kernel = np.asarray(model.get_layer("probabilities").kernel).reshape(6, 6, 2, 3)
    images = np.random.default_rng(1).random((4, 6, 6, 2)).astype("float32")
    vanilla = VanillaGradient(model)(images, class_index=[0, 1, 2, 1])
    for i, c in enumerate([0, 1, 2, 1]):
        raw = np.abs(kernel[..., c]).max(axis=-1)  # |∂z_c/∂x| = |w_c|, max over channels
        np.testing.assert_allclose(vanilla.raw[i], raw, rtol=1e-4)
    baseline = np.full((6, 6, 2), 0.25, "float32")
    ig = IntegratedGradients(model, steps=3, baseline=baseline)(images, class_index=2)
    expected = np.clip(((images - baseline) * kernel[..., 2]).sum(axis=-1), 0, None)
    np.testing.assert_allclose(ig.raw, expected, rtol=1e-4, atol=1e-6)
    assert np.all(ig.extras["completeness"] < 1e-4)  # a linear score's path integral is exact at any step count


def test_completeness_improves_with_steps_and_smoothgrad_is_seeded():
    model = build_classifier("small_cnn", 2, (32, 32, 3), weights="none", head_norm="none")
    images = (np.random.default_rng(2).random((3, 32, 32, 3)) * 255).astype("float32")
    coarse = IntegratedGradients(model, steps=2, baseline="blur")(images, class_index=1).extras["completeness"]
    fine = IntegratedGradients(model, steps=64, baseline="blur")(images, class_index=1).extras["completeness"]
    # Measured (relative errors): 2 steps 1.33 / 0.004 / 0.23, 64 steps 0.099 / 0.005 / 0.022.
    assert fine.mean() < 0.5 * coarse.mean() and np.median(fine) < 0.05, (coarse, fine)
    one = SmoothGrad(model, samples=4, seed=3)(images, class_index=1)
    again = SmoothGrad(model, samples=4, seed=3)(images, class_index=1)
    other = SmoothGrad(model, samples=4, seed=4)(images, class_index=1)
    np.testing.assert_array_equal(one.maps, again.maps)
    assert not np.array_equal(one.maps, other.maps)
    assert one.maps.shape == (3, 32, 32) and one.maps.max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="baseline must be black, blur or an array"):
        IntegratedGradients(model, baseline="white")


def spot_detector() -> keras.Model:
    """Mean of a 3×3 neighbourhood, its maximum over the image, then a fixed softmax: p(1) rises with the brightest spot."""
    inputs = keras.Input((32, 32, 3))
    local = keras.layers.Conv2D(1, 3, padding="same", name="mean3", use_bias=False)(inputs)
    peak = keras.layers.GlobalMaxPooling2D()(local)
    outputs = keras.layers.Dense(2, activation="softmax", name="probabilities")(peak)
    model = keras.Model(inputs, outputs)
    model.get_layer("mean3").set_weights([np.full((3, 3, 3, 1), 1 / 27, "float32")])
    model.get_layer("probabilities").set_weights([np.array([[-0.02, 0.02]], "float32"), np.array([2.5, -2.5], "float32")])
    return model


def test_occlusion_finds_the_spot_and_matches_a_direct_computation():
    model = spot_detector()
    images = np.full((2, 32, 32, 3), 20.0, "float32")
    images[0, 20:24, 6:10] = 220.0
    images[1, 4:8, 24:28] = 220.0
    occlusion = Occlusion(model, window=0.25, stride=0.5, fill="blur", batch_size=7)
    result = occlusion(images, class_index=1)
    assert result.maps.shape == (2, 32, 32) and not result.empty.any()
    for i, (rows, cols) in enumerate(((slice(20, 24), slice(6, 10)), (slice(4, 8), slice(24, 28)))):
        row, col = np.unravel_index(result.maps[i].argmax(), (32, 32))
        assert rows.start - 4 <= row < rows.stop + 4 and cols.start - 4 <= col < cols.stop + 4, (i, row, col)
        far = np.ones((32, 32), bool)
        far[max(0, rows.start - 8):rows.stop + 8, max(0, cols.start - 8):cols.stop + 8] = False
        assert result.maps[i][far].max() < 1e-6  # hiding background changes nothing
    # The raw map by hand: each window's probability drop, averaged over the windows covering a pixel.
    fill = np.stack([cv2.GaussianBlur(im, (0, 0), 0.05 * 32) for im in images])
    base = np.asarray(model.predict_on_batch(images))[:, 1]
    total, cover, drops = np.zeros((2, 32, 32)), np.zeros((32, 32)), []
    positions = occlusion.windows(32, 32)
    assert len(positions) == 49 and positions[-1] == (24, 24, 8)  # 8-px windows every 4 px, flush with the edge
    for r, c, side in positions:
        hidden = images.copy()
        hidden[:, r:r + side, c:c + side] = fill[:, r:r + side, c:c + side]
        drop = base - np.asarray(model.predict_on_batch(hidden))[:, 1]
        drops.append(drop)
        total[:, r:r + side, c:c + side] += drop[:, None, None]
        cover[r:r + side, c:c + side] += 1
    np.testing.assert_allclose(result.raw, total / cover, atol=1e-6)
    np.testing.assert_allclose(result.extras["max_drop"], np.max(drops, axis=0), atol=1e-6)
    assert result.extras["max_drop"].min() > 0.3  # hiding the spot changes the answer
    assert window_starts(30, 8, 4) == [0, 4, 8, 12, 16, 20, 22]
    with pytest.raises(ValueError, match="fill must be blur or black"):
        Occlusion(model, fill="white")


JAX_CHILD = """
import sys, numpy as np, keras
from medlens.pipelines.saliency import IntegratedGradients, VanillaGradient
inputs = keras.Input((6, 6, 2))
outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(keras.layers.Flatten()(inputs))
model = keras.Model(inputs, outputs)
model.load_weights(sys.argv[1] + "/linear.weights.h5")
images = np.load(sys.argv[1] + "/images.npy")
np.savez(sys.argv[1] + "/jax.npz", vanilla=VanillaGradient(model)(images, class_index=1).raw,
         ig=IntegratedGradients(model, steps=4, baseline="blur")(images, class_index=0).raw)
"""


@pytest.mark.slow
def test_jax_backend_gives_the_same_maps(tmp_path):
    model = linear_model()
    model.save_weights(tmp_path / "linear.weights.h5")
    images = np.random.default_rng(5).random((2, 6, 6, 2)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    script = tmp_path / "child.py"
    script.write_text(JAX_CHILD)
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "jax.npz")
    np.testing.assert_allclose(got["vanilla"], VanillaGradient(model)(images, class_index=1).raw, rtol=1e-4)
    np.testing.assert_allclose(got["ig"], IntegratedGradients(model, steps=4, baseline="blur")(images, class_index=0).raw,
                               rtol=1e-4, atol=1e-6)
