"""Input saliency: exact on a linear model, guided backprop exact on a ReLU network, complete as IG steps grow, occlusion finds the spot, the same on JAX."""

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
from medlens.pipelines.explain.guided import GuidedBackprop, guided_stand_in
from medlens.pipelines.explain.saliency import (
    IntegratedGradients,
    Occlusion,
    SmoothGrad,
    VanillaGradient,
    window_starts,
)

REPO = Path(__file__).resolve().parents[2]


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
from medlens.pipelines.explain.saliency import IntegratedGradients, VanillaGradient
inputs = keras.Input((6, 6, 2))
outputs = keras.layers.Dense(3, activation="softmax", name="probabilities")(keras.layers.Flatten()(inputs))
model = keras.Model(inputs, outputs)
model.load_weights(sys.argv[1] + "/linear.weights.h5")
images = np.load(sys.argv[1] + "/images.npy")
from medlens.pipelines.explain.guided import GuidedBackprop
relu = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                         keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(5, activation="relu"),
                         keras.layers.Dense(2, activation="softmax")])
relu.load_weights(sys.argv[1] + "/relu.weights.h5")
np.savez(sys.argv[1] + "/jax.npz", vanilla=VanillaGradient(model)(images, class_index=1).raw,
         ig=IntegratedGradients(model, steps=4, baseline="blur")(images, class_index=0).raw,
         guided=GuidedBackprop(relu).gradients(images, np.array([1, 0], np.int32))[0])
"""


def relu_model() -> keras.Model:
    """Conv2D(relu) → ReLU → Dense(relu) → Dense(softmax): every kind of ReLU guided backprop swaps."""
    keras.utils.set_random_seed(3)
    return keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
                             keras.layers.ReLU(), keras.layers.Flatten(), keras.layers.Dense(5, activation="relu"),
                             keras.layers.Dense(2, activation="softmax")])


@pytest.mark.slow
def test_jax_backend_gives_the_same_maps(tmp_path):
    model = linear_model()
    model.save_weights(tmp_path / "linear.weights.h5")
    relu = relu_model()
    relu.save_weights(tmp_path / "relu.weights.h5")
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
    guided = GuidedBackprop(relu).gradients(images, np.array([1, 0], np.int32))[0]
    np.testing.assert_allclose(got["guided"], guided, rtol=1e-4, atol=1e-6)


def linear_segmenter(channels: int = 1) -> keras.Model:
    """A 1×1 convolution: pixel p's logit is w · x_p + b exactly (sigmoid, or softmax over ``channels``)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 2))
    outputs = keras.layers.Conv2D(channels, 1, activation="sigmoid" if channels == 1 else "softmax",
                                  name="logits")(inputs)
    return keras.Model(inputs, outputs)


