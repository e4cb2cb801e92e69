"""Images paired with their label masks (and field-of-view masks), by file name, and read together.

A :class:`SegSample` is one image with its mask; :func:`pair_folders` pairs the files of two
folders by stem, :func:`check_sizes` checks sizes from file headers before training, and
:func:`load_pair` reads a sample with every size checked. Masks: with ``num_classes`` 1 or 2
any nonzero value is foreground; with more, the mask holds class indices ``0..C-1``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medlens.pipelines.errors import DatasetError, ImageReadError
from medlens.pipelines.imaging import list_images, read_image, read_mask

__all__ = ["DEFAULT_MASK_SUFFIXES", "SegSample", "pair_folders", "check_sizes", "load_mask", "load_pair"]

logger = logging.getLogger(__name__)

#: Name endings stripped from file stems before images, masks and FOVs are paired.
DEFAULT_MASK_SUFFIXES: tuple[str, ...] = (
    "manual1", "manual2", "manual", "mask", "masks", "fov", "training", "train", "test", "testing", "seg",
    "segmentation", "label", "labels", "gt", "annotation",
)


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
