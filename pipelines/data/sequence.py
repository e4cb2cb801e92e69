"""Keras batches for every task: a seeded :class:`SeededSequence` base and a bounded cache.

What every task's batches share lives here: the order of each epoch and every random draw
depend only on ``(seed, epoch)`` (so a resumed run sees what an uninterrupted one saw), each
worker thread gets its own copy of the augmentation pipeline, decoded images are kept in a
:class:`BoundedCache` that never holds more than its byte limit, and a sequence pickles
(for ``use_multiprocessing``) without its lock. :class:`ClassificationSequence` (here) and
:class:`~medlens.pipelines.data.seg_sequence.SegmentationSequence` say only what a batch holds.
"""

from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import keras
import numpy as np

from medlens.pipelines.augment import augment as apply_augmentation
from medlens.pipelines.augment import build_augmentation
from medlens.pipelines.data.images import prepare_image, resize_image
from medlens.pipelines.data.sources import ImageSource

__all__ = ["BoundedCache", "SeededSequence", "ClassificationSequence"]


class BoundedCache:
    """A thread-safe least-recently-used store holding at most ``limit_bytes`` of values.

    A value larger than the whole limit is not stored.

    Example:
        >>> cache = BoundedCache(limit_bytes=16)
        >>> cache.put("a", np.zeros(2), 16); cache.put("b", np.ones(2), 16)
        >>> cache.get("a") is None, cache.get("b").tolist(), cache.bytes
        (True, [1.0, 1.0], 16)
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = int(limit_bytes)
        self.bytes = 0
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable) -> Any:
        """The value stored under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: Any, size: int) -> None:
        """Store ``value`` (``size`` bytes), evicting the least recently used values over the limit."""
        if size > self.limit_bytes:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, int(size))
            self.bytes += int(size)
            while self.bytes > self.limit_bytes:
                _, (_, evicted) = self._items.popitem(last=False)
                self.bytes -= evicted

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class SeededSequence(keras.utils.PyDataset):
    """A ``PyDataset`` whose epoch order and random draws depend only on ``(seed, epoch)``.

    Subclasses set their samples up, then call :meth:`set_epoch` (0), and define
    :meth:`_epoch_order` (the positions of an epoch) and ``__getitem__``.

    Args:
        batch_size: items per batch (the last batch may be smaller).
        augment: an albumentations pipeline, a preset name, or ``None``.
        seed: seed of order, sampling and augmentation.
        cache_mb: the decoded-image cache's limit in MiB (0 turns it off).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.
    """

    def __init__(self, batch_size: int, augment: Any, seed: int, cache_mb: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.augment = build_augmentation(augment) if isinstance(augment, str) else augment
        self.seed = int(seed)
        self._cache = BoundedCache(int(float(cache_mb) * (1 << 20)))
        self._lock = threading.Lock()
        self._transforms: dict[int, Any] = {}
        self.epoch = 0
        self.order = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def _positions(self, index: int) -> range:
        """The epoch positions batch ``index`` holds; ``IndexError`` outside the epoch."""
        if index < 0 or index >= len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        start = index * self.batch_size
        return range(start, min(start + self.batch_size, len(self.order)))

    def on_epoch_end(self) -> None:
        """Advance the epoch counter and draw the next epoch's order."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order and random draws.

        Keras also calls :meth:`on_epoch_end` when ``fit`` starts, so the internal counter
        depends on how many ``fit`` calls came before; training pins the epoch to Keras's own
        epoch index instead, which a resumed run shares with an uninterrupted one.
        """
        self.epoch = int(epoch)
        self.order = self._epoch_order(self.epoch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def _transform(self) -> Any:
        # Albumentations pipelines carry their own random state; one copy per thread keeps
        # seeded draws independent when PyDataset runs workers as threads.
        key = threading.get_ident()
        with self._lock:
            transform = self._transforms.get(key)
            if transform is None:
                transform = copy.deepcopy(self.augment)
                self._transforms[key] = transform
        return transform

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_transforms"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


class ClassificationSequence(SeededSequence):
    """Batches ``(x, y)`` from an :class:`ImageSource` for ``model.fit``/``evaluate``/``predict``.

    Per image: load (``[0, 1]``) → resize to ``image_size`` (cached) → augment → 3 channels
    ×255; per batch: ``preprocess`` (e.g. ``keras.applications.vgg16.preprocess_input``).
    The order of each epoch depends only on ``(seed, epoch)``; so do the augmentations.

    Args:
        source: images and labels.
        image_size: ``(height, width)``.
        batch_size: images per batch (the last batch may be smaller).
        preprocess: callable on a ``float32`` ``B×H×W×3`` batch in ``[0, 255]``, or ``None``.
        num_classes: K; ``y`` is ``(B,)`` ``float32`` for K = 2, one-hot ``(B, K)`` otherwise;
            ``(B, F)`` finding labels (missing ones -1) for multi-label sources.
        augment: an albumentations pipeline, a preset name, or ``None``.
        shuffle: reshuffle every epoch.
        balanced: draw each epoch's indices with class-balanced probabilities (with
            replacement, same length); implies a random order.
        seed: seed of shuffling, sampling and augmentation.
        cache: keep resized images in memory (up to ``cache_mb`` MiB, stored as float16).
        cache_mb: cache size limit.
        images_only: yield ``x`` only (inference on unlabelled images).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.

    Example:
        >>> from medlens.pipelines.data import ArraySource
        >>> seq = ClassificationSequence(ArraySource(np.zeros((4, 8, 8), np.uint8), [0, 1, 0, 1]),
        ...                              (16, 16), 2, None, 2)
        >>> x, y = seq[0]
        >>> x.shape, y.shape
        ((2, 16, 16, 3), (2,))
    """

    def __init__(
        self,
        source: ImageSource,
        image_size: Sequence[int],
        batch_size: int,
        preprocess: Callable[[np.ndarray], np.ndarray] | None,
        num_classes: int,
        augment: Any = None,
        shuffle: bool = False,
        balanced: bool = False,
        seed: int = 0,
        cache: bool = True,
        cache_mb: int = 2048,
        images_only: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size, augment, seed, cache_mb if cache else 0, **kwargs)
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size}")
        if num_classes < 2 and not images_only:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.source = source
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.shuffle = shuffle
        self.balanced = balanced
        self.cache = cache
        self.images_only = images_only
        if balanced and not images_only:
            labels = np.asarray(source.labels)
            if labels.min(initial=0) < 0:
                raise ValueError("balanced sampling needs labels; the source has unlabelled images")
        self.set_epoch(0)

    @property
    def indices(self) -> np.ndarray:
        """Source indices in the current epoch's order (settable, e.g. to a fixed order)."""
        return self.order

    @indices.setter
    def indices(self, value: np.ndarray) -> None:
        self.order = np.asarray(value)

    def __getitem__(self, index: int) -> Any:
        positions = self._positions(index)
        chosen = self.order[positions.start : positions.stop]
        images = [self._image(int(i), position) for position, i in zip(positions, chosen, strict=True)]
        x = np.stack(images).astype(np.float32, copy=False)
        if self.preprocess is not None:
            x = np.asarray(self.preprocess(x.copy()), dtype=np.float32)
        if self.images_only:
            return x
        return x, self._encode(self.source.labels[chosen])

    @property
    def labels(self) -> np.ndarray:
        """Labels in the current epoch's order (what ``predict`` outputs line up with)."""
        return np.asarray(self.source.labels)[self.order]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        count = len(self.source)
        if not (self.shuffle or self.balanced) or count == 0:
            return np.arange(count)
        rng = np.random.default_rng([self.seed, epoch])
        if self.balanced:
            labels = np.asarray(self.source.labels)
            _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            weights = 1.0 / counts[inverse]
            return rng.choice(count, size=count, replace=True, p=weights / weights.sum())
        return rng.permutation(count)

    def _encode(self, labels: np.ndarray) -> np.ndarray:
        if np.ndim(labels) == 2:  # finding labels: missing ones become -1, which the loss skips
            return np.where(np.isnan(labels), np.float32(-1.0), labels).astype(np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if self.num_classes == 2:
            return labels.astype(np.float32)
        return np.eye(self.num_classes, dtype=np.float32)[labels]

    def _resized(self, index: int) -> np.ndarray:
        if self.cache:
            hit = self._cache.get(index)
            if hit is not None:
                return hit.astype(np.float32)
        image = resize_image(np.asarray(self.source.load(index), dtype=np.float32), self.image_size)
        if not self.cache:
            return image
        # Round through float16 on every path so cached and fresh loads give identical pixels.
        stored = image.astype(np.float16)
        self._cache.put(index, stored, stored.nbytes)
        return stored.astype(np.float32)

    def _image(self, index: int, position: int) -> np.ndarray:
        image = self._resized(index)
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            image, _ = apply_augmentation(self._transform(), image, seed=seed)
        return prepare_image(image, self.image_size)
