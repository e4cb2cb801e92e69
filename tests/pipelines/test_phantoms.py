"""Synthetic phantoms: lesions where the mask says, none in negatives, reproducible."""

from __future__ import annotations

import csv

import cv2
import numpy as np
import pytest

from medlens.pipelines.phantoms import make_phantom, write_phantoms


def test_lesion_is_where_the_mask_says():
    rng = np.random.default_rng(0)
    for _ in range(10):
        positive = make_phantom(64, 1, rng)
        inside = positive.mask > 0
        assert inside.sum() > 20
        ring = cv2.dilate(inside.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~cv2.dilate(
            inside.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        # The lesion is brighter than the tissue right around it.
        assert positive.image[inside].mean() > positive.image[ring].mean() + 30
        row, col = positive.center
        assert positive.mask[row, col] == 255


def test_negatives_have_empty_masks_and_errors_are_clear():
    negative = make_phantom(64, 0, np.random.default_rng(1))
    assert negative.mask.max() == 0 and negative.center is None
    with pytest.raises(ValueError, match="at least 32"):
        make_phantom(16, 0, np.random.default_rng(1))


def test_write_phantoms_layout_and_reproducibility(tmp_path):
    first = write_phantoms(tmp_path / "a", count=12, size=48, seed=9)
    second = write_phantoms(tmp_path / "b", count=12, size=48, seed=9)
    assert first.read_text() == second.read_text()
    rows = list(csv.DictReader(first.open()))
    assert len(rows) == 12
    for row in rows:
        image = cv2.imread(str(tmp_path / "a" / row["path"]), cv2.IMREAD_UNCHANGED)
        mask = cv2.imread(str(tmp_path / "a" / row["mask"]), cv2.IMREAD_UNCHANGED)
        assert image.shape == mask.shape == (48, 48)
        assert (mask.max() == 255) == (row["label"] == "1")
        assert row["path"].startswith(row["class_name"] + "/")
