"""Frozen layers computed once: the cut, the cached activations, and training on them."""

from __future__ import annotations

import csv
import logging

import keras
import numpy as np
import pytest
from conftest import tiny_config

from medlens.models.backbones import preprocess_function
from medlens.models.classifier import build_classifier, freeze_backbone, unfreeze_all, unfreeze_top_blocks
from medlens.pipelines.data import ArraySource, ClassificationSequence
from medlens.pipelines.frozen import FeatureSequence, cached_features, split_frozen
from medlens.pipelines.train import train

SHAPE = (32, 32, 3)


def _images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, *SHAPE)).astype("float32")


@pytest.mark.parametrize(
    ("backbone", "blocks", "cut"),
    [("vgg16", 0, "pool"), ("vgg16", 1, "block4_pool"), ("resnet50", 2, "conv3_block4_out")],
)
def test_top_of_frozen_part_equals_the_whole_model(backbone, blocks, cut) -> None:
    model = build_classifier(backbone, 3, SHAPE, weights="none")
    freeze_backbone(model)
    if blocks:
        unfreeze_top_blocks(model, blocks, backbone)
    split = split_frozen(model, backbone)
    assert split is not None and split.cut == cut
    assert split.frozen.trainable_weights == []
    # The top shares the model's trainable weights (same variables, same order).
    assert [v.path for v in split.top.trainable_weights] == [v.path for v in model.trainable_weights]
    assert all(a is b for a, b in zip(split.top.trainable_weights, model.trainable_weights, strict=True))
    x = _images(4)
    whole = keras.ops.convert_to_numpy(model(x, training=False))
    parts = keras.ops.convert_to_numpy(split.top(split.frozen(x, training=False), training=False))
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_nothing_frozen_means_no_cut() -> None:
    model = build_classifier("small_cnn", 2, SHAPE, weights="none")
    unfreeze_all(model)
    assert split_frozen(model, "small_cnn") is None


def _sequence(count: int = 10, shuffle: bool = True) -> ClassificationSequence:
    images = np.random.default_rng(1).integers(0, 255, (count, 20, 20), dtype=np.uint8)
    labels = np.arange(count) % 2
    return ClassificationSequence(ArraySource(images, labels), (32, 32), 4, preprocess_function("vgg16"), 2,
                                  shuffle=shuffle, seed=3)


def test_feature_batches_follow_the_image_batches() -> None:
    model = build_classifier("vgg16", 2, SHAPE, weights="none")
    freeze_backbone(model)
    split = split_frozen(model, "vgg16")
    sequence = _sequence()
    features = cached_features(split, sequence)
    assert features.shape == (10, 512)
    cached = FeatureSequence(sequence, features)
    for epoch in (0, 3):
        cached.set_epoch(epoch)
        assert len(cached) == len(sequence) == 3
        for index in range(len(sequence)):
            x, y = sequence[index]
            fx, fy = cached[index]
            np.testing.assert_array_equal(fy, y)
            direct = keras.ops.convert_to_numpy(split.frozen(x, training=False))
            np.testing.assert_allclose(fx, direct, rtol=1e-5, atol=1e-5)
    augmented = _sequence()
    augmented.augment = object()
    with pytest.raises(ValueError, match="augmented"):
        cached_features(split, augmented)


