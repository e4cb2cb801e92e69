"""Segmentation datasets: paired image/mask files to patch or whole-image Keras batches.

:func:`load_seg_dataset` turns a :class:`SegDataConfig` (or a plain dict with the same keys)
into a :class:`SegDataset`: one list of :class:`SegSample` per split (``train``, ``val``,
``test``) and a report. Three layouts are understood:

- ``drive``: the DRIVE benchmark layout, ``root/{training,test}/{images,1st_manual,mask}``
  (``root/manifest.csv`` is used when present; ``test/2nd_manual`` becomes the second
  observer's mask of each test sample);
- ``folder``: ``root/image_dir`` + ``root/mask_dir`` [+ ``root/fov_dir``], files paired by
  stem (:func:`pair_folders`); ``root/<split>/image_dir`` … when the data carries its splits;
- ``csv``: a manifest with ``image``, ``mask`` [, ``fov``] [, ``patient_id``] [, ``split``]
  columns (paths relative to the manifest's folder).

Splits given by the data are kept; a missing validation split is carved from train by
patient (or by image), with :func:`medlens.pipelines.data.make_splits`.

:class:`SegmentationSequence` feeds samples to ``model.fit``: random patches (biased towards
foreground, centred inside the field of view) or whole resized images, with the same
augmentation on image and mask, and an optional FOV weight map for masking losses and metrics.

Masks: with ``num_classes == 1`` (one sigmoid unit) any nonzero value is foreground; with
``num_classes == 2`` a 0/255 (or 0/1) mask becomes indices 0/1; with ``num_classes > 2``
the mask holds class indices ``0..C-1`` and ``y`` is one-hot.

Example:
    dataset = load_seg_dataset({"kind": "drive", "root": "drive"}, seed=0)
    train = SegmentationSequence(dataset.splits["train"], patch_size=64, batch_size=16)
    x, y, w = train[0]
    x.shape, y.shape, w.shape
    # ((16, 64, 64, 3), (16, 64, 64, 1), (16, 64, 64))
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import keras
import numpy as np

from medlens.pipelines.augment import augment as apply_augmentation
from medlens.pipelines.augment import build_augmentation
from medlens.pipelines.config import SegDataConfig
from medlens.pipelines.data import make_splits, resize_image
from medlens.pipelines.errors import ConfigError, DatasetError, ImageReadError
from medlens.pipelines.io import list_images, read_image, read_mask

__all__ = [
    "SEG_LAYOUTS",
    "DEFAULT_MASK_SUFFIXES",
    "SegSample",
    "SegDataConfig",
    "to_model_channels",
    "SegDataset",
    "pair_folders",
    "load_seg_dataset",
    "load_mask",
    "load_pair",
    "check_sizes",
    "SegmentationSequence",
]

logger = logging.getLogger(__name__)

SEG_LAYOUTS: tuple[str, ...] = ("drive", "folder", "csv")

#: Name endings stripped from file stems before images, masks and FOVs are paired.
DEFAULT_MASK_SUFFIXES: tuple[str, ...] = (
    "manual1",
    "manual2",
    "manual",
    "mask",
    "masks",
    "fov",
    "training",
    "train",
    "test",
    "testing",
    "seg",
    "segmentation",
    "label",
    "labels",
    "gt",
    "annotation",
)

_SPLITS = ("train", "val", "test")
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
_DEFAULT_COLUMNS = {
    "image": ("image", "image_path", "path"),
    "mask": ("mask", "mask_path", "label", "manual1"),
    "fov": ("fov", "fov_mask", "fov_path"),
    "patient_id": ("patient_id", "patient", "case", "subject"),
    "split": ("split",),
    "mask2": ("manual2", "mask2"),
}


# --------------------------------------------------------------------------- samples and config


@dataclass(frozen=True)
class SegSample:
    """One image with its label mask.

    Attributes:
        image_path: The image file.
        mask_path: Its label mask (binary or class indices).
        fov_path: Field-of-view mask (nonzero inside), or ``None`` when the whole image counts.
        patient_id: Patient (group) id for grouped splits, or ``None``.
        split: ``train``/``val``/``test`` when known.
        mask2_path: A second observer's mask (DRIVE ``2nd_manual``), or ``None``. Not used for
            training; evaluation can compare it with the first observer.
    """

    image_path: Path
    mask_path: Path
    fov_path: Path | None = None
    patient_id: str | None = None
    split: str | None = None
    mask2_path: Path | None = None


@dataclass
class SegDataset:
    """Samples per split plus a report (counts, patients, layout)."""

    splits: dict[str, list[SegSample]]
    report: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- pairing


def _suffix_pattern(suffixes: Sequence[str]) -> re.Pattern[str]:
    names = sorted({s.strip("_-. ").lower() for s in suffixes if s.strip("_-. ")}, key=len, reverse=True)
    return re.compile(r"(?:[_\-. ](?:" + "|".join(re.escape(n) for n in names) + r"))+$", re.IGNORECASE)


def _stem(path: Path) -> str:
    name = path.name
    if name.lower().endswith(".nii.gz"):
        return name[:-7]
    return path.stem


def _keys(path: Path, pattern: re.Pattern[str]) -> tuple[str, str, str | None]:
    """Pairing keys, strictest first: exact stem, stem without known suffixes, leading number."""
    stem = _stem(path).lower()
    stripped = pattern.sub("", stem) or stem
    number = re.match(r"^(\d+)(?=\D|$)", stem)
    return stem, stripped, str(int(number.group(1))) if number else None


def _names(paths: Sequence[Path], limit: int = 5) -> str:
    shown = ", ".join(p.name for p in list(paths)[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _match(
    images: Sequence[Path], others: Sequence[Path], pattern: re.Pattern[str], what: str, folder: Path
) -> tuple[dict[Path, Path], list[Path], list[Path]]:
    """Pair each image with one file of ``others``; return pairs, unmatched images, unused others."""
    other_keys = [_keys(p, pattern) for p in others]
    pairs: dict[Path, Path] = {}
    used: dict[Path, Path] = {}
    unmatched: list[Path] = []
    for image in images:
        image_keys = _keys(image, pattern)
        found: Path | None = None
        for level in range(3):
            key = image_keys[level]
            if key is None:
                continue
            hits = [p for p, keys in zip(others, other_keys, strict=True) if keys[level] == key and p != image]
            if len(hits) == 1:
                found = hits[0]
                break
            if len(hits) > 1:
                raise DatasetError(
                    f"{folder}: image {image.name} matches several {what} files ({_names(hits)}); rename them"
                )
        if found is None:
            unmatched.append(image)
            continue
        if found in used:
            raise DatasetError(
                f"{folder}: {what} file {found.name} matches both {used[found].name} and {image.name}"
            )
        used[found] = image
        pairs[image] = found
    unused = [p for p in others if p not in used]
    return pairs, unmatched, unused


def pair_folders(
    image_dir: str | os.PathLike[str],
    mask_dir: str | os.PathLike[str],
    fov_dir: str | os.PathLike[str] | None = None,
    *,
    mask_suffixes: Sequence[str] = DEFAULT_MASK_SUFFIXES,
    split: str | None = None,
) -> list[SegSample]:
    """Pair images with masks (and FOV masks) by file name.

    A file pairs with another when, in this order, their stems are equal, their stems
    without known suffixes are equal (``21_training`` ~ ``21_manual1`` ~ ``21_training_mask``
    all give ``21``), or their leading numbers are equal (``021_x`` ~ ``21_y``). A key that
    matches several files is an error rather than a guess. When ``mask_dir`` is ``image_dir``
    the files whose stems end with a mask suffix are the masks (``case_1.tif`` /
    ``case_1_mask.tif``).

    Args:
        image_dir: Folder of images (searched recursively).
        mask_dir: Folder of masks.
        fov_dir: Optional folder of field-of-view masks; every image needs one.
        mask_suffixes: Stem endings ignored when pairing (``_`` ``-`` ``.`` or space before them).
        split: Split name stored on every sample.

    Returns:
        Samples sorted by image path.

    Raises:
        DatasetError: A folder is missing or empty, images or masks are left unmatched, or a
            name is ambiguous; the one-line message names the first few files.

    Example:
        samples = pair_folders("drive/training/images", "drive/training/1st_manual",
                               "drive/training/mask")
        samples[0].mask_path.name
        # '21_manual1.gif'
    """
    pattern = _suffix_pattern(mask_suffixes)
    image_dir, mask_dir = Path(image_dir), Path(mask_dir)
    for folder, what in ((image_dir, "image"), (mask_dir, "mask")) + (
        ((Path(fov_dir), "FOV"),) if fov_dir else ()
    ):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: {what} folder not found")
    images = list_images(image_dir)
    if image_dir.resolve() == mask_dir.resolve():
        masks = [p for p in images if pattern.search(_stem(p).lower())]
        images = [p for p in images if p not in set(masks)]
    else:
        masks = list_images(mask_dir)
    if not images:
        raise DatasetError(f"{image_dir}: no images found")
    if not masks:
        raise DatasetError(f"{mask_dir}: no masks found")
    pairs, unmatched, unused = _match(images, masks, pattern, "mask", mask_dir)
    if unmatched or unused:
        parts = []
        if unmatched:
            parts.append(f"{len(unmatched)} image(s) without a mask in {mask_dir} ({_names(unmatched)})")
        if unused:
            parts.append(f"{len(unused)} mask(s) without an image in {image_dir} ({_names(unused)})")
        raise DatasetError("cannot pair images and masks: " + "; ".join(parts))
    fovs: dict[Path, Path] = {}
    if fov_dir:
        fov_files = list_images(Path(fov_dir))
        fovs, no_fov, extra = _match(images, fov_files, pattern, "FOV", Path(fov_dir))
        if no_fov:
            raise DatasetError(
                f"{fov_dir}: {len(no_fov)} image(s) in {image_dir} have no FOV mask ({_names(no_fov)})"
            )
        if extra:
            logger.warning("%s: %d FOV mask(s) match no image (%s)", fov_dir, len(extra), _names(extra))
    return [
        SegSample(image, pairs[image], fovs.get(image), None, split) for image in sorted(images)
    ]


# --------------------------------------------------------------------------- reading


def _image_size(path: Path) -> tuple[int, int] | None:
    """``(height, width)`` from the file header, or ``None`` when Pillow cannot tell cheaply."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            width, height = image.size
            return int(height), int(width)
    except Exception:  # noqa: BLE001 - the full reader reports the real problem later
        return None


