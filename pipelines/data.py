"""Datasets: from a folder tree, a CSV manifest or a MedMNIST npz to Keras batches.

:func:`load_dataset` turns a :class:`~medlens.pipelines.config.DataConfig` into a
:class:`Dataset`: class names, one :class:`ImageSource` per split (``train``, ``val``,
``test``) and a report (class counts, duplicates dropped, patients per split). Exact
duplicate files are dropped by content hash before splitting, splits given in the data are
kept, and missing ones are made by :func:`make_splits` (stratified, grouped by patient,
seeded). :class:`ClassificationSequence` feeds a source to ``model.fit``/``predict``.

Example (needs the data)::

    from medlens.pipelines.config import DataConfig
    dataset = load_dataset(DataConfig(kind="folder", root="brain_mri_yes_no"), seed=0)
    train = ClassificationSequence(dataset.splits["train"], (224, 224), 32, None, 2, shuffle=True)
"""

from __future__ import annotations

import copy
import csv
import hashlib
import logging
import math
import threading
from abc import ABC, abstractmethod
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from medlens.pipelines.augment import augment as apply_augmentation
from medlens.pipelines.augment import build_augmentation
from medlens.pipelines.config import DataConfig
from medlens.pipelines.errors import ConfigError, DatasetError
from medlens.pipelines.io import list_images, read_image, read_npz

__all__ = [
    "SPLITS",
    "ImageSource",
    "FileSource",
    "ArraySource",
    "Dataset",
    "load_dataset",
    "make_splits",
    "class_counts",
    "class_weights",
    "prepare_image",
    "resize_image",
    "ClassificationSequence",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

# When the same file is in two given splits, the copy in the earlier split here is kept,
# so the test set stays intact and train loses the leaked copy.
_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}


