"""Labelled image datasets: a folder tree, a CSV manifest or a MedMNIST npz, split for training.

:func:`load_dataset` turns a :class:`~medlens.pipelines.config.DataConfig` into a
:class:`~medlens.pipelines.data.sources.Dataset`: class names, one source per split
(``train``, ``val``, ``test``) and a report (class counts, duplicates dropped, patients per
split). Exact duplicate files are dropped by content hash before splitting, splits given in
the data are kept, and missing ones are made (:mod:`medlens.pipelines.data.splits`).

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
from medlens.pipelines.data.manifest import ManifestFiles, manifest_path, read_rows
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


def _read_manifest(cfg: DataConfig, root: Path) -> tuple[_Table, list[str]]:
    manifest = manifest_path(root, cfg.manifest)
    columns, rows = read_rows(manifest, (cfg.column("image"), cfg.column("label")))
    raw_labels = [(row.get(cfg.column("label")) or "").strip() for row in rows]
    empty = [i + 2 for i, value in enumerate(raw_labels) if not value]
    if empty:
        raise DatasetError(f"{manifest}: empty {cfg.column('label')!r} on line(s) {', '.join(map(str, empty[:5]))}")
    labels, class_names = _parse_labels(raw_labels, rows, cfg, manifest)

    paths: list[Path] = []
    missing: list[str] = []
    files = ManifestFiles(manifest, root)
    for row in rows:
        value = (row.get(cfg.column("image")) or "").strip()
        path = files(value)
        if not files.exists(path):
            missing.append(value or "(empty path)")
        paths.append(path or root)
    if missing:
        shown = ", ".join(missing[:5])
        raise DatasetError(
            f"{manifest}: {len(missing)} row(s) point at missing files under {files.base}, e.g. {shown}"
        )

    groups = None
    if cfg.column("patient_id") and cfg.column("patient_id") in columns:
        groups = [
            (row.get(cfg.column("patient_id")) or "").strip() or f"__row{i}" for i, row in enumerate(rows)
        ]
    splits = None
    if cfg.column("split") and cfg.column("split") in columns:
        splits = []
        for i, row in enumerate(rows):
            value = (row.get(cfg.column("split")) or "").strip()
            if not value:
                raise DatasetError(f"{manifest}: empty {cfg.column('split')!r} on line {i + 2}")
            splits.append(normalise_split(value, f"{manifest} line {i + 2}"))
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
    (:class:`~medlens.pipelines.data.manifest.ManifestFiles`). ``npz``: MedMNIST file ``cfg.npz``
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
        splits, found = split_pool(pool, table.splits, cfg.val_fraction, cfg.test_fraction, seed,
                                   remove_duplicates=cfg.dedupe, where=str(root))
        dataset = Dataset(class_names, splits, {"kind": cfg.kind, "source": str(root), **found})
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
