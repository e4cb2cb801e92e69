"""Tests of medlens.pipelines.evaluation (classification, bootstrap, plots): probabilities, thresholds, metrics, bootstrap, plots."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from medlens.pipelines.errors import RunDirError
from medlens.pipelines.evaluation.classification import (
    bootstrap_ci,
    choose_threshold,
    classification_metrics,
    to_probabilities,
    write_json_atomic,
)
from medlens.pipelines.evaluation.plots import plot_confusion, plot_history, plot_roc

BINARY_NAMES = ["normal", "pneumonia"]
THREE_NAMES = ["glioma", "meningioma", "pituitary"]


def _noisy_binary(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    scores = 1.0 / (1.0 + np.exp(-(labels * 1.5 - 0.75 + rng.normal(0, 1, n))))
    return labels, scores


def _noisy_multiclass(n: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), labels] += 1.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 2000
    with Image.open(path) as image:
        assert image.width > 100 and image.height > 100
        extrema = image.convert("L").getextrema()
        assert extrema[0] != extrema[1], "image is a single colour"
    assert not list(path.parent.glob("*.tmp")), "temporary file left behind"


# ----------------------------------------------------------------------------- to_probabilities


@pytest.mark.parametrize("shape", [(4,), (4, 1)])
def test_to_probabilities_sigmoid(shape):
    p = np.array([0.0, 0.25, 0.5, 1.0]).reshape(shape)
    probs = to_probabilities(p)
    assert probs.shape == (4, 2)
    np.testing.assert_allclose(probs[:, 1], [0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)


def test_to_probabilities_softmax_passes_through():
    _, probs = _noisy_multiclass(10)
    out = to_probabilities(probs.astype(np.float32), num_classes=3)
    assert out.shape == (10, 3)
    np.testing.assert_allclose(out, probs, rtol=1e-6)


@pytest.mark.parametrize(
    ("output", "num_classes"),
    [
        (np.array([[0.5, 0.3, 0.1]]), None),  # rows do not sum to 1
        (np.array([2.0, -1.0]), None),  # logits
        (np.array([0.2, np.nan]), None),
        (np.array([0.2, 0.7]), 3),  # sigmoid but 3 classes
        (np.array([[0.2, 0.3, 0.5]]), 4),
        (np.zeros((2, 2, 2)), None),
    ],
)
def test_to_probabilities_rejects_bad_output(output, num_classes):
    with pytest.raises(ValueError):
        to_probabilities(output, num_classes=num_classes)


# ----------------------------------------------------------------------------- choose_threshold


def test_youden_separates_a_separable_set():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.2, 0.35, 0.6, 0.7, 0.95])
    threshold = choose_threshold(y, p, "youden")
    assert 0.35 < threshold <= 0.6
    assert np.array_equal((p >= threshold).astype(int), y)


def test_youden_on_noisy_data_is_at_least_as_good_as_half():
    y, p = _noisy_binary(400)
    threshold = choose_threshold(y, p, "youden")
    assert 0.0 <= threshold <= 1.0

    def youden(cut):
        pred = p >= cut
        return pred[y == 1].mean() - pred[y == 0].mean()

    assert youden(threshold) >= youden(0.5) - 1e-12


@pytest.mark.parametrize("target", [0.8, 0.9, 0.95, 1.0])
def test_sensitivity_target_is_reached_by_the_highest_threshold(target):
    y, p = _noisy_binary(300, seed=3)
    threshold = choose_threshold(y, p, "sensitivity", target_sensitivity=target)
    sensitivity = np.mean(p[y == 1] >= threshold)
    assert sensitivity >= target
    # The next higher distinct score would miss the target.
    higher = p[p > threshold]
    if higher.size:
        assert np.mean(p[y == 1] >= higher.min()) < target


def test_fixed_and_degenerate_thresholds(caplog):
    y, p = _noisy_binary(50)
    assert choose_threshold(y, p, "0.5") == 0.5
    assert choose_threshold(y, p, "0.3") == pytest.approx(0.3)
    with caplog.at_level("WARNING"):
        assert choose_threshold(np.ones(10, int), np.linspace(0, 1, 10), "youden") == 0.5
    assert "only one class" in caplog.text
    with pytest.raises(ValueError):
        choose_threshold(y, p, "f1")
    with pytest.raises(ValueError):
        choose_threshold(y, p, "sensitivity", target_sensitivity=1.5)
    with pytest.raises(ValueError):
        choose_threshold(y, p[:-1])


def test_youden_threshold_never_infinite():
    # All positives score highest: roc_curve's first threshold is inf, must stay within [0, 1].
    y = np.array([0, 1])
    p = np.array([0.0, 1.0])
    assert 0.0 <= choose_threshold(y, p) <= 1.0


# ----------------------------------------------------------------------------- metrics


def test_perfect_binary_classifier():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.01, 0.1, 0.3, 0.7, 0.8, 0.9, 0.99])
    m = classification_metrics(y, p, BINARY_NAMES)
    assert m["auc"] == 1.0
    assert m["accuracy"] == 1.0
    assert m["balanced_accuracy"] == 1.0
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == 1.0
    assert m["precision"] == 1.0
    assert m["npv"] == 1.0
    assert m["average_precision"] == 1.0
    assert m["confusion_matrix"] == [[3, 0], [0, 4]]


def test_hand_computed_binary_example():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(y, p, BINARY_NAMES, threshold=0.5, ci=False)
    assert (m["tp"], m["fn"], m["tn"], m["fp"]) == (2, 1, 1, 1)
    assert m["confusion_matrix"] == [[1, 1], [1, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(1 / 2)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["npv"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # Positive/negative pairs: 6; (0.4 vs 0.6) is the one loss -> 5/6.
    assert m["auc"] == pytest.approx(5 / 6)
    assert m["threshold"] == 0.5
    assert m["positive_class"] == "pneumonia"
    assert m["per_class"]["normal"]["sensitivity"] == pytest.approx(1 / 2)
    assert m["per_class"]["normal"]["precision"] == pytest.approx(1 / 2)
    assert m["per_class"]["pneumonia"]["support"] == 3
    assert "auc_ci95" not in m


def test_threshold_moves_the_operating_point():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.8, 0.9])
    m = classification_metrics(y, p, BINARY_NAMES, threshold=0.35, ci=False)
    assert m["sensitivity"] == 1.0
    assert m["specificity"] == 0.5


def test_binary_accepts_two_column_and_one_hot_input():
    y, p = _noisy_binary(60)
    a = classification_metrics(y, p, BINARY_NAMES, ci=False)
    b = classification_metrics(np.eye(2)[y], np.stack([1 - p, p], axis=1), BINARY_NAMES, ci=False)
    assert a == b


def test_multiclass_metrics_match_sklearn():
    y, probs = _noisy_multiclass(200)
    m = classification_metrics(y, probs, THREE_NAMES)
    assert m["task"] == "multiclass"
    assert m["auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr", average="macro"))
    assert m["accuracy"] == pytest.approx(np.mean(np.argmax(probs, axis=1) == y))
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == 200
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y, minlength=3))
    assert set(m["per_class"]) == set(THREE_NAMES)
    for name, values in m["per_class"].items():
        assert set(values) == {"precision", "sensitivity", "specificity", "f1", "auc", "support"}
        index = THREE_NAMES.index(name)
        assert values["auc"] == pytest.approx(roc_auc_score(y == index, probs[:, index]))
    assert m["sensitivity"] == pytest.approx(np.mean([v["sensitivity"] for v in m["per_class"].values()]))
    assert m["balanced_accuracy"] == pytest.approx(m["sensitivity"])
    assert "threshold" not in m and "positive_class" not in m


def test_multiclass_with_an_absent_class():
    y, probs = _noisy_multiclass(120, k=4)
    keep = y != 2
    y, probs = y[keep], probs[keep]
    names = THREE_NAMES + ["no tumour"]
    m = classification_metrics(y, probs, names)
    present = [0, 1, 3]
    expected = np.mean([roc_auc_score(y == c, probs[:, c]) for c in present])
    assert m["auc"] == pytest.approx(expected)
    assert m["auc_classes"] == ["glioma", "meningioma", "no tumour"]
    assert m["per_class"]["pituitary"]["support"] == 0
    assert m["per_class"]["pituitary"]["auc"] is None
    assert m["per_class"]["pituitary"]["sensitivity"] is None
    assert any("pituitary" in note for note in m["notes"])
    json.dumps(m, allow_nan=False)


def test_single_class_binary_labels_give_none_auc():
    m = classification_metrics(np.ones(8, int), np.linspace(0.1, 0.9, 8), BINARY_NAMES)
    assert m["auc"] is None
    assert m["average_precision"] is None
    assert m["specificity"] is None
    assert m["auc_ci95"] is None
    assert m["notes"]
    json.dumps(m, allow_nan=False)


@pytest.mark.parametrize("k", [2, 3])
def test_metrics_are_strict_json(k, tmp_path):
    y, probs = _noisy_binary(80) if k == 2 else _noisy_multiclass(80)
    names = BINARY_NAMES if k == 2 else THREE_NAMES
    m = classification_metrics(y, probs, names)
    text = json.dumps(m, allow_nan=False)
    assert json.loads(text) == m
    written = write_json_atomic(m, tmp_path / "run" / "metrics.json")
    assert json.loads(written.read_text()) == m
    assert not list(written.parent.glob("*.tmp"))

    def walk(value):
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        else:
            assert value is None or type(value) in (bool, int, float, str)

    walk(m)


def test_write_json_atomic_converts_numpy_and_nan(tmp_path):
    path = write_json_atomic(
        {"a": np.float32(0.5), "b": np.int64(3), "c": np.nan, "d": np.arange(2)}, tmp_path / "x.json"
    )
    assert json.loads(path.read_text()) == {"a": 0.5, "b": 3, "c": None, "d": [0, 1]}


@pytest.mark.parametrize(
    ("labels", "probs", "names"),
    [
        ([0, 1, 2], [0.1, 0.2, 0.3], BINARY_NAMES),  # label out of range
        ([0, 1], [0.1, 0.2, 0.3], BINARY_NAMES),  # length mismatch
        ([0, 1], [0.1, 0.2], ["only"]),
        ([0.5, 1.0], [0.1, 0.2], BINARY_NAMES),
    ],
)
def test_metrics_reject_bad_input(labels, probs, names):
    with pytest.raises(ValueError):
        classification_metrics(np.array(labels), np.array(probs), names)


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_auc_matches_sklearn_on_one_resample():
    # The vectorised rank AUC must agree with sklearn, ties included.
    y = np.array([0, 0, 1, 1, 1, 0, 1, 0])
    p = np.array([0.1, 0.5, 0.5, 0.8, 0.3, 0.3, 0.9, 0.2])
    low, high = bootstrap_ci(y, p, "auc", n=1, seed=5)
    rng = np.random.default_rng(5)
    draws = rng.integers(0, y.size, (1, y.size))[0]
    if np.unique(y[draws]).size == 2:
        assert low == pytest.approx(roc_auc_score(y[draws], p[draws]))
        assert high == pytest.approx(low)


def test_bootstrap_contains_estimate_and_narrows_with_more_data():
    widths = []
    for n in (100, 2000):
        y, p = _noisy_binary(n, seed=1)
        m = classification_metrics(y, p, BINARY_NAMES, n_bootstrap=500)
        low, high = m["auc_ci95"]
        assert low <= m["auc"] <= high
        a_low, a_high = m["accuracy_ci95"]
        assert a_low <= m["accuracy"] <= a_high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_bootstrap_multiclass_and_reproducible():
    y, probs = _noisy_multiclass(300)
    first = bootstrap_ci(y, probs, "auc", n=200, seed=7)
    assert first == bootstrap_ci(y, probs, "auc", n=200, seed=7)
    auc = roc_auc_score(y, probs, multi_class="ovr", average="macro")
    assert first[0] <= auc <= first[1]
    low, high = bootstrap_ci(y, probs, "accuracy", n=200)
    assert 0.0 <= low <= high <= 1.0
    with pytest.raises(ValueError):
        bootstrap_ci(y, probs, "f1")


def test_bootstrap_is_fast():
    y, p = _noisy_binary(1000)
    start = time.perf_counter()
    bootstrap_ci(y, p, "auc", n=1000)
    bootstrap_ci(y, p, "accuracy", n=1000)
    assert time.perf_counter() - start < 1.0


# ----------------------------------------------------------------------------- plots


def test_plot_roc_binary(tmp_path):
    y, p = _noisy_binary(100)
    path = plot_roc(y, p, BINARY_NAMES, tmp_path / "roc.png", threshold=0.4)
    _assert_png(path)


def test_plot_roc_multiclass_and_overwrite(tmp_path):
    y, probs = _noisy_multiclass(100)
    target = tmp_path / "plots" / "roc.png"
    plot_roc(y, probs, THREE_NAMES, target)
    plot_roc(y, probs, THREE_NAMES, target)
    _assert_png(target)


def test_plot_roc_single_class_does_not_crash(tmp_path):
    path = plot_roc(np.zeros(5, int), np.linspace(0, 1, 5), BINARY_NAMES, tmp_path / "roc.png")
    assert path.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("normalize", [False, True])
def test_plot_confusion(tmp_path, normalize):
    cm = np.array([[50, 3, 2], [4, 40, 6], [0, 1, 0]])
    path = plot_confusion(cm, THREE_NAMES, tmp_path / "cm.png", normalize=normalize)
    _assert_png(path)
    with pytest.raises(ValueError):
        plot_confusion(cm, BINARY_NAMES, tmp_path / "bad.png")


def test_plot_history_with_phases(tmp_path):
    csv_path = tmp_path / "history.csv"
    lines = ["epoch,auc,loss,phase,val_auc,val_loss,learning_rate"]
    for epoch in range(6):
        phase = 1 if epoch < 3 else 2
        lines.append(
            f"{epoch},{0.6 + epoch * 0.05},{1.0 - epoch * 0.1},{phase},"
            f"{0.55 + epoch * 0.05},{1.1 - epoch * 0.1},0.001"
        )
    csv_path.write_text("\n".join(lines) + "\n")
    _assert_png(plot_history(csv_path, tmp_path / "history.png"))


def test_plot_history_restarting_epochs_and_no_phase(tmp_path):
    csv_path = tmp_path / "history.csv"
    csv_path.write_text("epoch,loss,val_loss\n0,1.0,1.2\n1,0.8,0.9\n0,0.7,0.8\n1,0.6,nan\n")
    _assert_png(plot_history(csv_path, tmp_path / "history.png"))


def test_plot_history_errors(tmp_path):
    with pytest.raises(RunDirError, match="not found"):
        plot_history(tmp_path / "missing.csv", tmp_path / "h.png")
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch,loss\n")
    with pytest.raises(RunDirError):
        plot_history(empty, tmp_path / "h.png")