# --------------------------------------------------------------------------- sources


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
    """Images in files, read with :func:`medlens.pipelines.io.read_image`.

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


# --------------------------------------------------------------------------- splits


def make_splits(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Split sample indices into train/val/test, stratified by class and grouped by patient.

    Groups (patients) are visited in a seeded random order, largest first, and each goes
    whole to the split that still needs its classes most (relative to that split's target
    count per class). No group ends up in two splits; class proportions stay close to the
    overall ones. Without groups every sample is its own group. Multi-label samples
    (``(N, F)`` labels) are stratified by each finding's positives and by the images
    with none.

    Args:
        labels: class index per sample, or ``(N, F)`` finding labels (NaN missing).
        groups: patient id per sample, or ``None``.
        val_fraction: share of samples for validation, in ``[0, 1)``.
        test_fraction: share of samples for test, in ``[0, 1)``.
        seed: the same seed always gives the same split.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted ``int64`` index arrays.

    Raises:
        ConfigError: fractions out of range or summing to 1 or more.

    Example:
        >>> parts = make_splits([0, 0, 1, 1, 0, 1, 0, 1, 0, 1], None, 0.2, 0.2, seed=0)
        >>> sorted(len(v) for v in parts.values())
        [2, 2, 6]
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum below 1"
        )
    labels = label_array(labels)
    count = len(labels)
    if groups is None:
        group_ids = np.arange(count)
    else:
        if len(groups) != count:
            raise ValueError(f"{count} labels but {len(groups)} groups")
        _, group_ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    if labels.ndim == 2:
        present = np.nan_to_num(labels, nan=0.0) >= 0.5
        per_sample = np.concatenate([present, ~present.any(axis=1, keepdims=True)], axis=1).astype(np.float64)
    else:
        classes, class_index = np.unique(labels, return_inverse=True)
        per_sample = np.eye(len(classes), dtype=np.float64)[class_index]
    num_groups = int(group_ids.max()) + 1 if count else 0

    # Per-group class count matrix (groups × classes).
    per_group = np.zeros((num_groups, per_sample.shape[1]), dtype=np.float64)
    np.add.at(per_group, group_ids, per_sample)

    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    totals = per_group.sum(axis=0)
    targets = fractions[:, None] * totals[None, :]
    filled = np.zeros_like(targets)

    rng = np.random.default_rng(seed)
    order = rng.permutation(num_groups)
    sizes = per_group.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    assignment = np.zeros(num_groups, dtype=np.int64)
    for group in order:
        need = per_group[group]
        with np.errstate(divide="ignore", invalid="ignore"):
            remaining = np.where(targets > 0, (targets - filled) / targets, -np.inf)
        scores = np.where(need > 0, remaining, 0.0).sum(axis=1) / max(need.sum(), 1.0)
        scores[fractions <= 0] = -np.inf
        best = int(np.argmax(scores))
        assignment[group] = best
        filled[best] += need

    sample_split = assignment[group_ids] if count else np.zeros(0, dtype=np.int64)
    return {name: np.flatnonzero(sample_split == k).astype(np.int64) for k, name in enumerate(SPLITS)}


# --------------------------------------------------------------------------- loading


@dataclass
class _Table:
    """Samples gathered from a folder tree or manifest, before dedupe and splitting."""

    paths: list[Path]
    labels: list[int]
    groups: list[str] | None
    splits: list[str] | None


def _normalise_split(value: str, where: str) -> str:
    key = value.strip().lower()
    if key not in _SPLIT_ALIASES:
        raise DatasetError(f"{where}: unknown split {value!r}; use train, val or test")
    return _SPLIT_ALIASES[key]


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(cfg: DataConfig, root: Path) -> tuple[_Table, list[str]]:
    top = {p.name.lower(): p for p in _class_dirs(root)}
    split_dirs = {
        _SPLIT_ALIASES[name]: path for name, path in top.items() if name in _SPLIT_ALIASES
    }
    if "train" in split_dirs:
        ignored = sorted(k for k in top if k not in _SPLIT_ALIASES)
        if ignored:
            logger.warning("%s: ignoring folders outside the split folders: %s", root, ", ".join(ignored))
        layout = dict(split_dirs)
    else:
        layout = {"": root}

    found: dict[str, dict[str, Path]] = {
        split: {p.name: p for p in _class_dirs(folder)} for split, folder in layout.items()
    }
    if cfg.class_names:
        class_names = list(cfg.class_names)
        for split, dirs in found.items():
            missing = [name for name in class_names if name not in dirs]
            if missing and (split in ("", "train")):
                raise DatasetError(
                    f"{layout[split]}: no class folder {missing[0]!r} (class_names: {', '.join(class_names)})"
                )
            extra = sorted(set(dirs) - set(class_names))
            if extra:
                logger.warning("%s: ignoring folders not in class_names: %s", layout[split], ", ".join(extra))
    else:
        class_names = sorted({name for dirs in found.values() for name in dirs})
    if not class_names:
        raise DatasetError(f"{root}: no class sub-folders found (expected one folder per class)")
    if len(class_names) < 2:
        raise DatasetError(f"{root}: only one class folder ({class_names[0]}); need at least two classes")

    table = _Table([], [], None, [] if "train" in layout else None)
    for split, dirs in found.items():
        for label, name in enumerate(class_names):
            folder = dirs.get(name)
            if folder is None:
                continue
            files = list_images(folder)
            if not files:
                raise DatasetError(f"{folder}: class folder has no supported images")
            table.paths.extend(files)
            table.labels.extend([label] * len(files))
            if table.splits is not None:
                table.splits.extend([split] * len(files))
    return table, class_names


def _read_manifest(cfg: DataConfig, root: Path) -> tuple[_Table, list[str]]:
    manifest = Path(cfg.manifest or "manifest.csv").expanduser()
    if not manifest.is_absolute():
        manifest = root / manifest
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest not found")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{manifest}: cannot read manifest ({exc})".replace("\n", " ")) from None
    for column in (cfg.column('image'), cfg.column('label')):
        if column not in columns:
            raise DatasetError(
                f"{manifest}: no column {column!r}; columns are: {', '.join(columns) or '(none)'}"
            )
    if not rows:
        raise DatasetError(f"{manifest}: manifest has no rows")

    raw_labels = [(row.get(cfg.column('label')) or "").strip() for row in rows]
    empty = [i + 2 for i, value in enumerate(raw_labels) if not value]
    if empty:
        raise DatasetError(f"{manifest}: empty {cfg.column('label')!r} on line(s) {', '.join(map(str, empty[:5]))}")
    labels, class_names = _parse_labels(raw_labels, rows, cfg, manifest)

    paths: list[Path] = []
    missing: list[str] = []
    for row in rows:
        value = (row.get(cfg.column('image')) or "").strip()
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = root / path
        if not value or not path.is_file():
            missing.append(value or "(empty path)")
        paths.append(path)
    if missing:
        shown = ", ".join(missing[:5])
        raise DatasetError(
            f"{manifest}: {len(missing)} row(s) point at missing files under {root}, e.g. {shown}"
        )

    groups = None
    if cfg.column('patient_id') and cfg.column('patient_id') in columns:
        groups = [
            (row.get(cfg.column('patient_id')) or "").strip() or f"__row{i}" for i, row in enumerate(rows)
        ]
    splits = None
    if cfg.column('split') and cfg.column('split') in columns:
        splits = []
        for i, row in enumerate(rows):
            value = (row.get(cfg.column('split')) or "").strip()
            if not value:
                raise DatasetError(f"{manifest}: empty {cfg.column('split')!r} on line {i + 2}")
            splits.append(_normalise_split(value, f"{manifest} line {i + 2}"))
    return _Table(paths, labels, groups, splits), class_names


def _parse_labels(
    raw: list[str], rows: list[dict[str, str]], cfg: DataConfig, manifest: Path
) -> tuple[list[int], list[str]]:
    try:
        numbers = [int(value) for value in raw]
    except ValueError:
        numbers = None
    if numbers is not None:
        if min(numbers) < 0:
            raise DatasetError(f"{manifest}: negative label {min(numbers)} in {cfg.column('label')!r}")
        count = max(numbers) + 1
        if cfg.class_names:
            if count > len(cfg.class_names):
                line = next(i for i, n in enumerate(numbers) if n >= len(cfg.class_names)) + 2
                raise DatasetError(
                    f"{manifest} line {line}: label {numbers[line - 2]} but only {len(cfg.class_names)} class_names "
                    f"(0..{len(cfg.class_names) - 1})"
                )
            return numbers, list(cfg.class_names)
        # A "class_name" column that maps labels one-to-one names the classes.
        if "class_name" in rows[0] and cfg.column('label') != "class_name":
            mapping: dict[int, set[str]] = {}
            for number, row in zip(numbers, rows, strict=True):
                mapping.setdefault(number, set()).add((row.get("class_name") or "").strip())
            if all(len(v) == 1 and "" not in v for v in mapping.values()) and len(mapping) == count:
                return numbers, [next(iter(mapping[i])) for i in range(count)]
        return numbers, [str(i) for i in range(count)]
    class_names = list(cfg.class_names) if cfg.class_names else sorted(set(raw))
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise DatasetError(
            f"{manifest}: label {unknown[0]!r} is not one of class_names ({', '.join(class_names)})"
        )
    return [index[value] for value in raw], class_names


def _dedupe(source: ImageSource, splits: list[str] | None) -> tuple[np.ndarray, dict[str, int]]:
    """Indices to keep (first copy per content hash; test > val > train across splits)."""
    count = len(source)
    order = list(range(count))
    if splits is not None:
        order.sort(key=lambda i: (_SPLIT_PRIORITY[splits[i]], i))
    seen: dict[str, int] = {}
    keep: list[int] = []
    dropped = across = conflicts = 0
    for i in order:
        key = source.content_hash(i)
        first = seen.get(key)
        if first is None:
            seen[key] = i
            keep.append(i)
            continue
        dropped += 1
        if splits is not None and splits[first] != splits[i]:
            across += 1
        if not same_labels(source.labels[first], source.labels[i]):
            conflicts += 1
            logger.warning("%s duplicates %s but has a different label", source.ids[i], source.ids[first])
    stats = {"dropped": dropped, "across_splits": across, "label_conflicts": conflicts}
    return np.asarray(sorted(keep), dtype=np.int64), stats


def _assign_splits(
    labels: np.ndarray,
    groups: list[str] | None,
    given: list[str] | None,
    cfg: DataConfig,
    seed: int,
) -> tuple[dict[str, np.ndarray], str]:
    if given is None:
        return make_splits(labels, groups, cfg.val_fraction, cfg.test_fraction, seed), "made"
    given_array = np.asarray(given)
    indices = {name: np.flatnonzero(given_array == name) for name in SPLITS}
    present = {name for name, idx in indices.items() if len(idx)}
    if "train" not in present:
        raise DatasetError(f"the given splits ({', '.join(sorted(present))}) have no train split")
    if present == set(SPLITS):
        return indices, "given"
    train = indices["train"]
    sub_groups = None if groups is None else [groups[i] for i in train]
    if "test" in present:
        carved = make_splits(labels[train], sub_groups, cfg.val_fraction, 0.0, seed)
        indices["train"] = train[carved["train"]]
        indices["val"] = np.sort(np.concatenate([indices["val"], train[carved["val"]]])).astype(np.int64)
        return indices, "given train/test, val carved from train"
    carved = make_splits(labels[train], sub_groups, cfg.val_fraction, cfg.test_fraction, seed)
    extra_val = indices["val"]
    indices = {name: train[idx] for name, idx in carved.items()}
    if len(extra_val):
        indices["val"] = np.sort(np.concatenate([indices["val"], extra_val])).astype(np.int64)
    return indices, "given train, val/test carved from train"


def _resolve(path_text: str, what: str) -> Path:
    if not path_text:
        raise ConfigError(f"config key 'data.{what}' is empty")
    return Path(path_text).expanduser()


def read_npz_splits(cfg: DataConfig) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]], list[str]]:
    """``data.npz`` (relative to ``data.root`` when not found as given) read: its path, parts and splits present."""
    path = _resolve(cfg.npz, "npz")
    if not path.is_absolute() and cfg.root and not path.exists():
        path = Path(cfg.root).expanduser() / path
    if not path.is_file():
        raise DatasetError(f"{path}: npz file not found")
    parts = read_npz(path)
    names = [name for name in SPLITS if name in parts]
    if "train" not in names:
        raise DatasetError(f"{path}: no train split (found: {', '.join(sorted(parts)) or 'nothing'})")
    return path, parts, names


def _load_npz(cfg: DataConfig, seed: int) -> Dataset:
    path, parts, names = read_npz_splits(cfg)
    for name in names:
        if np.ndim(parts[name][1]) == 2 and np.shape(parts[name][1])[1] > 1:
            raise DatasetError(f"{path}: {name} labels are multi-label; only single-label classification is supported")
    images = [np.asarray(parts[name][0]) for name in names]
    labels = [np.asarray(parts[name][1], dtype=np.int64).reshape(-1) for name in names]
    all_labels = np.concatenate(labels)
    count = int(all_labels.max()) + 1
    if cfg.class_names:
        if count > len(cfg.class_names):
            raise DatasetError(f"{path}: label {count - 1} but only {len(cfg.class_names)} class_names")
        class_names = list(cfg.class_names)
    else:
        class_names = [str(i) for i in range(count)]
    if len(names) == 3:
        splits: dict[str, ImageSource] = {
            name: ArraySource(img, lab, prefix=f"{name}/")
            for name, img, lab in zip(names, images, labels, strict=True)
        }
        origin = "given"
    else:
        pool = ArraySource(
            np.concatenate(images),
            all_labels,
            ids=[f"{name}/{i}" for name, img in zip(names, images, strict=True) for i in range(len(img))],
        )
        given = [name for name, img in zip(names, images, strict=True) for _ in range(len(img))]
        indices, origin = _assign_splits(all_labels, None, given, cfg, seed)
        splits = {name: pool.subset(idx) for name, idx in indices.items()}
    report = {"kind": "npz", "source": str(path), "splits_from": origin, "duplicates_dropped": 0}
    return Dataset(class_names, splits, report)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load the dataset described by ``cfg`` and split it.

    ``folder``: ``cfg.root`` holds one sub-folder per class, or ``train/``, ``test/`` (and
    optionally ``val/``) folders each holding class folders. ``csv``: ``cfg.manifest``
    (relative to ``cfg.root`` unless absolute) with path/label and optional patient/split
    columns; paths are relative to ``cfg.root``. ``npz``: MedMNIST file ``cfg.npz`` with its
    official splits (not deduplicated).

    With ``cfg.dedupe``, byte-identical files are collapsed to the first copy; a file found
    in two given splits is kept in ``test`` (then ``val``) and dropped from ``train``.

    Args:
        cfg: data section of the run configuration.
        seed: seed for any split that has to be made.

    Returns:
        A :class:`Dataset` with ``train``, ``val`` and ``test`` sources.

    Raises:
        ConfigError: unknown kind or empty root/npz setting.
        DatasetError: missing folder/manifest/file, empty class folder, missing column.
    """
    if cfg.kind == "npz":
        dataset = _load_npz(cfg, seed)
    elif cfg.kind in ("folder", "csv"):
        root = _resolve(cfg.root, "root")
        if not root.is_dir():
            raise DatasetError(f"{root}: data root folder not found")
        if cfg.kind == "folder":
            table, class_names = _scan_folder(cfg, root)
        else:
            table, class_names = _read_manifest(cfg, root)
        pool = FileSource(table.paths, table.labels, table.groups, class_names)
        keep = np.arange(len(pool))
        stats = {"dropped": 0, "across_splits": 0, "label_conflicts": 0}
        if cfg.dedupe:
            keep, stats = _dedupe(pool, table.splits)
            if stats["dropped"]:
                logger.info(
                    "%s: dropped %d exact duplicate file(s) (%d across splits)",
                    root,
                    stats["dropped"],
                    stats["across_splits"],
                )
        pool = pool.subset(keep)
        given = None if table.splits is None else [table.splits[i] for i in keep]
        indices, origin = _assign_splits(pool.labels, pool.groups, given, cfg, seed)
        splits = {name: pool.subset(indices[name]) for name in SPLITS}
        report = {
            "kind": cfg.kind,
            "source": str(root),
            "splits_from": origin,
            "duplicates_dropped": stats["dropped"],
            "duplicates_across_splits": stats["across_splits"],
            "duplicate_label_conflicts": stats["label_conflicts"],
        }
        dataset = Dataset(class_names, splits, report)
    else:
        raise ConfigError(f"config key 'data.kind' is {cfg.kind!r}; choose one of folder, csv, npz")

    dataset.report["class_names"] = list(dataset.class_names)
    dataset.report["class_counts"] = class_counts(dataset)
    dataset.report["patients"] = {
        name: (None if source.groups is None else len(set(source.groups)))
        for name, source in dataset.splits.items()
    }
    if len(dataset.splits["train"]) == 0:
        raise DatasetError(f"{dataset.report['source']}: the train split is empty")
    logger.info("loaded %s: %s", dataset.report["source"], dataset.report["class_counts"])
    return dataset


