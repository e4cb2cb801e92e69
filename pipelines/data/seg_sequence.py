"""Segmentation batches: random patches or whole images, with masks and field-of-view weights.

:class:`SegmentationSequence` feeds :class:`~medlens.pipelines.data.segmentation.SegSample`
lists to ``model.fit``: random patches (biased towards foreground, centred inside the field of
view) or whole resized images, with the same augmentation on image and mask, and an optional
FOV weight map for masking losses and metrics. Order, patches and augmentations depend only on
``(seed, epoch)`` (:class:`~medlens.pipelines.data.sequence.SeededSequence`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from medlens.pipelines.augment import augment as apply_augmentation
from medlens.pipelines.data.images import from_store, resize_image, to_model_channels, to_store
from medlens.pipelines.data.pairs import SegSample, load_pair
from medlens.pipelines.data.sequence import SeededSequence

__all__ = ["SegmentationSequence"]


@dataclass
class _Entry:
    """One cached image: pixels (uint8 or float16), labels, FOV and sampling candidates."""

    image: np.ndarray
    mask: np.ndarray
    fov: np.ndarray | None
    foreground: np.ndarray  # flat indices of foreground pixels (inside the FOV)
    allowed: np.ndarray | None  # flat indices of FOV pixels, None = every pixel

    @property
    def nbytes(self) -> int:
        """Bytes held, for the cache's limit."""
        return sum(a.nbytes for a in (self.image, self.mask, self.fov, self.foreground, self.allowed) if a is not None)


