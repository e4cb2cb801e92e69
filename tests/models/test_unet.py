"""U-Net builder: shapes, options, pretrained encoders, freezing, weights files, saving."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from medlens.models.backbones import build_backbone
from medlens.models.unet import (
    build_unet,
    encoder_name,
    freeze_encoder,
    get_encoder,
    unfreeze_encoder,
)
from medlens.pipelines.errors import ConfigError, WeightsError


def layer_types(model: keras.Model) -> list[type]:
    return [type(layer) for layer in model.layers]


@pytest.mark.parametrize(("num_classes", "activation"), [(1, "sigmoid"), (3, "softmax")])
def test_output_shape_and_activation(num_classes, activation):
    model = build_unet((32, 32, 1), num_classes=num_classes, depth=2, filters=4)
    assert model.output_shape == (None, 32, 32, num_classes)
    mask = model.get_layer("mask")
    assert mask.activation.__name__ == activation
    output = model.predict(np.random.default_rng(0).random((2, 32, 32, 1)), verbose=0)
    assert output.min() >= 0.0 and output.max() <= 1.0
    if num_classes > 1:
        np.testing.assert_allclose(output.sum(axis=-1), 1.0, atol=1e-5)


def test_depth_filters_batchnorm_dropout_options():
    model = build_unet((32, 32, 3), depth=3, filters=4, batch_norm=False, dropout=0.3)
    types = layer_types(model)
    assert keras.layers.BatchNormalization not in types
    assert types.count(keras.layers.MaxPooling2D) == 3
    assert model.get_layer("bottleneck_conv1").filters == 4 * 2**3
    assert model.get_layer("bottleneck_dropout").rate == pytest.approx(0.3)
    with_bn = build_unet((32, 32, 3), depth=2, filters=8, level_dropout=0.1, upsampling="bilinear")
    assert layer_types(with_bn).count(keras.layers.BatchNormalization) == 2 * (2 * 2 + 1)
    assert layer_types(with_bn).count(keras.layers.Dropout) == 4
    assert keras.layers.UpSampling2D in layer_types(with_bn)
    assert with_bn.get_layer("enc0_conv1").filters == 8


def test_none_spatial_input_works_at_several_sizes():
    model = build_unet((None, None, 1), depth=3, filters=4)
    for size in (32, 64):
        assert model.predict(np.zeros((1, size, size, 1)), verbose=0).shape == (1, size, size, 1)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (36, 36, 1), "depth": 3}, "divisible by 8"),
        ({"input_shape": (32, 32, 1), "encoder": "vgg16"}, "3-channel"),
        ({"input_shape": (48, 48, 3), "encoder": "resnet50"}, "divisible by 32"),
        ({"encoder": "densenet121"}, "unknown encoder"),
        ({"num_classes": 0}, "num_classes"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_invalid_settings_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_unet(**kwargs)


@pytest.fixture(scope="module")
def vgg_unet() -> keras.Model:
    return build_unet((32, 32, 3), num_classes=1, filters=4, encoder="vgg16", encoder_weights="none")


def test_vgg16_encoder_unet_full_resolution(vgg_unet):
    assert vgg_unet.output_shape == (None, 32, 32, 1)
    encoder = get_encoder(vgg_unet)
    assert [tensor.shape[1] for tensor in encoder.outputs] == [32, 16, 8, 4, 2]
    assert encoder_name(vgg_unet) == "vgg16"
    assert encoder_name(build_unet((32, 32, 1), depth=2, filters=4)) is None


def test_resnet50_encoder_unet_full_resolution_and_frozen_batchnorm():
    model = build_unet((64, 64, 3), num_classes=2, filters=4, encoder="resnet50", encoder_weights="none")
    assert model.output_shape == (None, 64, 64, 2)
    encoder = get_encoder(model)
    assert [tensor.shape[1] for tensor in encoder.outputs] == [32, 16, 8, 4, 2]
    assert model.predict(np.zeros((1, 64, 64, 3)), verbose=0).shape == (1, 64, 64, 2)
    unfreeze_encoder(model)
    assert encoder.trainable and encoder.get_layer("conv2_block1_1_conv").trainable
    assert not encoder.get_layer("conv1_bn").trainable


def test_freeze_encoder_keeps_encoder_weights_during_fit(vgg_unet):
    freeze_encoder(vgg_unet)
    encoder = get_encoder(vgg_unet)
    assert not encoder.trainable
    before_encoder = [w.copy() for w in encoder.get_weights()]
    before_decoder = vgg_unet.get_layer("dec0_conv1").get_weights()[0].copy()
    # Eager: one step of VGG16 runs faster than tracing it.
    vgg_unet.compile(optimizer=keras.optimizers.Adam(1e-2), loss="binary_crossentropy", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3)).astype("float32") * 255
    y = (rng.random((2, 32, 32, 1)) > 0.5).astype("float32")
    vgg_unet.fit(x, y, epochs=1, batch_size=2, verbose=0)
    for old, new in zip(before_encoder, encoder.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.allclose(before_decoder, vgg_unet.get_layer("dec0_conv1").get_weights()[0])
    unfreeze_encoder(vgg_unet)
    assert encoder.trainable
    with pytest.raises(ConfigError, match="no pretrained encoder"):
        freeze_encoder(build_unet((32, 32, 1), depth=2, filters=4))


def test_encoder_weights_from_file(tmp_path):
    backbone = build_backbone("vgg16", (32, 32, 3), weights="none")
    path = tmp_path / "vgg16.weights.h5"
    backbone.save_weights(path)
    model = build_unet((32, 32, 3), filters=4, encoder="vgg16", encoder_weights=str(path))
    encoder = get_encoder(model)
    for name in ("block1_conv1", "block5_conv3"):
        for saved, loaded in zip(
            backbone.get_layer(name).get_weights(), encoder.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(saved, loaded)
    junk = tmp_path / "junk.weights.h5"
    junk.write_text("not weights")
    with pytest.raises(WeightsError, match="junk"):
        build_unet((32, 32, 3), filters=4, encoder="vgg16", encoder_weights=junk)
    with pytest.raises(WeightsError, match="not found"):
        build_unet((32, 32, 3), filters=4, encoder="vgg16", encoder_weights=tmp_path / "missing.h5")


def test_save_and_load_keras_round_trip(tmp_path):
    model = build_unet((None, None, 1), num_classes=3, depth=2, filters=4, dropout=0.2)
    rng = np.random.default_rng(1)
    for layer in model.layers:  # BatchNorm statistics off their initial values, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, layer.moving_variance.shape))
    path = tmp_path / "unet.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("mask").output.shape[-1] == 3
    x = rng.random((2, 32, 32, 1)).astype("float32")
    expected = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x, training=False)), expected, atol=1e-6)


def test_inference_mode_keeps_up_with_training_after_few_steps():
    # 48 steps at a high learning rate, as in the demo: BatchNorm's moving statistics must track the
    # weights, or inference-mode predictions collapse while training-mode ones are fine (with
    # Keras's default momentum 0.99 this scored Dice 0.25 in inference mode against 0.90).
    from medlens.models.losses import get_loss

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[:32, :32]

    def disks(count):
        images = rng.normal(0.3, 0.1, (count, 32, 32, 1)).astype("float32")
        masks = np.zeros((count, 32, 32, 1), "float32")
        for i in range(count):
            cy, cx, r = rng.integers(8, 24), rng.integers(8, 24), rng.integers(3, 7)
            disk = (rows - cy) ** 2 + (cols - cx) ** 2 <= r * r
            images[i, disk, 0] += 0.4
            masks[i, disk, 0] = 1
        return images, masks

    def dice(probabilities, masks):
        predicted, truth = probabilities >= 0.5, masks > 0.5
        return 2 * (predicted & truth).sum() / max(predicted.sum() + truth.sum(), 1)

    keras.utils.set_random_seed(0)
    model = build_unet((32, 32, 1), depth=2, filters=4)
    model.compile(keras.optimizers.Adam(0.003), get_loss("bce_dice"))
    images, masks = disks(96)
    held_out, truth = disks(32)
    model.fit(images, masks, batch_size=16, epochs=8, verbose=0)
    batch_stats = dice(keras.ops.convert_to_numpy(model(held_out, training=True)), truth)
    inference = dice(keras.ops.convert_to_numpy(model(held_out, training=False)), truth)
    assert batch_stats > 0.7, batch_stats  # the model did learn
    assert inference >= batch_stats - 0.15, (inference, batch_stats)
