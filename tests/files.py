"""Small files the data tests write: an 8-bit PNG from an array, a CSV manifest from rows."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, array: np.ndarray) -> Path:
    """``array`` (values 0..255) as an 8-bit PNG at ``path``, folders made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return path


def write_manifest(path: Path, rows: list[dict[str, object]]) -> Path:
    """``rows`` as a CSV with the first row's keys as the header."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