# --------------------------------------------------------------------------- statistics


def class_counts(dataset: Dataset) -> dict[str, dict[str, int]]:
    """Images per class in each split: ``{"train": {"NORMAL": 300, ...}, ...}``."""
    counts: dict[str, dict[str, int]] = {}
    for name, source in dataset.splits.items():
        tally = Counter(int(label) for label in source.labels)
        counts[name] = {cls: tally.get(i, 0) for i, cls in enumerate(dataset.class_names)}
    return counts


def class_weights(labels: Sequence[int] | np.ndarray, num_classes: int) -> dict[int, float]:
    """Balanced class weights ``n / (K * count_k)`` for ``model.fit(class_weight=...)``.

    Classes absent from ``labels`` get weight 0.

    Example:
        >>> class_weights([0, 0, 0, 1], 2)
        {0: 0.6666666666666666, 1: 2.0}
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    counts = np.bincount(labels, minlength=num_classes)[:num_classes]
    total = len(labels)
    return {
        k: (float(total / (num_classes * counts[k])) if counts[k] else 0.0) for k in range(num_classes)
    }


# --------------------------------------------------------------------------- images


def resize_image(pixels: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Resize ``H×W×C`` to ``image_size`` = ``(height, width)``, keeping dtype and channels.

    ``cv2.INTER_AREA`` when shrinking (no aliasing), ``cv2.INTER_LINEAR`` when growing.
    """
    height, width = int(image_size[0]), int(image_size[1])
    image = np.asarray(pixels)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[:2] == (height, width):
        return image
    shrinking = height * width < image.shape[0] * image.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    resized = cv2.resize(image, (width, height), interpolation=interpolation)
    if resized.ndim == 2:
        resized = resized[..., None]
    return resized


