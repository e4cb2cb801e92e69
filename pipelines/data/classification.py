"""Labelled image datasets: a folder tree, a CSV manifest or a MedMNIST npz, split for training.

:func:`load_dataset` turns a :class:`~medlens.pipelines.config.DataConfig` into a
:class:`~medlens.pipelines.data.sources.Dataset`: class names, one source per split
(``train``, ``val``, ``test``) and a report (class counts, duplicates dropped, patients per
split, rows skipped). Exact duplicate files are dropped by content hash before splitting, splits
given in the data are kept, and missing ones are made (:mod:`medlens.pipelines.data.splits`).

Example (needs the data)::

    from medlens.pipelines.config import DataConfig
    dataset = load_dataset(DataConfig(kind="folder", root="brain_mri_yes_no"), seed=0)
    train = ClassificationSequence(dataset.splits["train"], (224, 224), 32, None, 2, shuffle=True)
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.pipelines.config import DataConfig
from medlens.pipelines.data.manifest import ManifestFiles, manifest_path, read_each_row, read_rows
from medlens.pipelines.data.sources import ArraySource, Dataset, FileSource, ImageSource
from medlens.pipelines.data.splits import SPLIT_ALIASES, SPLITS, assign_splits, normalise_split, split_pool
from medlens.pipelines.errors import ConfigError, DatasetError
from medlens.pipelines.imaging import list_images, read_npz

__all__ = ["load_dataset", "read_npz_splits", "read_npz_pool", "class_counts", "class_weights"]

logger = logging.getLogger(__name__)


@dataclass
class _Table:
    """Samples gathered from a folder tree or manifest, before dedupe and splitting."""

    paths: list[Path]
    labels: list[int]
    groups: list[str] | None
    splits: list[str] | None


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan_folder(cfg: DataConfig, root: Path) -> tuple[_Table, list[str]]:
    top = {p.name.lower(): p for p in _class_dirs(root)}
    split_dirs = {
        SPLIT_ALIASES[name]: path for name, path in top.items() if name in SPLIT_ALIASES
    }
    if "train" in split_dirs:
        ignored = sorted(k for k in top if k not in SPLIT_ALIASES)
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


def _read_manifest(cfg: DataConfig, root: Path) -> tuple[_Table, list[str], dict]:
    manifest = manifest_path(root, cfg.manifest)
    image_column, label_column = cfg.column("image"), cfg.column("label")
    columns, rows = read_rows(manifest, (image_column, label_column))
    patient_column = cfg.column("patient_id") if cfg.column("patient_id") in columns else ""
    split_column = cfg.column("split") if cfg.column("split") in columns else ""
    label_of, class_names = _label_reader(rows, cfg)
    files = ManifestFiles(manifest, root)

    def read(line: int, row: dict[str, str]) -> tuple[Path, int, str, str | None]:
        label = label_of(row)
        path = files(row.get(image_column))
        if path is None:
            raise ValueError(f"empty {image_column!r}")
        if not files.exists(path):
            raise ValueError(f"file not found under {files.base}: {(row.get(image_column) or '').strip()}")
        split = None
        if split_column:
            value = (row.get(split_column) or "").strip()
            if not value:
                raise ValueError(f"empty {split_column!r}")
            split = normalise_split(value, f"{manifest} line {line}")
        return path, label, (row.get(patient_column) or "").strip() or f"__row{line}", split

    kept, skipped = read_each_row(manifest, rows, read)
    paths, labels, groups, splits = (list(column) for column in zip(*kept, strict=True))
    table = _Table(paths, labels, groups if patient_column else None, splits if split_column else None)
    return table, class_names, skipped


def _label_reader(rows: list[dict[str, str]], cfg: DataConfig) -> tuple[Callable[[dict[str, str]], int], list[str]]:
    """The class names, and a function from a row to its label index (``ValueError`` for a bad label).

    Labels are class indices when every non-empty label is an integer, else class names; without
    ``class_names`` the classes are the indices seen (named by a one-to-one ``class_name`` column
    when there is one) or the names seen, sorted.
    """
    column = cfg.column("label")
    given = [value for value in ((row.get(column) or "").strip() for row in rows) if value]
    try:
        numbers = [int(value) for value in given]
    except ValueError:
        numbers = None
    if numbers is not None:
        count = max([n for n in numbers if n >= 0], default=-1) + 1
        class_names = list(cfg.class_names) if cfg.class_names else _named_indices(rows, cfg, count)

        def parse(value: str) -> int:
            number = int(value)
            if number < 0:
                raise ValueError(f"negative label {number} in {column!r}")
            if number >= len(class_names):
                raise ValueError(f"label {number} but only {len(class_names)} class_names (0..{len(class_names) - 1})")
            return number
    else:
        class_names = list(cfg.class_names) if cfg.class_names else sorted(set(given))
        index = {name: i for i, name in enumerate(class_names)}

        def parse(value: str) -> int:
            if value not in index:
                raise ValueError(f"label {value!r} is not one of class_names ({', '.join(class_names)})")
            return index[value]

    def label_of(row: dict[str, str]) -> int:
        value = (row.get(column) or "").strip()
        if not value:
            raise ValueError(f"empty {column!r}")
        return parse(value)

    return label_of, class_names


def _named_indices(rows: list[dict[str, str]], cfg: DataConfig, count: int) -> list[str]:
    """Names of classes ``0..count-1``: a ``class_name`` column that maps labels one-to-one, else the indices."""
    column = cfg.column("label")
    if "class_name" in rows[0] and column != "class_name":
        mapping: dict[int, set[str]] = {}
        for row in rows:
            value = (row.get(column) or "").strip()
            if value and int(value) >= 0:
                mapping.setdefault(int(value), set()).add((row.get("class_name") or "").strip())
        if all(len(v) == 1 and "" not in v for v in mapping.values()) and len(mapping) == count:
            return [next(iter(mapping[i])) for i in range(count)]
    return [str(i) for i in range(count)]


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


def read_npz_pool(
    cfg: DataConfig, labels_of: Callable[[Path, str, np.ndarray], np.ndarray]
) -> tuple[Path, ArraySource, list[str]]:
    """Every image of ``data.npz`` in one source (ids ``split/index``) and the split each came in.

    ``labels_of(path, split, raw)`` checks and converts one split's labels.
    """
    path, parts, names = read_npz_splits(cfg)
    labels = {name: labels_of(path, name, np.asarray(parts[name][1])) for name in names}
    pool = ArraySource(
        np.concatenate([np.asarray(parts[name][0]) for name in names]),
        np.concatenate([labels[name] for name in names]),
        ids=[f"{name}/{i}" for name in names for i in range(len(labels[name]))],
    )
    return path, pool, [name for name in names for _ in range(len(labels[name]))]


def _class_labels(path: Path, split: str, raw: np.ndarray) -> np.ndarray:
    if raw.ndim == 2 and raw.shape[1] > 1:
        raise DatasetError(f"{path}: {split} labels are multi-label; only single-label classification is supported")
    return raw.astype(np.int64).reshape(-1)


def _load_npz(cfg: DataConfig, seed: int) -> Dataset:
    path, pool, given = read_npz_pool(cfg, _class_labels)
    count = int(pool.labels.max()) + 1
    if cfg.class_names:
        if count > len(cfg.class_names):
            raise DatasetError(f"{path}: label {count - 1} but only {len(cfg.class_names)} class_names")
        class_names = list(cfg.class_names)
    else:
        class_names = [str(i) for i in range(count)]
    indices, origin = assign_splits(pool.labels, None, given, cfg.val_fraction, cfg.test_fraction, seed)
    splits: dict[str, ImageSource] = {name: pool.subset(idx) for name, idx in indices.items()}
    report = {"kind": "npz", "source": str(path), "splits_from": origin, "duplicates_dropped": 0}
    return Dataset(class_names, splits, report)


def load_dataset(cfg: DataConfig, seed: int) -> Dataset:
    """Load the dataset described by ``cfg`` and split it.

    ``folder``: ``cfg.root`` holds one sub-folder per class, or ``train/``, ``test/`` (and
    optionally ``val/``) folders each holding class folders. ``csv``: ``cfg.manifest``
    (relative to ``cfg.root`` unless absolute) with path/label and optional patient/split
    columns; file paths are relative to the manifest's folder, as for every task
    (:class:`~medlens.pipelines.data.manifest.ManifestFiles`); a row with a missing file, an
    empty or unknown label or a bad split is skipped with a warning naming the manifest and
    line (:func:`~medlens.pipelines.data.manifest.read_each_row`). ``npz``: MedMNIST file ``cfg.npz``
    with its official splits (not deduplicated).

    With ``cfg.dedupe``, byte-identical files are collapsed to the first copy; a file found
    in two given splits is kept in ``test`` (then ``val``) and dropped from ``train``.

    Args:
        cfg: data section of the run configuration.
        seed: seed for any split that has to be made.

    Returns:
        A :class:`Dataset` with ``train``, ``val`` and ``test`` sources.

    Raises:
        ConfigError: unknown kind or empty root/npz setting.
        DatasetError: missing folder or manifest, empty class folder, missing column, no usable row.
    """
    if cfg.kind == "npz":
        dataset = _load_npz(cfg, seed)
    elif cfg.kind in ("folder", "csv"):
        root = _resolve(cfg.root, "root")
        if not root.is_dir():
            raise DatasetError(f"{root}: data root folder not found")
        if cfg.kind == "folder":
            table, class_names = _scan_folder(cfg, root)
            skipped: dict = {}
        else:
            table, class_names, skipped = _read_manifest(cfg, root)
        pool = FileSource(table.paths, table.labels, table.groups, class_names)
        splits, found = split_pool(pool, table.splits, cfg.val_fraction, cfg.test_fraction, seed,
                                   remove_duplicates=cfg.dedupe, where=str(root))
        dataset = Dataset(class_names, splits, {"kind": cfg.kind, "source": str(root), **found, **skipped})
    else:
        raise ConfigError(f"config key 'data.kind' is {cfg.kind!r}; choose one of folder, csv, npz")

    dataset.finish(class_counts=class_counts(dataset))
    logger.info("loaded %s: %s", dataset.report["source"], dataset.report["class_counts"])
    return dataset




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