def _size_error(image_path: Path, other: Path, what: str, image_hw: Sequence[int], other_hw: Sequence[int]) -> ImageReadError:
    return ImageReadError(
        other,
        f"{what} is {other_hw[1]}×{other_hw[0]} pixels but its image {image_path} is "
        f"{image_hw[1]}×{image_hw[0]}",
    )


def check_sizes(samples: Sequence[SegSample]) -> None:
    """Check from file headers that every mask and FOV has its image's size.

    Args:
        samples: Samples to check.

    Raises:
        ImageReadError: A mask or FOV differs in size; the message names both files.
    """
    for sample in samples:
        image_hw = _image_size(Path(sample.image_path))
        if image_hw is None:
            continue
        for other, what in ((sample.mask_path, "mask"), (sample.fov_path, "FOV mask"), (sample.mask2_path, "mask")):
            if other is None:
                continue
            other_hw = _image_size(Path(other))
            if other_hw is not None and other_hw != image_hw:
                raise _size_error(Path(sample.image_path), Path(other), what, image_hw, other_hw)


def load_mask(path: str | os.PathLike[str], num_classes: int = 1) -> np.ndarray:
    """Read a label mask as ``uint8`` ``H×W`` class indices.

    Args:
        path: Mask file (PNG/GIF/TIFF/BMP/JPEG).
        num_classes: 1 or 2: any nonzero value becomes 1 (0/255 GIFs, 0/1 palette GIFs);
            C > 2: values must already be class indices ``0..C-1``.

    Returns:
        ``uint8`` ``H×W`` array.

    Raises:
        ImageReadError: Unreadable file, or a value ``>= num_classes`` in a multi-class mask.
    """
    mask = read_mask(path)
    if num_classes <= 2:
        return (mask > 0).astype(np.uint8)
    top = int(mask.max())
    if top >= num_classes:
        raise ImageReadError(
            path, f"mask holds value {top} but num_classes is {num_classes}; expected class indices 0..{num_classes - 1}"
        )
    return mask


