"""Deletion/insertion AUC rank a true saliency map above random and inverted ones."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.pipelines.explain.faithfulness import (
    curve_auc,
    deletion_auc,
    deletion_curve,
    insertion_auc,
    insertion_curve,
    make_baseline,
    summarize,
)
from medlens.pipelines.explain.localisation import random_saliency

SIZE = 48
ROWS, COLS = slice(10, 22), slice(26, 38)


def synthetic_image() -> np.ndarray:
    rng = np.random.default_rng(1)
    image = 60.0 + 20.0 * rng.random((SIZE, SIZE, 3))
    image[ROWS, COLS] = 210.0
    return image.astype(np.float32)


class SquareModel:
    """Probability of class 1 = sigmoid of the mean brightness inside the known square."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(batch))
        brightness = batch[:, ROWS, COLS, :].mean(axis=(1, 2, 3)) / 255.0
        positive = 1.0 / (1.0 + np.exp(-10.0 * (brightness - 0.5)))
        return np.stack([1.0 - positive, positive], axis=1)


def true_saliency(size: int = SIZE) -> np.ndarray:
    saliency = np.zeros((size, size), np.float32)
    scale = size // SIZE
    saliency[ROWS.start * scale : ROWS.stop * scale, COLS.start * scale : COLS.stop * scale] = 1.0
    return saliency


@pytest.mark.parametrize("baseline", ["zero", "mean", 0.0])
def test_true_map_beats_random_and_inverted(baseline):
    model, image = SquareModel(), synthetic_image()
    maps = {
        "true": true_saliency(),
        "random": random_saliency((SIZE, SIZE), seed=0),
        "inverted": 1.0 - true_saliency(),
    }
    deletion = {name: deletion_auc(model, image, m, 1, baseline=baseline) for name, m in maps.items()}
    insertion = {name: insertion_auc(model, image, m, 1, baseline=baseline) for name, m in maps.items()}
    for values in (deletion, insertion):
        assert all(0.0 <= v <= 1.0 for v in values.values())
    assert deletion["true"] < deletion["random"] - 0.2
    assert deletion["true"] < deletion["inverted"] - 0.2
    assert insertion["true"] > insertion["random"] + 0.2
    assert insertion["true"] > insertion["inverted"] + 0.2


def test_default_blur_baseline_still_ranks_the_true_map_first():
    model, image = SquareModel(), synthetic_image()
    assert deletion_auc(model, image, true_saliency(), 1) < deletion_auc(
        model, image, 1.0 - true_saliency(), 1
    )
    assert insertion_auc(model, image, true_saliency(), 1) > insertion_auc(
        model, image, 1.0 - true_saliency(), 1
    )


def test_curve_endpoints_length_and_batches():
    model, image = SquareModel(), synthetic_image()
    original = model(image[None])[0, 1]
    baseline = model(make_baseline(image, "zero")[None])[0, 1]
    model.batch_sizes.clear()
    deletion = deletion_curve(model, image, true_saliency(), 1, steps=20, baseline="zero", batch_size=8)
    assert deletion.shape == (21,)
    assert deletion[0] == pytest.approx(original)
    assert deletion[-1] == pytest.approx(baseline)
    assert model.batch_sizes == [8, 8, 5]
    insertion = insertion_curve(model, image, true_saliency(), None, steps=20, baseline="zero")
    assert insertion[0] == pytest.approx(baseline)
    assert insertion[-1] == pytest.approx(original)
    # Deleting the square first: the probability drops and stays down.
    assert deletion[5] < 0.5 * deletion[0]


def test_saliency_is_resized_and_ties_are_deterministic():
    model, image = SquareModel(), synthetic_image()
    small = deletion_auc(model, image, true_saliency(SIZE)[::2, ::2], 1, baseline="zero")
    large = deletion_auc(model, image, true_saliency(SIZE * 2), 1, baseline="zero")
    assert small < 0.3 and large < 0.3
    flat = np.ones((SIZE, SIZE))
    first = deletion_curve(model, image, flat, 1, baseline="zero")
    assert np.array_equal(first, deletion_curve(model, image, flat, 1, baseline="zero"))


def test_grey_uint8_image_and_sigmoid_output():
    image = synthetic_image()[..., 0].astype(np.uint8)

    def sigmoid_model(batch):
        return SquareModel()(batch)[:, 1]

    curve = deletion_curve(sigmoid_model, image, true_saliency(), baseline="zero", steps=10)
    assert curve.shape == (11,) and curve[0] > 0.9


def test_bad_arguments():
    model, image = SquareModel(), synthetic_image()
    with pytest.raises(ValueError):
        deletion_curve(model, image, true_saliency(), 1, baseline="noise")
    with pytest.raises(ValueError):
        deletion_curve(model, image, true_saliency(), 5)
    with pytest.raises(ValueError):
        deletion_curve(model, image, np.full((SIZE, SIZE), np.nan), 1)
    with pytest.raises(ValueError):
        deletion_curve(model, image, true_saliency(), 1, steps=0)


def test_curve_auc():
    assert curve_auc(np.ones(11)) == pytest.approx(1.0)
    assert curve_auc(np.zeros(5)) == 0.0
    assert curve_auc(np.linspace(1.0, 0.0, 51)) == pytest.approx(0.5)


def test_summarize():
    rows = [
        {"id": "a", "deletion_auc": 0.2, "hit": True, "missing": None},
        {"id": "b", "deletion_auc": 0.4, "hit": False, "missing": float("nan")},
    ]
    summary = summarize(rows)
    assert summary["deletion_auc"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1), "n": 2}
    assert summary["hit"]["mean"] == 0.5
    assert summary["missing"] == {"mean": None, "std": None, "n": 0}
    assert "id" not in summary