def test_large_activations_go_to_disk_keyed_by_content_and_weights(tmp_path, caplog) -> None:
    model = build_classifier("vgg16", 2, SHAPE, weights="none")
    unfreeze_top_blocks(model, 1, "vgg16")
    split = split_frozen(model, "vgg16")
    sequence = _sequence()
    first = cached_features(split, sequence, memory_mb=0, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and isinstance(first, np.memmap) and first.shape == (10, 2, 2, 512)
    with caplog.at_level(logging.INFO, logger="medlens.pipelines.frozen"):
        again = cached_features(split, sequence, memory_mb=0, cache_dir=tmp_path)
    assert "read from" in caplog.text
    np.testing.assert_array_equal(again, first)
    # Other frozen weights or other images: another key, another file.
    layer = split.frozen.get_layer("block1_conv1")
    layer.set_weights([w + 0.01 for w in layer.get_weights()])
    cached_features(split, sequence, memory_mb=0, cache_dir=tmp_path)
    other = ClassificationSequence(ArraySource(np.zeros((10, 20, 20), np.uint8), np.arange(10) % 2), (32, 32), 4,
                                   preprocess_function("vgg16"), 2)
    cached_features(split, other, memory_mb=0, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 3
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def _losses(run) -> list[tuple[int, float, float]]:
    rows = list(csv.DictReader((run / "history.csv").open()))
    return [(int(r["phase"]), float(r["loss"]), float(r["val_loss"])) for r in rows]


@pytest.mark.slow
def test_cached_training_matches_uncached_training(phantom_dir, tmp_path, caplog) -> None:
    # Phase 1 frozen (features after the pooling), phase 2 with the top block trainable
    # (activations of block3 cached): both phases fit only the top on cached activations.
    overrides = dict(train__phase1={"epochs": 3, "learning_rate": 0.003, "unfreeze_blocks": 0},
                     train__phase2={"epochs": 2, "learning_rate": 0.001, "unfreeze_blocks": 1})
    cached_cfg = tiny_config(phantom_dir, **overrides)
    plain_cfg = tiny_config(phantom_dir, **overrides)
    plain_cfg.train.frozen_cache = False
    with caplog.at_level(logging.INFO):
        cached = train(cached_cfg, tmp_path / "cached")
    assert "frozen layers up to pool computed once" in caplog.text
    assert "frozen layers up to block3_pool computed once" in caplog.text
    plain = train(plain_cfg, tmp_path / "plain")
    got, expected = _losses(cached.run_dir), _losses(plain.run_dir)
    assert [row[0] for row in got] == [row[0] for row in expected] == [1, 1, 1, 2, 2]
    # Same batches, same dropout draws, same arithmetic: float32 summation order is all that differs.
    np.testing.assert_allclose(np.array(got)[:, 1:], np.array(expected)[:, 1:], rtol=1e-3, atol=1e-4)
    assert cached.metrics["auc"] == pytest.approx(plain.metrics["auc"], abs=1e-3)
    # The run holds the whole classifier, loadable and usable on images.
    model = keras.saving.load_model(cached.run_dir / "model.keras")
    assert model.input_shape == (None, 48, 48, 3)


def test_augmentation_turns_the_cache_off(phantom_dir, tmp_path, caplog) -> None:
    cfg = tiny_config(phantom_dir, data__augment="tumour",
                      train__phase1={"epochs": 1, "learning_rate": 0.003, "unfreeze_blocks": 0})
    cfg.train.phase2.epochs = 0
    with caplog.at_level(logging.INFO):
        train(cfg, tmp_path / "run")
    assert "frozen layers are run every epoch: augmentation (tumour)" in caplog.text
    assert "computed once" not in caplog.text


def test_callbacks_see_the_whole_model_and_can_stop_a_cached_phase(phantom_dir, tmp_path) -> None:
    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_end(self, epoch, logs=None):
            self.seen.append((epoch, self.model.get_layer("backbone").name))
            self.model.stop_training = True

    cfg = tiny_config(phantom_dir, train__phase1={"epochs": 4, "learning_rate": 0.003, "unfreeze_blocks": 0},
                      train__phase2={"epochs": 3, "learning_rate": 0.001, "unfreeze_blocks": 1})
    stopper = StopAfterFirstEpoch()
    result = train(cfg, tmp_path / "run", callbacks=[stopper])
    # One epoch per phase: each stop ended only the phase that was running.
    assert stopper.seen == [(0, "backbone"), (1, "backbone")]
    assert [row[0] for row in _losses(result.run_dir)] == [1, 2]