def prepare_image(pixels: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """Model-ready pixels: resized to ``(height, width)``, 3 channels, ``float32`` in ``[0, 255]``.

    Args:
        pixels: ``float32`` ``H×W×C`` (or ``H×W``) in ``[0, 1]`` as returned by the readers.
        image_size: ``(height, width)``.

    Returns:
        ``float32`` ``height×width×3`` in ``[0, 255]``, ready for a backbone's ``preprocess_input``.
    """
    image = resize_image(np.asarray(pixels, dtype=np.float32), image_size)
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {image.shape}")
    return np.clip(image * np.float32(255.0), 0.0, 255.0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- sequence


class ClassificationSequence(keras.utils.PyDataset):
    """Batches ``(x, y)`` from an :class:`ImageSource` for ``model.fit``/``evaluate``/``predict``.

    Per image: load (``[0, 1]``) → resize to ``image_size`` (cached) → augment → 3 channels
    ×255; per batch: ``preprocess`` (e.g. ``keras.applications.vgg16.preprocess_input``).
    The order of each epoch depends only on ``(seed, epoch)``; so do the augmentations.

    Args:
        source: images and labels.
        image_size: ``(height, width)``.
        batch_size: images per batch (the last batch may be smaller).
        preprocess: callable on a ``float32`` ``B×H×W×3`` batch in ``[0, 255]``, or ``None``.
        num_classes: K; ``y`` is ``(B,)`` ``float32`` for K = 2, one-hot ``(B, K)`` otherwise.
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
        super().__init__(**kwargs)
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if len(image_size) != 2:
            raise ValueError(f"image_size must be (height, width), got {image_size}")
        if num_classes < 2 and not images_only:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.source = source
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.batch_size = int(batch_size)
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.augment = build_augmentation(augment) if isinstance(augment, str) else augment
        self.shuffle = shuffle
        self.balanced = balanced
        self.seed = int(seed)
        self.cache = cache
        self.cache_bytes = int(cache_mb) * (1 << 20)
        self.images_only = images_only
        if balanced and not images_only:
            labels = np.asarray(source.labels)
            if labels.min(initial=0) < 0:
                raise ValueError("balanced sampling needs labels; the source has unlabelled images")
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._transforms: dict[int, Any] = {}
        self.epoch = 0
        self.indices = self._epoch_indices(0)

    # keras 3 PyDataset API ---------------------------------------------------------------

    def __len__(self) -> int:
        return math.ceil(len(self.source) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        if index < 0 or index >= len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        start = index * self.batch_size
        chosen = self.indices[start : start + self.batch_size]
        images = [
            self._image(int(i), start + offset) for offset, i in enumerate(chosen)
        ]
        x = np.stack(images).astype(np.float32, copy=False)
        if self.preprocess is not None:
            x = np.asarray(self.preprocess(x.copy()), dtype=np.float32)
        if self.images_only:
            return x
        return x, self._encode(self.source.labels[chosen])

    def on_epoch_end(self) -> None:
        """Advance the epoch counter and draw the next epoch's order."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order and augmentations.

        Keras also calls :meth:`on_epoch_end` when ``fit`` starts, so the internal
        counter depends on how many ``fit`` calls came before; training pins the
        epoch to Keras's own epoch index instead, which a resumed run shares with an
        uninterrupted one.
        """
        self.epoch = int(epoch)
        self.indices = self._epoch_indices(self.epoch)

    # helpers ---------------------------------------------------------------------------

    @property
    def labels(self) -> np.ndarray:
        """Labels in the current epoch's order (what ``predict`` outputs line up with)."""
        return np.asarray(self.source.labels)[self.indices]

    def _epoch_indices(self, epoch: int) -> np.ndarray:
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
            with self._lock:
                hit = self._cache.get(index)
                if hit is not None:
                    self._cache.move_to_end(index)
                    return hit.astype(np.float32)
        image = resize_image(np.asarray(self.source.load(index), dtype=np.float32), self.image_size)
        if not self.cache:
            return image
        # Round through float16 on every path so cached and fresh loads give identical pixels.
        stored = image.astype(np.float16)
        if stored.nbytes <= self.cache_bytes:
            with self._lock:
                self._cache[index] = stored
                self._cached_bytes += stored.nbytes
                while self._cached_bytes > self.cache_bytes:
                    _, evicted = self._cache.popitem(last=False)
                    self._cached_bytes -= evicted.nbytes
        return stored.astype(np.float32)

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

    def _image(self, index: int, position: int) -> np.ndarray:
        image = self._resized(index)
        if self.augment is not None:
            seed = int(np.random.SeedSequence([self.seed, self.epoch, position]).generate_state(1)[0])
            image, _ = apply_augmentation(self._transform(), image, seed=seed)
        return prepare_image(image, self.image_size)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_transforms"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
