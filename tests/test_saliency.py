"""Input-gradient saliency: exact on a linear model, complete as IG steps grow, the same on JAX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from medlens.models.classifier import build_classifier
from medlens.pipelines.saliency import IntegratedGradients, SmoothGrad, VanillaGradient

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
