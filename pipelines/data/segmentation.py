"""Segmentation datasets: paired image/mask files, split for training.

:func:`load_seg_dataset` turns a :class:`~medlens.pipelines.config.SegDataConfig` (or a plain
dict with the same keys) into a :class:`SegDataset`: one list of
:class:`~medlens.pipelines.data.pairs.SegSample` per split (``train``, ``val``, ``test``) and a
report. Three layouts are understood:

- ``drive``: the DRIVE benchmark layout, ``root/{training,test}/{images,1st_manual,mask}``
  (``root/manifest.csv`` is used when present; ``test/2nd_manual`` becomes the second
  observer's mask of each test sample);
- ``folder``: ``root/image_dir`` + ``root/mask_dir`` [+ ``root/fov_dir``], files paired by
  stem (:func:`~medlens.pipelines.data.pairs.pair_folders`); ``root/<split>/image_dir`` … when
  the data carries its splits;
- ``csv``: a manifest with ``image``, ``mask`` [, ``fov``] [, ``patient_id``] [, ``split``]
  columns (paths relative to the manifest's folder).

Splits follow the one rule of :mod:`medlens.pipelines.data.splits`: given ones kept, missing
ones carved from train by patient (or by image).

Example:
    dataset = load_seg_dataset({"kind": "drive", "root": "drive"}, seed=0)
    train = SegmentationSequence(dataset.splits["train"], patch_size=64, batch_size=16)
    x, y, w = train[0]
    x.shape, y.shape, w.shape
    # ((16, 64, 64, 3), (16, 64, 64, 1), (16, 64, 64))
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.config import SegDataConfig
from medlens.pipelines.data.manifest import ManifestFiles, manifest_path, read_each_row, read_rows
from medlens.pipelines.data.pairs import (
    DEFAULT_MASK_SUFFIXES,
    SegSample,
    _keys,
    _match,
    _suffix_pattern,
    check_sizes,
    pair_folders,
)
from medlens.pipelines.data.splits import (
    SPLIT_ALIASES,
    SPLITS,
    assign_splits,
    check_patients,
    normalise_split,
)
from medlens.pipelines.errors import ConfigError, DatasetError
from medlens.pipelines.imaging import list_images
from medlens.pipelines.names import SEG_DATA_KINDS

__all__ = ["SEG_LAYOUTS", "SegDataset", "load_seg_dataset"]

logger = logging.getLogger(__name__)

SEG_LAYOUTS: tuple[str, ...] = SEG_DATA_KINDS

_DEFAULT_COLUMNS = {
    "image": ("image", "image_path", "path"),
    "mask": ("mask", "mask_path", "label", "manual1"),
    "fov": ("fov", "fov_mask", "fov_path"),
    "patient_id": ("patient_id", "patient", "case", "subject"),
    "split": ("split",),
    "mask2": ("manual2", "mask2"),
}



@dataclass
class SegDataset:
    """Samples per split plus a report (counts, patients, layout)."""

    splits: dict[str, list[SegSample]]
    report: dict[str, Any] = field(default_factory=dict)


def _as_config(spec: Mapping[str, Any] | SegDataConfig) -> SegDataConfig:
    if isinstance(spec, SegDataConfig):
        return spec
    if not isinstance(spec, Mapping):
        raise ConfigError(f"a segmentation data spec must be a mapping or SegDataConfig, not {type(spec).__name__}")
    names = {f.name for f in dataclasses.fields(SegDataConfig)}
    unknown = sorted(set(spec) - names)
    if unknown:
        raise ConfigError(
            f"unknown segmentation data key {unknown[0]!r}; valid keys: {', '.join(sorted(names))}"
        )
    return SegDataConfig(**dict(spec))


def _load_drive(cfg: SegDataConfig, root: Path) -> tuple[list[SegSample], dict]:
    manifest = manifest_path(root, cfg.manifest)
    if manifest.is_file():
        columns = {"image": "image", "mask": "manual1", "fov": "fov_mask", "patient_id": "id",
                   "split": "split", "mask2": "manual2"}
        columns.update(cfg.columns)
        return _read_manifest(manifest, root, columns)
    samples: list[SegSample] = []
    for folder_name in ("training", "test"):
        folder = root / folder_name
        if not folder.is_dir():
            if folder_name == "test" and (root / "testing").is_dir():
                folder = root / "testing"
            else:
                raise DatasetError(f"{root}: DRIVE layout needs a {folder_name}/ folder (images/, 1st_manual/, mask/)")
        fov_dir = folder / "mask" if (folder / "mask").is_dir() else None
        split = normalise_split(folder_name, str(folder))
        pairs = pair_folders(folder / "images", folder / "1st_manual", fov_dir, split=split)
        second: dict[Path, Path] = {}
        if (folder / "2nd_manual").is_dir():
            pattern = _suffix_pattern(DEFAULT_MASK_SUFFIXES)
            second, _, _ = _match([s.image_path for s in pairs], list_images(folder / "2nd_manual"),
                                  pattern, "mask", folder / "2nd_manual")
        for sample in pairs:
            number = _keys(sample.image_path, _suffix_pattern(DEFAULT_MASK_SUFFIXES))[1]
            samples.append(dataclasses.replace(sample, patient_id=number, mask2_path=second.get(sample.image_path)))
    return samples, {}


def _column(header: Sequence[str], columns: Mapping[str, str], role: str, manifest: Path, required: bool) -> str | None:
    if role in columns and columns[role]:
        if columns[role] not in header:
            raise DatasetError(f"{manifest}: column {columns[role]!r} (for {role}) not found; columns are {', '.join(header)}")
        return columns[role]
    for candidate in _DEFAULT_COLUMNS[role]:
        if candidate in header:
            return candidate
    if required:
        raise DatasetError(f"{manifest}: no {role} column; columns are {', '.join(header)} (set columns.{role})")
    return None


def _read_manifest(manifest: Path, root: Path, columns: Mapping[str, str]) -> tuple[list[SegSample], dict]:
    header, rows = read_rows(manifest)
    roles = {role: _column(header, columns, role, manifest, role in ("image", "mask")) for role in _DEFAULT_COLUMNS}
    files = ManifestFiles(manifest, root)

    def read(line: int, row: dict[str, str]) -> SegSample:
        def cell(role: str) -> str:
            column = roles[role]
            return (row.get(column) or "").strip() if column else ""

        image, mask = files(cell("image")), files(cell("mask"))
        if image is None or mask is None:
            raise ValueError("empty image or mask cell")
        fov, mask2 = files(cell("fov")), files(cell("mask2"))
        missing = [path for path in (image, mask, fov, mask2) if path is not None and not files.exists(path)]
        if missing:
            raise ValueError(f"file not found: {missing[0]}")
        split_text = cell("split")
        split = normalise_split(split_text, f"{manifest} line {line}") if split_text else None
        return SegSample(image, mask, fov, cell("patient_id") or None, split, mask2)

    return read_each_row(manifest, rows, read)


def _load_folders(cfg: SegDataConfig, root: Path) -> list[SegSample]:
    split_dirs = [
        (child, SPLIT_ALIASES[child.name.lower()])
        for child in sorted(root.iterdir())
        if child.is_dir() and child.name.lower() in SPLIT_ALIASES and (child / cfg.image_dir).is_dir()
    ] if root.is_dir() else []
    if not split_dirs:
        split_dirs = [(root, None)]
    samples: list[SegSample] = []
    for folder, split in split_dirs:
        fov = folder / cfg.fov_dir if cfg.fov_dir else None
        samples.extend(pair_folders(folder / cfg.image_dir, folder / cfg.mask_dir, fov, split=split))
    return samples


def _assign_splits(samples: list[SegSample], cfg: SegDataConfig, seed: int) -> dict[str, list[SegSample]]:
    """Keep given splits, carve missing ones from train by patient (or by image)."""
    groups = [s.patient_id if s.patient_id is not None else f"#image:{s.image_path}" for s in samples]
    parts, _ = assign_splits(np.zeros(len(samples)), groups, [s.split for s in samples], cfg.val_fraction,
                             cfg.test_fraction, seed)
    return {name: [dataclasses.replace(samples[i], split=name) for i in parts[name]] for name in SPLITS}


def load_seg_dataset(spec: Mapping[str, Any] | SegDataConfig, seed: int = 0) -> SegDataset:
    """Find image/mask pairs and split them into train, val and test.

    Args:
        spec: A :class:`SegDataConfig` or a dict of its fields (``kind`` and ``root`` at least).
        seed: Seed of the carved splits; the same seed gives the same split.

    Returns:
        A :class:`SegDataset`; ``report`` holds ``kind``, ``root``, ``counts`` per split,
        ``patients`` per split (when known), ``carved`` (splits made here) and, for a manifest,
        ``rows_skipped`` (rows left out with a warning: an empty cell, a missing file, a bad split).

    Raises:
        ConfigError: Unknown layout or keys.
        DatasetError: Missing folders, unpairable names, a manifest with no usable row.
        ImageReadError: A mask or FOV whose size differs from its image's (both files named).

    Example:
        data = load_seg_dataset({"kind": "csv", "root": "lgg_mri_segmentation",
                                 "manifest": "manifest.csv"}, seed=0)
        {k: len(v) for k, v in data.splits.items()}
        # {'train': 46, 'val': 23, 'test': 20}
    """
    cfg = _as_config(spec)
    skipped: dict = {}
    if cfg.kind == "folders":  # the old spelling (load_config rewrites it with a notice)
        cfg = dataclasses.replace(cfg, kind="folder")
    if cfg.kind not in SEG_LAYOUTS:
        raise ConfigError(f"segmentation data kind {cfg.kind!r} is unknown; choose one of {', '.join(SEG_LAYOUTS)}")
    if not cfg.root:
        raise ConfigError("segmentation data needs a root folder")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        hint = "" if os.environ.get("MEDLENS_DATA") else " (shared datasets are found through $MEDLENS_DATA, default ../shared/data from the current folder)"
        raise DatasetError(f"{root}: dataset folder not found{hint}")
    if cfg.kind == "drive":
        samples, skipped = _load_drive(cfg, root)
    elif cfg.kind == "folder":
        samples = _load_folders(cfg, root)
    else:
        if not cfg.manifest:
            raise ConfigError("segmentation data kind 'csv' needs a manifest file")
        manifest = manifest_path(root, cfg.manifest)
        samples, skipped = _read_manifest(manifest, root, cfg.columns)
    if not samples:
        raise DatasetError(f"{root}: no image/mask pairs found")
    check_sizes(samples)
    had = {s.split for s in samples}
    splits = _assign_splits(samples, cfg, seed)
    patients, shared = check_patients({name: [s.patient_id for s in items] for name, items in splits.items()},
                                      str(root))
    report = {
        "kind": cfg.kind,
        "root": str(root),
        "counts": {name: len(items) for name, items in splits.items()},
        "patients": patients,
        "patients_shared": shared,
        "carved": sorted(name for name in SPLITS if name not in had and splits[name]),
        "fov": any(s.fov_path is not None for s in samples),
        **skipped,
    }
    logger.info("segmentation data %s: %s", root, report["counts"])
    return SegDataset(splits=splits, report=report)

