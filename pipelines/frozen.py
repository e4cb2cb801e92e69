"""Frozen layers computed once: train only the trainable top on cached activations.

With the backbone frozen (phase 1) or its lower blocks frozen (phase 2) and no
augmentation, the forward pass through the frozen part gives the same activations
every epoch. :func:`split_frozen` cuts a classifier at the output of its last frozen
layer into ``frozen`` (image → activations) and ``top`` (activations → probabilities,
sharing the classifier's layers and so its weights); :func:`cached_features` runs
``frozen`` once over a split's images and keys the result by the images' content,
the frozen weights and the cut, in memory up to a limit, else in a file on disk;
:class:`FeatureSequence` then serves those activations in exactly the batches,
order and labels of the image sequence it replaces, so a cached epoch computes what
an uncached one does. See docs/training.md ("Frozen layers computed once").
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import backbone_blocks
from medlens.models.classifier import BACKBONE_LAYER, get_backbone

__all__ = ["FrozenSplit", "FeatureSequence", "cached_features", "default_cache_dir", "split_frozen"]

log = logging.getLogger(__name__)

_CACHE_ENV = "MEDLENS_FEATURE_CACHE"


@dataclass
class FrozenSplit:
    """A classifier cut in two at ``cut``: ``top(frozen(x)) == model(x)`` in inference."""

    frozen: keras.Model
    top: keras.Model
    cut: str


def default_cache_dir() -> Path:
    """Where activations too large for memory go: ``$MEDLENS_FEATURE_CACHE`` or ``~/.cache/medlens/features``."""
    folder = os.environ.get(_CACHE_ENV)
    return Path(folder).expanduser() if folder else Path.home() / ".cache" / "medlens" / "features"


def _head_layers(model: keras.Model) -> list[keras.layers.Layer]:
    names = [layer.name for layer in model.layers]
    return model.layers[names.index(BACKBONE_LAYER) + 1:]


def _frozen_cut(model: keras.Model, backbone_name: str | None) -> tuple[str, Any] | None:
    """The last frozen layer of the backbone and its output, or ``None`` when nothing is frozen."""
    backbone = get_backbone(model)
    if not backbone.trainable or not backbone.trainable_weights:
        return "pool", None  # all frozen: cut after the (parameter-free) global pooling
    frozen_blocks = []
    for block in backbone_blocks(backbone, backbone_name):
        if any(backbone.get_layer(name).trainable_weights for name in block):
            break
        frozen_blocks.append(block)
    if not frozen_blocks:
        return None
    last = frozen_blocks[-1][-1]
    return last, backbone.get_layer(last).output


def split_frozen(model: keras.Model, backbone_name: str | None = None) -> FrozenSplit | None:
    """Cut ``model`` (from :func:`~medlens.models.classifier.build_classifier`) after its frozen part.

    Returns ``None`` when no layer is frozen, or when the graph cannot be cut at the
    block boundary (the caller then trains the whole model as usual).
    """
    found = _frozen_cut(model, backbone_name)
    if found is None:
        return None
    cut, tensor = found
    head = _head_layers(model)
    try:
        if tensor is None:
            pool = model.get_layer("pool")
            frozen = keras.Model(model.input, pool.output, name="frozen_part")
            inputs = keras.Input(tuple(pool.output.shape[1:]), name="features")
            x = inputs
            for layer in head[head.index(pool) + 1:]:
                x = layer(x)
        else:
            backbone = get_backbone(model)
            frozen = keras.Model(backbone.input, tensor, name="frozen_part")
            upper = keras.Model(tensor, backbone.output, name="backbone_top")
            inputs = keras.Input(tuple(tensor.shape[1:]), name="features")
            x = upper(inputs)
            for layer in head:
                x = layer(x)
        top = keras.Model(inputs, x, name="trainable_top")
    except Exception as error:  # a graph that does not separate at this layer
        log.info("frozen layers not cached: %s cannot be cut at %s (%s)", model.name, cut, error)
        return None
    if len(top.trainable_weights) != len(model.trainable_weights):
        log.info("frozen layers not cached: the cut at %s does not hold every trainable weight", cut)
        return None
    return FrozenSplit(frozen, top, cut)


def _weights_digest(model: keras.Model) -> str:
    digest = hashlib.sha256()
    for value in model.get_weights():
        digest.update(str(value.shape).encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _plain_batches(sequence: Any):
    """The sequence's batches in source order, unshuffled (the images a cache entry stands for)."""
    indices = sequence.indices
    sequence.indices = np.arange(len(sequence.source))
    try:
        for index in range(len(sequence)):
            yield sequence[index]
    finally:
        sequence.indices = indices