def test_every_input_method_explains_a_region_of_a_segmentation_output_exactly():
    model = linear_segmenter()
    w = np.asarray(model.get_layer("logits").kernel).reshape(2)
    images = np.random.default_rng(2).random((2, 8, 8, 2)).astype("float32")
    regions = np.zeros((2, 8, 8), "float32")
    regions[0, 1:4, 2:6] = 1.0
    regions[1, 5:8, 0:3] = 1.0
    vanilla = VanillaGradient(model)(images, regions=regions)
    # d(Σ_{p∈R} z_p)/dx_q = w for q in R, 0 elsewhere: |w| max over channels, inside the region only
    np.testing.assert_allclose(vanilla.raw, regions * np.abs(w).max(), rtol=1e-5)
    assert vanilla.probabilities.shape == (2, 8, 8, 2) and vanilla.class_index.tolist() == [1, 1]
    baseline = np.full((8, 8, 2), 0.5, "float32")
    ig = IntegratedGradients(model, steps=2, baseline=baseline)(images, regions=regions)
    expected = np.clip(((images - baseline) * w).sum(axis=-1) * regions, 0, None)
    np.testing.assert_allclose(ig.raw, expected, rtol=1e-4, atol=1e-6)
    assert np.all(ig.extras["completeness"] < 1e-4)  # the summed region logit is linear: the integral is exact
    smooth = SmoothGrad(model, samples=3, noise=0.1)(images, regions=regions)
    np.testing.assert_allclose(smooth.raw, vanilla.raw, rtol=1e-5)  # a constant gradient: noise cannot move it

    # Occlusion: the drop of the region's mean probability, by a direct computation for one window.
    occlusion = Occlusion(model, window=0.5, stride=1.0, fill="black")  # four 4×4 windows
    result = occlusion(images, regions=regions)
    probability = model.predict_on_batch(images)[..., 0]
    hidden = images.copy()
    hidden[:, 0:4, 0:4] = 0.0
    drop = (probability * regions).sum((1, 2)) / regions.sum((1, 2)) - \
        (model.predict_on_batch(hidden)[..., 0] * regions).sum((1, 2)) / regions.sum((1, 2))
    np.testing.assert_allclose(result.raw[:, 0, 0], drop, rtol=1e-4, atol=1e-6)
    assert abs(result.raw[1, 0, 0]) < 1e-6  # image 1's region lies outside the top-left window

    # A multi-class output: class_index names the channel; an index past the channels is refused.
    softmax = linear_segmenter(channels=3)
    kernel = np.asarray(softmax.get_layer("logits").kernel).reshape(2, 3)
    explained = VanillaGradient(softmax)(images, class_index=2, regions=regions)
    np.testing.assert_allclose(explained.raw, regions * np.abs(kernel[:, 2]).max(), rtol=1e-5)
    with pytest.raises(ValueError, match="class_index must be in 0..2"):
        VanillaGradient(softmax)(images, class_index=3, regions=regions)


def test_guided_backprop_passes_only_positive_gradient_through_each_relu():
    # Flatten → Dense(relu) → Dense(softmax): by hand, the guided input gradient of class c is
    # W1 · (w2_c ⊙ [pre > 0] ⊙ [w2_c > 0]); the vanilla one drops the [w2_c > 0] factor.
    keras.utils.set_random_seed(0)
    inputs = keras.Input((1, 1, 5))
    hidden = keras.layers.Dense(7, activation="relu", name="hidden")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(hidden))
    w1, b1 = (np.asarray(v) for v in model.get_layer("hidden").weights)
    w2 = np.asarray(model.get_layer("probabilities").kernel)
    images = np.random.default_rng(0).normal(size=(6, 1, 1, 5)).astype("float32")
    classes = np.array([0, 1, 2, 0, 1, 2], np.int32)
    guided, _ = GuidedBackprop(model).gradients(images, classes)
    vanilla, _ = VanillaGradient(model).gradients(images, classes)
    for i, c in enumerate(classes):
        active = (images[i].reshape(5) @ w1 + b1) > 0
        np.testing.assert_allclose(guided[i].ravel(), w1 @ (w2[:, c] * active * (w2[:, c] > 0)), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(vanilla[i].ravel(), w1 @ (w2[:, c] * active), rtol=1e-4, atol=1e-6)
    assert not np.allclose(guided, vanilla)  # some upstream gradients were negative, and guided dropped them

    # Every kind of ReLU gets a stand-in, computed with the original's weights: the forward pass is unchanged.
    relu = relu_model()
    assert [type(guided_stand_in(layer)).__name__ for layer in relu.layers] == ["_Guided", "_Guided", "NoneType",
                                                                                 "_Guided", "NoneType"]
    batch = np.random.default_rng(1).random((3, 6, 6, 2)).astype("float32")
    result = GuidedBackprop(relu)(batch, class_index=1)
    np.testing.assert_allclose(result.probabilities[:, 1], np.asarray(relu.predict_on_batch(batch))[:, 1], rtol=1e-5)
    assert result.maps.shape == (3, 6, 6) and not np.allclose(result.raw, VanillaGradient(relu)(batch, class_index=1).raw)
