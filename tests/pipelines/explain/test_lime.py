"""LIME: finds the region a synthetic model looks at, reproducibly and in bounded batches."""

from __future__ import annotations

import numpy as np
import pytest

from medlens.pipelines.explain.lime import LimeExplainer, LimeResult, segment_image

SIZE = 64
ROWS, COLS = slice(20, 36), slice(36, 52)


def synthetic_image(seed: int = 0) -> np.ndarray:
    """Textured dark background with a bright square where the synthetic model looks."""
    rng = np.random.default_rng(seed)
    image = 60.0 + 20.0 * rng.random((SIZE, SIZE, 3))
    image[ROWS, COLS] = 200.0
    return image.astype(np.float32)


class SquareModel:
    """Probability of class 1 = sigmoid of the mean brightness inside the known square."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1:] == (SIZE, SIZE, 3)
        self.batch_sizes.append(len(batch))
        brightness = batch[:, ROWS, COLS, :].mean(axis=(1, 2, 3)) / 255.0
        positive = 1.0 / (1.0 + np.exp(-10.0 * (brightness - 0.5)))
        return np.stack([1.0 - positive, positive], axis=1)


def explain(**kwargs) -> tuple[LimeResult, SquareModel]:
    model = SquareModel()
    options = {"num_samples": 300, "batch_size": 64, "hide_color": 0.0, "n_segments": 40}
    options.update(kwargs)
    image = options.pop("image", synthetic_image())
    return LimeExplainer(model, **options).explain(image), model


def overlap_with_square(result: LimeResult, region: int) -> float:
    inside = np.zeros((SIZE, SIZE), bool)
    inside[ROWS, COLS] = True
    return float(inside[result.segments == region].mean())


@pytest.mark.parametrize("segmentation", ["slic", "felzenszwalb"])
def test_top_region_lies_on_the_square(segmentation):
    result, _ = explain(segmentation=segmentation)
    assert result.class_index == 1
    top = result.top_regions(1)[0]
    assert overlap_with_square(result, top) > 0.5
    assert result.weights[top] > 0
    assert result.map.shape == (SIZE, SIZE)
    assert -1.0 <= result.map.min() and result.map.max() == pytest.approx(1.0)
    assert np.array_equal(result.positive_map, np.clip(result.map, 0, 1))
    assert result.positive_map.min() >= 0.0
    assert 0.0 < result.score <= 1.0
    assert result.segments.max() + 1 == result.weights.size
    row, col = result.peak()
    assert result.segments[row, col] == top and ROWS.start <= row < ROWS.stop and COLS.start <= col < COLS.stop


def test_peak_is_none_without_positive_evidence():
    result, _ = explain(image=np.full((SIZE, SIZE, 3), 60.0, np.float32))
    flat = LimeResult(result.segments, np.zeros_like(result.weights), 0.0, 0.0, 1, result.map * 0, result.map * 0)
    assert flat.peak() is None


def test_same_seed_is_bit_identical_and_other_seed_differs():
    first, _ = explain(seed=7)
    second, _ = explain(seed=7)
    assert np.array_equal(first.weights, second.weights)
    assert np.array_equal(first.map, second.map)
    assert np.array_equal(first.segments, second.segments)
    assert first.intercept == second.intercept and first.score == second.score
    other, _ = explain(seed=8)
    assert not np.array_equal(first.weights, other.weights)


def test_predicts_exactly_num_samples_in_bounded_batches():
    result, model = explain(num_samples=300, batch_size=64)
    assert sum(model.batch_sizes) == 300 == result.num_samples
    assert max(model.batch_sizes) <= 64
    assert model.batch_sizes == [64, 64, 64, 64, 44]


def test_default_mean_hide_color_and_blur_run():
    for hide_color in ("mean", "blur", "zero"):
        result, model = explain(hide_color=hide_color, num_samples=100)
        assert sum(model.batch_sizes) == 100
        assert np.isfinite(result.weights).all()


def test_grey_images_work_and_match_replicated_rgb():
    grey = synthetic_image()[..., 0].astype(np.uint8)
    flat, _ = explain(image=grey)
    replicated, _ = explain(image=np.repeat(grey[..., None], 3, axis=2))
    assert np.array_equal(flat.segments, replicated.segments)
    assert np.array_equal(flat.weights, replicated.weights)
    assert overlap_with_square(flat, flat.top_regions(1)[0]) > 0.5


def test_class_index_and_precomputed_segments():
    # A 4×4 grid of 16-pixel blocks: id = 4 * block_row + block_col; the square covers most of block 6.
    segments = (np.arange(SIZE)[:, None] // 16) * 4 + np.arange(SIZE)[None, :] // 16
    model = SquareModel()
    explainer = LimeExplainer(model, num_samples=200, hide_color=0.0)
    result = explainer.explain(synthetic_image(), class_index=0, segments=segments)
    assert result.class_index == 0
    assert result.weights.size == 16
    # For class 0 the square counts against the class.
    assert result.top_regions(1, positive=False)[0] == 6
    with pytest.raises(ValueError):
        explainer.explain(synthetic_image(), class_index=2)


def test_top_regions_signs_and_outline():
    result, _ = explain()
    positive, negative = result.top_regions(3), result.top_regions(3, positive=False)
    assert all(result.weights[i] > 0 for i in positive)
    assert all(result.weights[i] < 0 for i in negative)
    image = synthetic_image()
    outlined = result.outline(image, k=2)
    assert outlined.shape == (SIZE, SIZE, 3) and outlined.dtype == np.uint8
    green = np.all(outlined == [0, 255, 0], axis=2)
    assert green.any()
    assert (result.segments[green] == positive[0]).any() or (result.segments[green] == positive[1]).any()


def test_segment_image_options_and_errors():
    image = synthetic_image()
    quick = segment_image(image, "quickshift")
    assert quick.shape == (SIZE, SIZE) and quick.min() == 0
    assert np.array_equal(np.unique(quick), np.arange(quick.max() + 1))
    with pytest.raises(ValueError):
        segment_image(image, "watershed")
    with pytest.raises(ValueError):
        LimeExplainer(SquareModel(), hide_color="purple")
    with pytest.raises(ValueError):
        LimeExplainer(SquareModel(), num_samples=1)
    with pytest.raises(ValueError):
        LimeExplainer(lambda batch: np.zeros((1, 2)), num_samples=10).explain(image)


def test_several_outputs_share_one_sample_set_and_equal_single_explanations():
    model = SquareModel()
    lime = LimeExplainer(model, num_samples=300, batch_size=64, hide_color=0.0, n_segments=40, seed=2)
    both = lime.explain_many(synthetic_image(), [1, 0])
    assert sum(model.batch_sizes) == 300  # one set of perturbed predictions for both outputs
    for result, index in zip(both, (1, 0), strict=True):
        alone = LimeExplainer(SquareModel(), num_samples=300, batch_size=64, hide_color=0.0, n_segments=40,
                              seed=2).explain(synthetic_image(), class_index=index)
        assert result.class_index == index
        np.testing.assert_array_equal(result.weights, alone.weights)
        np.testing.assert_array_equal(result.map, alone.map)
    # For two complementary outputs the weights are mirror images.
    np.testing.assert_allclose(both[0].weights, -both[1].weights, atol=1e-9)