def load_pair(
    sample: SegSample, num_classes: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read one sample: image, mask and FOV, checked to share one size.

    Args:
        sample: The sample.
        num_classes: See :func:`load_mask`.

    Returns:
        ``(image float32 H×W×C in [0, 1], mask uint8 H×W, fov bool H×W or None)``.

    Raises:
        ImageReadError: A file is unreadable, or the mask/FOV size differs from the image's
            (the message names both files).
    """
    image = read_image(sample.image_path).pixels
    mask = load_mask(sample.mask_path, num_classes)
    if mask.shape != image.shape[:2]:
        raise _size_error(Path(sample.image_path), Path(sample.mask_path), "mask", image.shape, mask.shape)
    fov = None
    if sample.fov_path is not None:
        fov = read_mask(sample.fov_path) > 0
        if fov.shape != image.shape[:2]:
            raise _size_error(Path(sample.image_path), Path(sample.fov_path), "FOV mask", image.shape, fov.shape)
    return image, mask, fov


# --------------------------------------------------------------------------- datasets


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


def _normalise_split(value: str, where: str) -> str:
    split = _SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise DatasetError(f"{where}: unknown split {value!r}; use train, val or test")
    return split


def _load_drive(cfg: SegDataConfig, root: Path) -> list[SegSample]:
    manifest = root / (cfg.manifest or "manifest.csv")
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
        split = _normalise_split(folder_name, str(folder))
        pairs = pair_folders(folder / "images", folder / "1st_manual", fov_dir, split=split)
        second: dict[Path, Path] = {}
        if (folder / "2nd_manual").is_dir():
            pattern = _suffix_pattern(DEFAULT_MASK_SUFFIXES)
            second, _, _ = _match([s.image_path for s in pairs], list_images(folder / "2nd_manual"),
                                  pattern, "mask", folder / "2nd_manual")
        for sample in pairs:
            number = _keys(sample.image_path, _suffix_pattern(DEFAULT_MASK_SUFFIXES))[1]
            samples.append(dataclasses.replace(sample, patient_id=number, mask2_path=second.get(sample.image_path)))
    return samples


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


def _read_manifest(manifest: Path, root: Path, columns: Mapping[str, str]) -> list[SegSample]:
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            header = list(rows[0].keys()) if rows else []
    except OSError as exc:
        raise DatasetError(f"{manifest}: cannot read manifest ({exc.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{manifest}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DatasetError(f"{manifest}: manifest has no rows")
    roles = {role: _column(header, columns, role, manifest, role in ("image", "mask")) for role in _DEFAULT_COLUMNS}
    base = root

    def path_of(text: str | None) -> Path | None:
        if not text or not text.strip():
            return None
        path = Path(text.strip()).expanduser()
        return path if path.is_absolute() else base / path

    samples: list[SegSample] = []
    missing: list[Path] = []
    for line, row in enumerate(rows, start=2):
        def cell(role: str, row: dict[str, Any] = row) -> str:
            column = roles[role]
            return (row.get(column) or "").strip() if column else ""

        image = path_of(cell("image"))
        mask = path_of(cell("mask"))
        if image is None or mask is None:
            raise DatasetError(f"{manifest}: line {line} has an empty image or mask cell")
        fov = path_of(cell("fov"))
        mask2 = path_of(cell("mask2"))
        for path in (image, mask, fov, mask2):
            if path is not None and not path.is_file():
                missing.append(path)
        patient = cell("patient_id") or None
        split_text = cell("split")
        split = _normalise_split(split_text, f"{manifest} line {line}") if split_text else None
        samples.append(SegSample(image, mask, fov, patient, split, mask2))
    if missing:
        raise DatasetError(f"{manifest}: {len(missing)} listed file(s) not found ({', '.join(str(p) for p in missing[:3])})")
    return samples


def _load_folders(cfg: SegDataConfig, root: Path) -> list[SegSample]:
    split_dirs = [
        (child, _SPLIT_ALIASES[child.name.lower()])
        for child in sorted(root.iterdir())
        if child.is_dir() and child.name.lower() in _SPLIT_ALIASES and (child / cfg.image_dir).is_dir()
    ] if root.is_dir() else []
    if not split_dirs:
        split_dirs = [(root, None)]
    samples: list[SegSample] = []
    for folder, split in split_dirs:
        fov = folder / cfg.fov_dir if cfg.fov_dir else None
        samples.extend(pair_folders(folder / cfg.image_dir, folder / cfg.mask_dir, fov, split=split))
    return samples


def _assign_splits(samples: list[SegSample], cfg: SegDataConfig, seed: int) -> dict[str, list[SegSample]]:
    """Keep given splits, carve missing val (and test when nothing is given) by patient."""

    def groups(items: Sequence[SegSample]) -> list[str]:
        return [s.patient_id if s.patient_id is not None else f"#image:{s.image_path}" for s in items]

    given = [s for s in samples if s.split is not None]
    if given and len(given) != len(samples):
        raise DatasetError(f"{len(samples) - len(given)} sample(s) have no split while others do; give every sample a split")
    if not given:
        parts = make_splits(np.zeros(len(samples)), groups(samples), cfg.val_fraction, cfg.test_fraction, seed)
        return {name: [dataclasses.replace(samples[i], split=name) for i in parts[name]] for name in _SPLITS}
    splits = {name: [s for s in samples if s.split == name] for name in _SPLITS}
    if not splits["val"] and cfg.val_fraction > 0 and splits["train"]:
        train = splits["train"]
        parts = make_splits(np.zeros(len(train)), groups(train), cfg.val_fraction, 0.0, seed)
        splits["val"] = [dataclasses.replace(train[i], split="val") for i in parts["val"]]
        splits["train"] = [train[i] for i in parts["train"]]
    return splits


def load_seg_dataset(spec: Mapping[str, Any] | SegDataConfig, seed: int = 0) -> SegDataset:
    """Find image/mask pairs and split them into train, val and test.

    Args:
        spec: A :class:`SegDataConfig` or a dict of its fields (``kind`` and ``root`` at least).
        seed: Seed of the carved splits; the same seed gives the same split.

    Returns:
        A :class:`SegDataset`; ``report`` holds ``kind``, ``root``, ``counts`` per split,
        ``patients`` per split (when known) and ``carved`` (splits made here).

    Raises:
        ConfigError: Unknown layout or keys.
        DatasetError: Missing folders/files, unpairable names, a patient in two given splits.
        ImageReadError: A mask or FOV whose size differs from its image's (both files named).

    Example:
        data = load_seg_dataset({"kind": "csv", "root": "lgg_mri_segmentation",
                                 "manifest": "manifest.csv"}, seed=0)
        {k: len(v) for k, v in data.splits.items()}
        # {'train': 46, 'val': 23, 'test': 20}
    """
    cfg = _as_config(spec)
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
        samples = _load_drive(cfg, root)
    elif cfg.kind == "folder":
        samples = _load_folders(cfg, root)
    else:
        if not cfg.manifest:
            raise ConfigError("segmentation data kind 'csv' needs a manifest file")
        manifest = Path(cfg.manifest).expanduser()
        manifest = manifest if manifest.is_absolute() else root / manifest
        if not manifest.is_file():
            raise DatasetError(f"{manifest}: manifest not found")
        samples = _read_manifest(manifest, manifest.parent, cfg.columns)
    if not samples:
        raise DatasetError(f"{root}: no image/mask pairs found")
    check_sizes(samples)
    had = {s.split for s in samples}
    splits = _assign_splits(samples, cfg, seed)
    patients = {
        name: sorted({s.patient_id for s in items if s.patient_id is not None}) for name, items in splits.items()
    }
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = set(patients[a]) & set(patients[b])
        if shared:
            raise DatasetError(f"{root}: patient(s) {', '.join(sorted(shared)[:3])} appear in both {a} and {b}")
    report = {
        "kind": cfg.kind,
        "root": str(root),
        "counts": {name: len(items) for name, items in splits.items()},
        "patients": {name: len(ids) for name, ids in patients.items()},
        "carved": sorted(name for name in _SPLITS if name not in had and splits[name]),
        "fov": any(s.fov_path is not None for s in samples),
    }
    logger.info("segmentation data %s: %s", root, report["counts"])
    return SegDataset(splits=splits, report=report)


# --------------------------------------------------------------------------- sequence


@dataclass
class _Entry:
    """One cached image: pixels (uint8 or float16), labels, FOV and sampling candidates."""

    image: np.ndarray
    mask: np.ndarray
    fov: np.ndarray | None
    foreground: np.ndarray  # flat indices of foreground pixels (inside the FOV)
    allowed: np.ndarray | None  # flat indices of FOV pixels, None = every pixel


def _to_store(pixels: np.ndarray) -> np.ndarray:
    """uint8 when the image is 8-bit (lossless), float16 otherwise."""
    scaled = pixels * np.float32(255.0)
    rounded = np.rint(scaled)
    if np.max(np.abs(scaled - rounded), initial=0.0) < 1e-3:
        return rounded.clip(0, 255).astype(np.uint8)
    return pixels.astype(np.float16)


def _from_store(stored: np.ndarray) -> np.ndarray:
    if stored.dtype == np.uint8:
        return stored.astype(np.float32) / np.float32(255.0)
    return stored.astype(np.float32)


def _reflect(indices: np.ndarray, size: int) -> np.ndarray:
    """Map any integer indices into ``0..size-1`` by mirror reflection (numpy's ``reflect``)."""
    if size == 1:
        return np.zeros_like(indices)
    period = 2 * (size - 1)
    folded = np.abs(indices) % period
    return np.where(folded >= size, period - folded, folded)


def to_model_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """An image in ``[0, 1]`` as ``float32`` ``H×W×channels`` in ``0..255``: grey repeated, colour greyed.

    Training batches and inference (:mod:`medlens.pipelines.segtrain`) both go through this,
    so a model sees the same input either way.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 4:
        image = image[..., :3]
    if image.shape[-1] != channels:
        if channels == 3:
            image = np.repeat(image[..., :1], 3, axis=-1)
        else:
            image = cv2.cvtColor(np.ascontiguousarray(image, dtype=np.float32), cv2.COLOR_RGB2GRAY)[..., None]
    return np.clip(image * np.float32(255.0), 0.0, 255.0).astype(np.float32, copy=False)


class SegmentationSequence(keras.utils.PyDataset):
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
        cache: Keep decoded images (uint8, or float16 for wider data) in memory.
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
        return_fov_weights: bool = True,
        shuffle: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if mode not in ("patch", "whole"):
            raise ValueError(f"mode must be 'patch' or 'whole', not {mode!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
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
        self.batch_size = int(batch_size)
        self.augment = build_augmentation(augment) if isinstance(augment, str) else augment
        self.preprocess = preprocess
        self.num_classes = int(num_classes)
        self.channels = int(channels)
        self.seed = int(seed)
        self.cache = cache
        self.return_fov_weights = return_fov_weights
        self.shuffle = (mode == "patch") if shuffle is None else bool(shuffle)
        self._cache: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._transforms: dict[int, Any] = {}
        self.epoch = 0
        self.order = self._epoch_order(0)

    # keras 3 PyDataset API ---------------------------------------------------------------

    def __len__(self) -> int:
        return math.ceil(len(self.order) / self.batch_size)

    def __getitem__(self, index: int) -> Any:
        if index < 0 or index >= len(self):
            raise IndexError(f"batch {index} out of range (0..{len(self) - 1})")
        start = index * self.batch_size
        items = [self._item(start + k) for k in range(min(self.batch_size, len(self.order) - start))]
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

    def on_epoch_end(self) -> None:
        """Advance to the next epoch's order, patches and augmentations."""
        self.set_epoch(self.epoch + 1)

    def set_epoch(self, epoch: int) -> None:
        """Jump to ``epoch``'s order, patches and augmentations."""
        self.epoch = int(epoch)
        self.order = self._epoch_order(self.epoch)

    # helpers ---------------------------------------------------------------------------

    def _epoch_order(self, epoch: int) -> np.ndarray:
        repeats = self.patches_per_image if self.mode == "patch" else 1
        order = np.repeat(np.arange(len(self.samples)), repeats)
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(order)
        return order

    def _rng(self, position: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, position])

    def _entry(self, index: int) -> _Entry:
        if self.cache:
            with self._lock:
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
            image=_to_store(image),
            mask=mask,
            fov=fov,
            foreground=np.flatnonzero((mask > 0) & region),
            allowed=np.flatnonzero(fov) if fov is not None else None,
        )
        if self.cache:
            with self._lock:
                self._cache[index] = entry
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
        image = _from_store(entry.image[grid])
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
            image = _from_store(entry.image)
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

    def _transform(self) -> Any:
        # Albumentations pipelines hold their own random state: one copy per worker thread.
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