def _reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Map any integer indices into ``0..size-1`` by mirror reflection (numpy's ``reflect``)."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.abs(indices) % period
    return np.where(folded >= size, period - folded, folded)


class SegmentationSequence(SeededSequence):
    """Batches of images and masks for segmentation models.

    ``patch`` mode draws ``patches_per_image`` patches from every image per epoch; with
    probability ``foreground_bias`` a patch is centred on a random foreground pixel (inside
    the FOV), otherwise on a uniformly drawn pixel inside the FOV (anywhere without one).
    Patches reaching over the image border are filled by reflection and get weight 0 there.
    ``whole`` mode resizes each image (area when shrinking, linear when growing) and its mask
    and FOV (nearest) to ``image_size``. The same augmentation is applied to image, mask and
    FOV. Everything depends only on ``(seed, epoch)``.

    Yields ``(x, y)`` or ``(x, y, w)``: ``x`` ``float32`` ``B×H×W×channels`` (``preprocess``
    applied to ``0..255`` values, default scaling to ``[0, 1]``); ``y`` ``float32``
    ``B×H×W×1`` (``num_classes == 1``) or one-hot ``B×H×W×C``; ``w`` ``float32`` ``B×H×W``,
    1 inside the FOV (and the image), 0 outside; Keras uses it as a per-pixel sample weight.

    Args:
        samples: Image/mask pairs.
        mode: ``patch`` or ``whole``.
        patch_size: Patch side (``patch`` mode).
        patches_per_image: Patches per image per epoch (``patch`` mode).
        foreground_bias: Probability of a foreground-centred patch, in ``[0, 1]``.
        image_size: ``(height, width)`` for ``whole`` mode; ``None`` keeps each image's size
            (then the images in a batch must share one size).
        batch_size: Patches or images per batch.
        augment: Preset name, an albumentations pipeline, or ``None``.
        preprocess: Callable on the ``float32`` ``0..255`` batch (e.g. a backbone's
            ``preprocess_input``); ``None`` scales to ``[0, 1]``.
        num_classes: 1 (binary, any nonzero mask value is foreground) or C > 1 (one-hot).
        channels: 1 or 3 input channels (grey images are repeated, colour ones turned grey).
        seed: Seed of sampling, order and augmentation.
        cache: Keep decoded images (uint8, or float16 for wider data) in memory, up to ``cache_mb`` MiB.
        cache_mb: Cache size limit (least recently used images are dropped beyond it).
        return_fov_weights: Yield ``(x, y, w)`` rather than ``(x, y)``.
        shuffle: Shuffle the order every epoch; default ``True`` in ``patch`` mode and ``False``
            in ``whole`` mode (so predictions line up with ``samples``).
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.

    Raises:
        ValueError: Bad arguments.

    Example:
        seq = SegmentationSequence(samples, patch_size=48, batch_size=4)
        x, y, w = seq[0]
    """

    def __init__(
        self,
        samples: Sequence[SegSample],
        *,
        mode: str = "patch",
        patch_size: int = 64,
        patches_per_image: int = 8,
        foreground_bias: float = 0.5,
        image_size: Sequence[int] | None = None,
        batch_size: int = 8,
        augment: Any = None,
        preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
        num_classes: int = 1,
        channels: int = 3,
        seed: int = 0,
        cache: bool = True,
        cache_mb: int = 2048,
        return_fov_weights: bool = True,
        shuffle: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size, augment, seed, cache_mb if cache else 0, **kwargs)
        if mode not in ("patch", "whole"):
            raise ValueError(f"mode must be 'patch' or 'whole', not {mode!r}")
        if mode == "patch" and (patch_size < 1 or patches_per_image < 1):
            raise ValueError("patch_size and patches_per_image must be at least 1")
        if not 0.0 <= foreground_bias <= 1.0:
            raise ValueError(f"foreground_bias must be in [0, 1], got {foreground_bias}")
        if image_size is not None and (len(image_size) != 2 or min(image_size) < 1):
            raise ValueError(f"image_size must be (height, width), got {image_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        if not samples:
            raise ValueError("a SegmentationSequence needs at least one sample")
        self.samples = list(samples)
        self.mode = mode
        self.patch_size = int(patch_size)
        self.patches_per_image = int(patches_per_image)
        self.foreground_bias = float(foreground_bias)
        self.image_size = (int(image_size[0]), int(image_size[1])) if image_size is not None else None
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.cache = cache
        self.return_fov_weights = return_fov_weights
        self.shuffle = (mode == "patch") if shuffle is None else bool(shuffle)
        self.set_epoch(0)

    def __getitem__(self, index: int) -> Any:
        items = [self._item(position) for position in self._positions(index)]
        shapes = {item[0].shape for item in items}
        if len(shapes) > 1:
            raise ValueError(
                f"images of one batch differ in size ({sorted(shapes)}); set image_size or batch_size=1"
            )
        x = np.stack([item[0] for item in items]).astype(np.float32, copy=False)
        x = np.asarray(self.preprocess(x.copy()), dtype=np.float32) if self.preprocess else x / np.float32(255.0)
        y = self._encode(np.stack([item[1] for item in items]))
        if not self.return_fov_weights:
            return x, y
        return x, y, np.stack([item[2] for item in items]).astype(np.float32)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        repeats = self.patches_per_image if self.mode == "patch" else 1
        order = np.repeat(np.arange(len(self.samples)), repeats)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return order

    def _rng(self, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, position])

    def _entry(self, index: int) -> _Entry:
        hit = self._cache.get(index)
        if hit is not None:
            return hit
        image, mask, fov = load_pair(self.samples[index], self.num_classes)
        if self.mode == "whole" and self.image_size is not None:
            height, width = self.image_size
            image = resize_image(image, self.image_size)
            mask = cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
            if fov is not None:
                fov = cv2.resize(fov.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
        region = fov if fov is not None else np.ones(mask.shape, dtype=bool)
        entry = _Entry(
            image=to_store(image),
            mask=mask,
            fov=fov,
            foreground=np.flatnonzero((mask > 0) & region),
            allowed=np.flatnonzero(fov) if fov is not None else None,
        )
        self._cache.put(index, entry, entry.nbytes)
        return entry

    def _centre(self, entry: _Entry, rng: np.random.Generator) -> tuple[int, int]:
        height, width = entry.mask.shape
        use_foreground = rng.random() < self.foreground_bias and entry.foreground.size > 0
        if use_foreground:
            flat = int(entry.foreground[rng.integers(entry.foreground.size)])
        elif entry.allowed is not None and entry.allowed.size > 0:
            flat = int(entry.allowed[rng.integers(entry.allowed.size)])
        else:
            flat = int(rng.integers(height * width))
        return divmod(flat, width)

    def _patch(self, entry: _Entry, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        height, width = entry.mask.shape
        size = self.patch_size
        row, col = self._centre(entry, rng)
        rows = np.arange(row - size // 2, row - size // 2 + size)
        cols = np.arange(col - size // 2, col - size // 2 + size)
        inside = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[None, :]
        grid = np.ix_(_reflect(rows, height), _reflect(cols, width))
        image = from_store(entry.image[grid])
        mask = entry.mask[grid]
        weight = inside & entry.fov[grid] if entry.fov is not None else inside
        return image, mask, weight

    def _item(self, position: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        index = int(self.order[position])
        entry = self._entry(index)
        rng = self._rng(position)
        if self.mode == "patch":
            image, mask, weight = self._patch(entry, rng)
        else:
            image = from_store(entry.image)
            mask = entry.mask
            weight = entry.fov if entry.fov is not None else np.ones(mask.shape, dtype=bool)
        if self.augment is not None:
            stacked = np.stack([mask, weight.astype(np.uint8)], axis=-1)
            seed = int(rng.integers(0, 2**31 - 1))
            image, stacked = apply_augmentation(self._transform(), image, stacked, seed=seed)
            mask, weight = stacked[..., 0], stacked[..., 1] > 0
        return self._channels(image), mask, weight

    def _channels(self, image: np.ndarray) -> np.ndarray:
        return to_model_channels(image, self.channels)

    def _encode(self, masks: np.ndarray) -> np.ndarray:
        if self.num_classes == 1:
            return (masks > 0).astype(np.float32)[..., None]
        return np.eye(self.num_classes, dtype=np.float32)[masks.astype(np.int64)]
