"""Labelled images that load on demand, and the per-split :class:`Dataset` they make.

An :class:`ImageSource` is the sample list of a classification, multi-label or ordinal task:
labels, ids, patient groups, and pixels loaded one at a time (:class:`FileSource` from files,
:class:`ArraySource` from memory, e.g. a MedMNIST split).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.errors import DatasetError
from medlens.pipelines.imaging import read_image

__all__ = ["label_array", "same_labels", "ImageSource", "FileSource", "ArraySource", "Dataset"]


def label_array(labels: Any) -> np.ndarray:
    """Labels as stored by a source: ``(N,)`` ``int64`` class indices, or ``(N, F)`` ``float32``
    finding labels (1 present, 0 absent, NaN missing) for multi-label data."""
    values = np.asarray(labels)
    if values.ndim == 2:
        return values.astype(np.float32)
    return values.astype(np.int64).reshape(-1)


def same_labels(a: Any, b: Any) -> bool:
    """Whether two samples' labels agree (missing finding labels compare equal)."""
    return bool(np.array_equal(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), equal_nan=True))


class ImageSource(ABC):
    """A list of labelled images that loads one on demand.

    Attributes:
        labels: ``(N,)`` ``int64`` class indices, or ``(N, F)`` finding labels (see
            :func:`label_array`).
        ids: ``N`` strings naming each image (file path, or ``split/index`` for arrays).
        groups: ``N`` patient ids, or ``None`` when unknown.
    """

    labels: np.ndarray
    ids: list[str]
    groups: list[str] | None

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as ``float32`` ``H×W×C`` (``C`` 1 or 3) in ``[0, 1]``."""

    @abstractmethod
    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSource:
        """A new source holding only ``indices`` (in that order)."""

    def content_hash(self, index: int) -> str:
        """md5 hex digest of image ``index``'s content, used to find exact duplicates."""
        return hashlib.md5(np.ascontiguousarray(self.load(index)).tobytes()).hexdigest()


class FileSource(ImageSource):
    """Images in files, read with :func:`medlens.pipelines.imaging.read_image`.

    Args:
        paths: one file per image.
        labels: class index per image.
        groups: patient id per image, or ``None``.
        class_names: names of the classes (informational).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray,
        groups: Sequence[str] | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.paths = [Path(p) for p in paths]
        self.labels = label_array(labels)
        if len(self.paths) != len(self.labels):
            raise ValueError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.groups = None if groups is None else [str(g) for g in groups]
        if self.groups is not None and len(self.groups) != len(self.paths):
            raise ValueError(f"{len(self.paths)} paths but {len(self.groups)} groups")
        self.class_names = list(class_names) if class_names is not None else None
        self.ids = [str(p) for p in self.paths]

    def load(self, index: int) -> np.ndarray:
        return read_image(self.paths[index]).pixels

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileSource:
        chosen = [int(i) for i in indices]
        return FileSource(
            [self.paths[i] for i in chosen],
            self.labels[chosen],
            None if self.groups is None else [self.groups[i] for i in chosen],
            self.class_names,
        )

    def content_hash(self, index: int) -> str:
        """md5 of the file's bytes."""
        digest = hashlib.md5()
        try:
            with open(self.paths[index], "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        except OSError as exc:
            raise DatasetError(f"{self.paths[index]}: cannot read file ({exc.strerror})") from None
        return digest.hexdigest()


class ArraySource(ImageSource):
    """Images held in memory, e.g. a MedMNIST split.

    Args:
        images: ``N×H×W`` or ``N×H×W×C`` array, ``uint8`` (0..255) or float in ``[0, 1]``.
        labels: class index per image; ``None`` gives ``-1`` (unlabelled, for prediction).
        groups: patient id per image, or ``None``.
        prefix: prefix of :attr:`ids` (``"train/"`` gives ``train/0``, ``train/1``...).
    """

    def __init__(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        labels: Sequence[int] | np.ndarray | None = None,
        groups: Sequence[str] | None = None,
        prefix: str = "",
        ids: Sequence[str] | None = None,
    ) -> None:
        self.images = images if isinstance(images, np.ndarray) else list(images)
        count = len(self.images)
        if labels is None:
            labels = np.full(count, -1)
        self.labels = label_array(labels)
        if len(self.labels) != count:
            raise ValueError(f"{count} images but {len(self.labels)} labels")
        self.groups = None if groups is None else [str(g) for g in groups]
        self.ids = list(ids) if ids is not None else [f"{prefix}{i}" for i in range(count)]

    def load(self, index: int) -> np.ndarray:
        image = np.asarray(self.images[index])
        if image.ndim == 2:
            image = image[..., None]
        if image.dtype == np.uint8:
            return image.astype(np.float32) / np.float32(255.0)
        return np.clip(image.astype(np.float32), 0.0, 1.0)

    def subset(self, indices: Sequence[int] | np.ndarray) -> ArraySource:
        chosen = np.asarray(indices, dtype=np.int64)
        if isinstance(self.images, np.ndarray):
            images: np.ndarray | list[np.ndarray] = self.images[chosen]
        else:
            images = [self.images[i] for i in chosen]
        return ArraySource(
            images,
            self.labels[chosen],
            None if self.groups is None else [self.groups[i] for i in chosen],
            ids=[self.ids[i] for i in chosen],
        )

    def content_hash(self, index: int) -> str:
        return hashlib.md5(np.ascontiguousarray(self.images[index]).tobytes()).hexdigest()


@dataclass
class Dataset:
    """Class names, one source per split, and what loading found.

    Attributes:
        class_names: ``class_names[i]`` names label ``i``.
        splits: ``{"train": source, "val": source, "test": source}`` (``val``/``test`` may be
            empty sources when their fractions are 0).
        report: class counts per split, duplicates dropped, patients per split, where the
            splits came from.
    """

    class_names: list[str]
    splits: dict[str, ImageSource]
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Number of classes K."""
        return len(self.class_names)

    def finish(self, **facts: Any) -> Dataset:
        """This dataset, its report completed (class names, ``facts``, patients per split) and checked.

        Raises:
            DatasetError: the train split is empty.
        """
        self.report["class_names"] = list(self.class_names)
        self.report.update(facts)
        self.report.setdefault("patients", {name: None if source.groups is None else len(set(source.groups))
                                            for name, source in self.splits.items()})
        if len(self.splits["train"]) == 0:
            raise DatasetError(f"{self.report['source']}: the train split is empty")
        return self