def cached_features(split: FrozenSplit, sequence: Any, *, memory_mb: int = 2048,
                    cache_dir: str | os.PathLike[str] | None = None) -> np.ndarray:
    """``split.frozen``'s activations for every image of ``sequence``, in source order.

    ``sequence`` is a :class:`~medlens.pipelines.data.ClassificationSequence` with no
    augmentation. Activations up to ``memory_mb`` stay in memory; larger ones are
    written once to ``cache_dir`` (:func:`default_cache_dir`) as a ``.npy`` file named
    by the SHA-256 of the preprocessed images, the frozen weights and the cut, and
    memory-mapped from there, so a second run on the same images and weights reads them.
    """
    if getattr(sequence, "augment", None) is not None:
        raise ValueError("frozen activations cannot be cached for augmented images")
    started = time.time()
    key = hashlib.sha256()
    key.update(f"{split.cut}|{_weights_digest(split.frozen)}".encode())
    for batch in _plain_batches(sequence):
        key.update(np.ascontiguousarray(batch[0]).tobytes())
    shape = (len(sequence.source), *split.frozen.output.shape[1:])
    nbytes = math.prod(shape) * 4
    path = None
    if nbytes > memory_mb * (1 << 20):
        folder = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        path = folder / f"{key.hexdigest()[:32]}.npy"
        if path.is_file():
            features = np.load(path, mmap_mode="r")
            if features.shape == shape:
                log.info("frozen activations (%s) read from %s", split.cut, path)
                return features
    features = np.empty(shape, np.float32)
    start = 0
    for batch in _plain_batches(sequence):
        out = np.asarray(keras.ops.convert_to_numpy(split.frozen(batch[0], training=False)), np.float32)
        features[start:start + len(out)] = out
        start += len(out)
    log.info("frozen activations (%s, %.1f MiB) of %d images computed in %.1f s", split.cut,
             nbytes / (1 << 20), len(features), time.time() - started)
    if path is None:
        return features
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
    os.close(handle)
    try:
        np.save(temporary, features)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    del features
    return np.load(path, mmap_mode="r")


class FeatureSequence(keras.utils.PyDataset):
    """Cached activations in the batches of an image sequence: same order, labels and epochs."""

    def __init__(self, sequence: Any, features: np.ndarray):
        super().__init__()
        if len(features) != len(sequence.source):
            raise ValueError(f"{len(features)} activations for {len(sequence.source)} images")
        self.sequence = sequence
        self.features = features

    def __len__(self) -> int:
        return len(self.sequence)

    def __getitem__(self, index: int) -> Any:
        size = self.sequence.batch_size
        chosen = self.sequence.indices[index * size:(index + 1) * size]
        # Sorted reads are sequential on a memory-mapped file; put the batch back in order after.
        order = np.argsort(chosen, kind="stable")
        x = np.empty((len(chosen), *self.features.shape[1:]), np.float32)
        x[order] = self.features[np.asarray(chosen)[order]]
        return x, self.sequence._encode(self.sequence.source.labels[chosen])

    def on_epoch_end(self) -> None:
        self.sequence.on_epoch_end()

    def set_epoch(self, epoch: int) -> None:
        self.sequence.set_epoch(epoch)
