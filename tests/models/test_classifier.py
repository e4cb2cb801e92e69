"""Tests for medlens.models.classifier: head shapes, freezing phases, save/load."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from medlens.models.backbones import backbone_blocks
from medlens.models.classifier import (
    build_classifier,
    freeze_backbone,
    get_backbone,
    unfreeze_top_blocks,
)
from medlens.pipelines.errors import ConfigError

# Keras-internal numpy 2 notice raised while saving variables on the TensorFlow backend.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = (32, 32, 3)


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setenv("MEDLENS_OFFLINE", "1")
    keras.utils.set_random_seed(0)


def _batch(num_classes: int, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (size, *SMALL)).astype(np.float32)
    labels = np.arange(size) % num_classes
    y = labels.astype(np.float32) if num_classes == 2 else np.eye(num_classes, dtype=np.float32)[labels]
    return x, y


def _fit_one_step(model: keras.Model, num_classes: int = 2) -> None:
    loss = "binary_crossentropy" if num_classes == 2 else "categorical_crossentropy"
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)
    x, y = _batch(num_classes)
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0)


def _layer_weights(model: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in model.layers if layer.weights}


def _changed(before: dict[str, list[np.ndarray]], after: dict[str, list[np.ndarray]]) -> set[str]:
    return {
        name
        for name in before
        if any(not np.array_equal(a, b) for a, b in zip(before[name], after[name], strict=True))
    }


def test_binary_head_is_one_sigmoid() -> None:
    model = build_classifier("small_cnn", 2, SMALL, weights="none")
    probabilities = np.asarray(model.predict(_batch(2)[0], verbose=0))
    assert probabilities.shape == (8, 1)
    assert np.all((probabilities >= 0) & (probabilities <= 1))
    assert model.get_layer("probabilities").activation.__name__ == "sigmoid"
    assert model.input_shape == (None, *SMALL) and model.layers[0].name == "image"


def test_multiclass_head_is_softmax() -> None:
    model = build_classifier("vgg16", 4, SMALL, weights="none", pooling="max", dense_units=0, dropout=0.0)
    probabilities = np.asarray(model.predict(_batch(4)[0], verbose=0))
    assert probabilities.shape == (8, 4)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert "head_dense" not in [layer.name for layer in model.layers]


def test_backbone_is_nested_layer_with_original_layer_names() -> None:
    model = build_classifier("vgg16", 2, SMALL, weights="none")
    backbone = get_backbone(model)
    assert backbone is model.get_layer("backbone")
    assert isinstance(backbone, keras.Model)
    assert backbone.get_layer("block5_conv3") is not None
    assert len(backbone.output.shape) == 4


def test_bad_head_settings() -> None:
    with pytest.raises(ConfigError, match="num_classes"):
        build_classifier("small_cnn", 1, SMALL, "none")
    with pytest.raises(ConfigError, match="pooling"):
        build_classifier("small_cnn", 2, SMALL, "none", pooling="sum")
    with pytest.raises(ConfigError, match="dropout"):
        build_classifier("small_cnn", 2, SMALL, "none", dropout=1.0)


def test_frozen_backbone_weights_really_unchanged() -> None:
    model = build_classifier("small_cnn", 2, SMALL, weights="none")
    freeze_backbone(model)
    backbone = get_backbone(model)
    assert backbone.trainable_weights == []
    before_backbone = [np.array(w) for w in backbone.get_weights()]  # BN moving stats included
    before_head = _layer_weights(model)
    _fit_one_step(model)
    after_backbone = backbone.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(before_backbone, after_backbone, strict=True))
    assert {"head_norm", "head_dense", "probabilities"} <= _changed(before_head, _layer_weights(model))


@pytest.mark.parametrize(
    ("name", "top_layers"),
    [
        ("small_cnn", ["block4_conv1"]),
        ("vgg16", ["block5_conv1", "block5_conv2", "block5_conv3"]),
    ],
)
def test_unfreeze_top_block_only(name: str, top_layers: list[str]) -> None:
    model = build_classifier(name, 2, SMALL, weights="none")
    freeze_backbone(model)
    made_trainable = unfreeze_top_blocks(model, 1, name)
    assert made_trainable == top_layers
    backbone = get_backbone(model)
    trainable = [layer.name for layer in backbone.layers if layer.trainable and layer.weights]
    assert trainable == top_layers
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            assert not layer.trainable
    head_weights = 2 + 2 + 2  # head_norm scale and offset, head_dense + probabilities kernels and biases
    assert len(model.trainable_weights) == head_weights + sum(
        len(backbone.get_layer(n).trainable_weights) for n in top_layers
    )

    before = _layer_weights(backbone)
    _fit_one_step(model)
    changed = _changed(before, _layer_weights(backbone))
    assert changed == set(top_layers)  # lower blocks and every BN untouched


def test_unfreeze_counts_are_clamped() -> None:
    model = build_classifier("small_cnn", 3, SMALL, weights="none")
    everything = unfreeze_top_blocks(model, 99)
    assert everything == [f"block{i}_conv1" for i in range(1, 5)]
    assert unfreeze_top_blocks(model, 0) == []
    assert get_backbone(model).trainable_weights == []
    with pytest.raises(ConfigError, match="0 or more"):
        unfreeze_top_blocks(model, -1)


def test_save_load_round_trip(tmp_path: Path) -> None:
    model = build_classifier("small_cnn", 3, SMALL, weights="none")
    unfreeze_top_blocks(model, 2)
    _fit_one_step(model, num_classes=3)
    x = _batch(3)[0]
    expected = np.asarray(model.predict(x, verbose=0))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded.predict(x, verbose=0)), expected, rtol=1e-5, atol=1e-6)
    assert len(backbone_blocks(get_backbone(loaded))) == 4
    assert unfreeze_top_blocks(loaded, 1) == ["block4_conv1"]


def test_head_normalises_pooled_features_unless_asked_not_to() -> None:
    model = build_classifier("vgg16", 2, SMALL, weights="none")
    norm = model.get_layer("head_norm")
    assert isinstance(norm, keras.layers.BatchNormalization)
    names = [layer.name for layer in model.layers]
    assert names.index("pool") < names.index("head_norm") < names.index("head_dense")
    freeze_backbone(model)
    assert norm.trainable and len(norm.trainable_weights) == 2  # learned with the head in phase 1
    plain = build_classifier("vgg16", 2, SMALL, weights="none", head_norm="none")
    assert "head_norm" not in [layer.name for layer in plain.layers]
    with pytest.raises(ConfigError, match="head_norm"):
        build_classifier("small_cnn", 2, SMALL, "none", head_norm="layer")
