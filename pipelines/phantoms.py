"""Synthetic phantoms: grey "organ" images with or without a lesion at a known place.

The demo, the tests and the explanation checks need images whose ground truth
is known exactly: where the lesion is, and so where a faithful heatmap should
point. Each phantom is a textured elliptical body with vessel-like bright
curves in every image (so "bright" alone does not give the answer) and, in
positives, one round lesion with soft edges. The lesion mask is saved beside
the image.

Example:
    >>> from medlens.pipelines.phantoms import write_phantoms
    >>> manifest = write_phantoms("/tmp/phantoms", count=8, size=64, seed=0)
    >>> manifest.name
    'manifest.csv'
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from medlens.pipelines.rundir import atomic_write_bytes, atomic_write_csv

__all__ = ["CLASS_NAMES", "FINDINGS", "Phantom", "make_phantom", "make_findings_phantom", "write_phantoms",
           "write_findings_phantoms"]

CLASS_NAMES = ("no_lesion", "lesion")
#: The lesion types of the multi-label phantoms: a bright disc, a dark disc, a striped (reticular) disc.
FINDINGS = ("nodule", "cyst", "reticular")


@dataclass
class Phantom:
    """One synthetic image and its ground truth.

    ``image`` is ``uint8`` H×W; ``mask`` is ``uint8`` H×W with 255 inside the lesion
    (all zero when ``label`` is 0); ``center`` is (row, col) of the lesion or None.
    """

    image: np.ndarray
    mask: np.ndarray
    label: int
    center: tuple[int, int] | None
    radius: float


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.standard_normal((max(2, size // scale),) * 2).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def make_phantom(size: int, label: int, rng: np.random.Generator) -> Phantom:
    """Draw one phantom of ``size``×``size`` pixels; ``label`` 1 adds a lesion."""
    if size < 32:
        raise ValueError(f"phantom size must be at least 32 pixels, got {size}")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    image, centre, axes = _body(size, rng, (0.38, 0.46))

    mask = np.zeros((size, size), np.uint8)
    lesion_centre: tuple[int, int] | None = None
    radius = 0.0
    if label == 1:
        radius = float(size * rng.uniform(0.07, 0.11))
        # Keep the lesion inside the body, away from its edge.
        while True:
            row, col = rng.uniform(0.25, 0.75, 2) * size
            inside = ((row - centre[0]) / (axes[0] - radius)) ** 2 + ((col - centre[1]) / (axes[1] - radius)) ** 2
            if inside <= 1.0:
                break
        distance = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
        lesion = np.clip((radius - distance) / 1.5 + 0.5, 0.0, 1.0)
        image += 0.3 * lesion
        mask[distance <= radius] = 255
        lesion_centre = (int(round(row)), int(round(col)))

    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    pixels = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return Phantom(pixels, mask, label, lesion_centre, radius)


def _body(size: int, rng: np.random.Generator, axes_range: tuple[float, float] = (0.40, 0.46)
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The textured elliptical body with vessel-like curves (no lesion): ``(image float32, centre, axes)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
    axes = size * rng.uniform(*axes_range, 2)
    body = ((yy - centre[0]) / axes[0]) ** 2 + ((xx - centre[1]) / axes[1]) ** 2 <= 1.0
    image = np.zeros((size, size), np.float32)
    image[body] = 0.35
    image += 0.06 * _smooth_noise(rng, size, 8) * body
    # Vessel-like bright curves in every image, so brightness alone is no cue.
    for _ in range(rng.integers(2, 5)):
        points = rng.uniform(0.15, 0.85, (4, 2)) * size
        curve = np.zeros((size, size), np.uint8)
        cv2.polylines(curve, [points.astype(np.int32)], False, 255, thickness=1)
        image += 0.25 * (curve > 0) * body
    return image, centre, axes


def make_findings_phantom(size: int, present: tuple[bool, ...], rng: np.random.Generator
                          ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A phantom with any combination of the :data:`FINDINGS` lesion types, each at its own place.

    Returns the ``uint8`` image and, per finding present, its ``uint8`` mask (255 inside).
    Lesions never overlap: each sits in a free quadrant around the body's centre.
    """
    if size < 48:
        raise ValueError(f"findings phantom size must be at least 48 pixels, got {size}")
    image, _, _ = _body(size, rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cells = rng.permutation(4)
    masks: dict[str, np.ndarray] = {}
    radius = size * 0.11
    for k, (finding, on) in enumerate(zip(FINDINGS, present, strict=True)):
        if not on:
            continue
        cell_row, cell_col = divmod(int(cells[k]), 2)
        row = size * (0.32 + 0.36 * cell_row) + rng.uniform(-0.04, 0.04) * size
        col = size * (0.32 + 0.36 * cell_col) + rng.uniform(-0.04, 0.04) * size
        distance = np.sqrt((yy - row) ** 2 + (xx - col) ** 2)
        if finding == "nodule":
            shape = np.clip((radius - distance) / 1.2 + 0.5, 0.0, 1.0)
        elif finding == "cyst":  # darker than the body: the same disc, negative contrast
            shape = -np.clip((radius * 1.1 - distance) / 1.2 + 0.5, 0.0, 1.0)
        else:  # reticular: fine stripes inside a disc, no net brightness (texture, not contrast)
            disc = np.clip((radius * 1.1 - distance) / 1.2 + 0.5, 0.0, 1.0)
            shape = disc * np.sin((xx + yy) * (np.pi / 2.0)) * 1.3
        image += 0.32 * shape
        masks[finding] = ((np.abs(shape) > 0.25) * 255).astype(np.uint8)
        if finding == "reticular":  # its mask is the textured disc, stripes and gaps alike
            masks[finding] = ((distance <= radius * 1.1) * 255).astype(np.uint8)
    image += rng.normal(0.0, 0.03, image.shape).astype(np.float32)
    image = cv2.GaussianBlur(image, (3, 3), 0.6)
    return np.clip(image * 255.0, 0, 255).astype(np.uint8), masks


def write_findings_phantoms(folder: str | Path, *, count: int = 200, size: int = 64, prevalence: float = 0.45,
                            seed: int = 0) -> Path:
    """Write multi-label phantoms with a mask per finding and a manifest.

    Layout: ``folder/images/case_0001.png``, ``folder/masks/case_0001_<finding>.png`` (the
    name :class:`~medlens.pipelines.explain.explainer.Explainer` looks up for a finding's pointing
    game), ``folder/manifest.csv`` with ``path,patient_id`` and one 0/1 column per finding
    of :data:`FINDINGS` (each present with probability ``prevalence``, independently; two
    images per patient).

    Returns:
        The manifest path.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(1, count + 1):
        present = tuple(bool(v) for v in rng.random(len(FINDINGS)) < prevalence)
        image, masks = make_findings_phantom(size, present, rng)
        name = f"case_{index:04d}"
        atomic_write_bytes(folder / "images" / f"{name}.png", _png_bytes(image))
        for finding, mask in masks.items():
            atomic_write_bytes(folder / "masks" / f"{name}_{finding}.png", _png_bytes(mask))
        rows.append([f"images/{name}.png", f"p{(index + 1) // 2:04d}", *[int(v) for v in present]])
    return atomic_write_csv(folder / "manifest.csv", ["path", "patient_id", *FINDINGS], rows)


def _png_bytes(array: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".png", array)
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise RuntimeError("could not encode PNG")
    return encoded.tobytes()


def write_phantoms(
    folder: str | Path,
    *,
    count: int = 200,
    size: int = 64,
    positive_fraction: float = 0.5,
    seed: int = 0,
) -> Path:
    """Write ``count`` phantoms as PNGs with lesion masks and a manifest.

    Layout::

        folder/lesion/phantom_0001.png     folder/no_lesion/phantom_0002.png
        folder/masks/phantom_0001.png      folder/manifest.csv

    The manifest has ``path,label,class_name,mask,lesion_row,lesion_col,lesion_radius``
    (paths relative to ``folder``).

    Returns:
        The manifest path.
    """
    folder = Path(folder)
    rng = np.random.default_rng(seed)
    labels = (rng.random(count) < positive_fraction).astype(int)
    rows = []
    for index, label in enumerate(labels, start=1):
        phantom = make_phantom(size, int(label), rng)
        name = f"phantom_{index:04d}.png"
        image_path = Path(CLASS_NAMES[label]) / name
        mask_path = Path("masks") / name
        atomic_write_bytes(folder / image_path, _png_bytes(phantom.image))
        atomic_write_bytes(folder / mask_path, _png_bytes(phantom.mask))
        row, col = phantom.center if phantom.center else ("", "")
        rows.append(
            [image_path.as_posix(), int(label), CLASS_NAMES[label], mask_path.as_posix(), row, col,
             round(phantom.radius, 2)]
        )
    header = ["path", "label", "class_name", "mask", "lesion_row", "lesion_col", "lesion_radius"]
    return atomic_write_csv(folder / "manifest.csv", header, rows)
