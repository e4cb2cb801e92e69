"""Grad-CAM and its variants on nested transfer classifiers, plain CNNs, batches and backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest

from medlens.models.backbones import preprocess_function
from medlens.models.classifier import build_classifier
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.explain.gradcam import CamResult, GradCAM, build_gradient_model, find_target_layer
from medlens.pipelines.explain.gradcam_plus_plus import GradCAMPlusPlus, HiResCAM, LayerCAM
from medlens.pipelines.explain.gradients import class_score_gradients
from medlens.pipelines.phantoms import make_phantom

REPO = Path(__file__).resolve().parents[2]
SIZE = 32
# Backbone → (number of classes, expected automatic target layer).
NESTED = {
    "vgg16": (2, "block5_conv3"),
    "vgg19": (3, "block5_conv4"),
    "resnet50": (2, "conv5_block3_out"),
    "resnet50v2": (2, "post_relu"),
    "densenet121": (2, "relu"),
    "small_cnn": (3, "block4_relu"),
}


@cache
def nested_classifier(backbone: str) -> keras.Model:
    keras.utils.set_random_seed(1)
    return build_classifier(backbone, NESTED[backbone][0], (SIZE, SIZE, 3), weights="none")


@cache
def explainer(backbone: str) -> GradCAM:
    return GradCAM(nested_classifier(backbone))


def images_for(backbone: str, count: int = 3, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).uniform(0, 255, (count, SIZE, SIZE, 3)).astype(np.float32)
    return np.asarray(preprocess_function(backbone)(pixels), np.float32)


def plain_sequential() -> keras.Model:
    keras.utils.set_random_seed(2)
    return keras.Sequential(
        [
            keras.Input((SIZE, SIZE, 3)),
            keras.layers.Conv2D(8, 3, activation="relu", name="conv1"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
            keras.layers.MaxPooling2D(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )


def plain_functional() -> keras.Model:
    keras.utils.set_random_seed(3)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.Activation("relu", name="last_relu")(x)
    x = keras.layers.MaxPooling2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="out")(x)
    return keras.Model(inputs, outputs)


def check_result(result: CamResult, count: int, num_classes: int) -> None:
    assert result.maps.shape == (count, SIZE, SIZE)
    assert result.maps.dtype == np.float32
    assert np.all(np.isfinite(result.maps))
    assert result.maps.min() >= 0.0 and result.maps.max() <= 1.0
    assert np.all(result.raw >= 0.0) and result.raw.ndim == 3 and result.raw.shape[0] == count
    assert result.probabilities.shape == (count, num_classes)
    assert result.class_index.shape == (count,)
    np.testing.assert_array_equal(result.class_index, result.probabilities.argmax(axis=1))


def check_gradients(cam: GradCAM, images: np.ndarray) -> None:
    activations, gradients, _ = class_score_gradients(cam.gradient_model(), images, [-1] * len(images))
    assert gradients is not None and gradients.shape == activations.shape
    assert np.all(np.isfinite(gradients))
    assert np.abs(gradients).reshape(len(images), -1).max(axis=1).max() > 0.0


@pytest.mark.parametrize("backbone", list(NESTED))
def test_nested_classifiers(backbone):
    num_classes, layer = NESTED[backbone]
    cam = explainer(backbone)
    assert cam.layer == layer
    assert [part.name for part in find_target_layer(cam.model)] == ["backbone", layer]
    images = images_for(backbone)
    result = cam(images)
    check_result(result, 3, num_classes)
    assert result.layer == layer
    # Random weights may leave the predicted class no positive evidence (1×1 maps at 32 px);
    # some class must have some.
    assert not result.empty.all() or any(
        not cam(images, class_index=c).empty.all() for c in range(num_classes)
    )
    check_gradients(cam, images)


@pytest.mark.parametrize(
    ("build", "layer", "num_classes"),
    [(plain_sequential, "conv2", 3), (plain_functional, "last_relu", 2)],
    ids=["sequential", "functional"],
)
def test_plain_cnns(build, layer, num_classes):
    images = np.random.default_rng(4).uniform(0, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    for method in (GradCAM, GradCAMPlusPlus):
        cam = method(build())
        assert cam.layer == layer
        result = cam(images)
        check_result(result, 3, num_classes)
        assert not result.empty.all()
        check_gradients(cam, images)


@pytest.mark.parametrize("backbone", ["small_cnn", "vgg16"])
def test_batch_equals_single_images(backbone):
    cam = explainer(backbone)
    images = images_for(backbone, seed=5)
    batch = cam(images)
    assert not batch.empty[1] and batch.maps[1].max() == pytest.approx(1.0)
    for i in range(len(images)):
        alone = cam(images[i : i + 1])
        np.testing.assert_allclose(alone.maps[0], batch.maps[i], atol=1e-5)
        np.testing.assert_allclose(alone.raw[0], batch.raw[i], rtol=1e-4, atol=1e-7)
        assert alone.class_index[0] == batch.class_index[i]
    # Probabilities are the model's own.
    expected = np.asarray(cam.model.predict_on_batch(images))
    if expected.shape[1] == 1:
        expected = np.concatenate([1 - expected, expected], axis=1)
    np.testing.assert_allclose(batch.probabilities, expected, atol=1e-5)


def test_class_index_per_image():
    cam = explainer("small_cnn")
    images = images_for("small_cnn", seed=6)
    chosen = cam(images, class_index=[2, 0, 1])
    np.testing.assert_array_equal(chosen.class_index, [2, 0, 1])
    for i, class_index in enumerate([2, 0, 1]):
        alone = cam(images[i : i + 1], class_index=class_index)
        np.testing.assert_allclose(alone.maps[0], chosen.maps[i], atol=1e-5)
    everyone = cam(images, class_index=1)
    np.testing.assert_array_equal(everyone.class_index, [1, 1, 1])
    # Different classes give different evidence.
    assert not np.allclose(cam(images, class_index=0).raw, cam(images, class_index=2).raw)


def test_batches_larger_than_batch_size():
    model = nested_classifier("small_cnn")
    images = images_for("small_cnn", count=5, seed=7)
    whole = explainer("small_cnn")(images)
    split = GradCAM(model, batch_size=2)(images)
    np.testing.assert_allclose(split.maps, whole.maps, atol=1e-5)


def test_gradcam_plus_plus_batched():
    cam = GradCAMPlusPlus(nested_classifier("small_cnn"))
    images = images_for("small_cnn", seed=8)
    batch = cam(images)
    check_result(batch, 3, 3)
    assert not batch.empty.any()
    for i in range(len(images)):
        np.testing.assert_allclose(cam(images[i : i + 1]).maps[0], batch.maps[i], atol=1e-5)
    assert not np.allclose(batch.raw, explainer("small_cnn")(images).raw)


def test_hirescam_and_layercam_from_the_same_gradients():
    keras.utils.set_random_seed(3)
    images = np.random.default_rng(4).random((3, SIZE, SIZE, 3)).astype(np.float32) * 255
    for pooling in ("avg", "max"):
        inputs = keras.Input((SIZE, SIZE, 3))
        features = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(keras.layers.Rescaling(1 / 255)(inputs))
        pooled = (keras.layers.GlobalAveragePooling2D() if pooling == "avg" else keras.layers.GlobalMaxPooling2D())(
            features)
        model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="probabilities")(pooled))
        hires, layer, grad = HiResCAM(model)(images, 1), LayerCAM(model)(images, 1), GradCAM(model)(images, 1)
        grad_model = build_gradient_model(model, hires.layer)
        activations, gradients, _ = class_score_gradients(grad_model, images, [1, 1, 1])
        np.testing.assert_allclose(hires.raw, np.maximum((activations * gradients).sum(-1), 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layer.raw, (activations * np.maximum(gradients, 0)).sum(-1), rtol=1e-5, atol=1e-6)
        if pooling == "avg":  # a linear head on the averaged map: HiRes-CAM is Grad-CAM (Draelos & Carin 2020)
            np.testing.assert_allclose(hires.raw, grad.raw, rtol=1e-4, atol=1e-6)
        else:  # max pooling: the gradient sits on one position per channel, the two differ
            assert not np.allclose(hires.raw, grad.raw, atol=1e-6)


def test_named_layers_inside_and_outside_the_backbone():
    model = nested_classifier("small_cnn")
    images = images_for("small_cnn", count=2)
    inner = GradCAM(model, "block3_relu")(images)
    assert inner.layer == "block3_relu" and inner.raw.shape == (2, 8, 8)
    check_result(inner, 2, 3)
    whole_backbone = GradCAM(model, "backbone")(images)
    assert whole_backbone.raw.shape == (2, 2, 2)
    check_result(whole_backbone, 2, 3)


def test_frozen_model_still_has_gradients():
    keras.utils.set_random_seed(9)
    model = build_classifier("small_cnn", 2, (SIZE, SIZE, 3), weights="none")
    model.trainable = False
    cam = GradCAM(model)
    check_result(cam(images_for("small_cnn")), 3, 2)
    check_gradients(cam, images_for("small_cnn"))


def test_no_positive_evidence_gives_flagged_zero_map():
    model = plain_functional()
    conv = model.get_layer("conv1")
    conv.set_weights([np.zeros_like(w) for w in conv.get_weights()])
    result = GradCAM(model)(np.ones((2, SIZE, SIZE, 3), np.float32))
    assert result.empty.all()
    assert np.all(result.maps == 0.0) and np.all(np.isfinite(result.maps))


def test_errors():
    model = nested_classifier("small_cnn")
    with pytest.raises(ConfigError, match="no layer named 'block4_rleu'.*block4_relu"):
        GradCAM(model, "block4_rleu")
    with pytest.raises(ConfigError, match="4-D"):
        GradCAM(model, "pool")
    with pytest.raises(ConfigError, match="4-D"):
        build_gradient_model(model, "probabilities")
    cam = explainer("small_cnn")
    with pytest.raises(ValueError, match="N×H×W×C"):
        cam(np.zeros((SIZE, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="expects"):
        cam(np.zeros((1, SIZE + 1, SIZE, 3), np.float32))
    with pytest.raises(ValueError, match="class_index"):
        cam(np.zeros((2, SIZE, SIZE, 3), np.float32), class_index=3)
    with pytest.raises(ValueError, match="class_index"):
        cam(np.zeros((2, SIZE, SIZE, 3), np.float32), class_index=[0, 1, 2])


def _phantom_batch(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    phantoms = [make_phantom(48, i % 2, rng) for i in range(count)]
    grey = np.stack([p.image for p in phantoms]).astype(np.float32)
    images = preprocess_function("small_cnn")(np.repeat(grey[..., None], 3, axis=-1))
    return (
        np.asarray(images, np.float32),
        np.array([p.label for p in phantoms]),
        np.stack([p.mask for p in phantoms]),
    )


@pytest.mark.slow
def test_pointing_on_trained_phantom_model():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    train_x, train_y, _ = _phantom_batch(256, rng)
    test_x, test_y, test_masks = _phantom_batch(120, rng)
    model = build_classifier("small_cnn", 2, (48, 48, 3), weights="none", dropout=0.0, dense_units=0)
    model.compile(keras.optimizers.Adam(3e-3), "binary_crossentropy")
    model.fit(train_x, train_y, epochs=6, batch_size=32, verbose=0)
    # Six epochs leave the BatchNorm moving statistics behind the weights: set them to
    # the training set's statistics so inference matches training mode.
    batch_norms = [layer for layer in model.get_layer("backbone").layers if "bn" in layer.name]
    for layer in batch_norms:
        layer.momentum = 0.0
    model(train_x, training=True)
    probabilities = np.asarray(model.predict_on_batch(test_x)).ravel()
    assert np.mean((probabilities > 0.5) == test_y) >= 0.8

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))  # dilate the lesion by 3 px
    rates = {}
    for method in (GradCAM, GradCAMPlusPlus):
        result = method(model)(test_x)
        hits = [
            cv2.dilate(test_masks[i], kernel)[np.unravel_index(result.maps[i].argmax(), (48, 48))] > 0
            for i in np.flatnonzero((test_y == 1) & (result.class_index == 1))
        ]
        assert len(hits) >= 40
        rates[method.__name__] = float(np.mean(hits))
    # Measured 0.85 (Grad-CAM) and 0.87 (Grad-CAM++) on 54 correctly classified positives.
    assert rates["GradCAM"] >= 0.75, rates
    assert rates["GradCAMPlusPlus"] >= 0.75, rates


JAX_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras
    assert keras.backend.backend() == "jax", keras.backend.backend()
    from medlens.models.classifier import build_classifier
    from medlens.pipelines.explain.gradcam import GradCAM

    folder = sys.argv[1]
    spec = json.load(open(folder + "/spec.json"))
    maps = {}
    for name, num_classes in spec.items():
        model = build_classifier(name, num_classes, (32, 32, 3), weights="none")
        model.load_weights(f"{folder}/{name}.weights.h5")
        result = GradCAM(model)(np.load(f"{folder}/{name}_images.npy"))
        assert np.all(np.isfinite(result.maps)) and result.maps.min() >= 0 and result.maps.max() <= 1
        maps[name] = result.maps
        maps[name + "_class"] = result.class_index
    np.savez(folder + "/jax_maps.npz", **maps)
    """
)


@pytest.mark.slow
def test_jax_backend_matches_tensorflow(tmp_path):
    spec = {"small_cnn": NESTED["small_cnn"][0], "vgg16": NESTED["vgg16"][0]}
    expected = {}
    for name in spec:
        nested_classifier(name).save_weights(tmp_path / f"{name}.weights.h5")
        images = images_for(name, seed=10)
        np.save(tmp_path / f"{name}_images.npy", images)
        expected[name] = explainer(name)(images)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    script = tmp_path / "child.py"
    script.write_text(JAX_CHILD)
    # Optimisation level 0: XLA compiles each weight initialiser in the child; this halves
    # the time and changes no result beyond float rounding.
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    }
    done = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "jax_maps.npz")
    for name, result in expected.items():
        np.testing.assert_array_equal(got[name + "_class"], result.class_index)
        np.testing.assert_allclose(got[name], result.maps, atol=1e-4)
