"""Probability calibration: temperature scaling fitted on validation, ECE, reliability diagrams.

A network's probabilities are often over-confident: of the images it calls "pneumonia, 0.95",
fewer than 95 % are. Temperature scaling (Guo et al. 2017) divides the logits by one number
``T`` fitted on the validation split by minimising the negative log-likelihood; it changes
no ranking (AUC and argmax stay the same) and, for binary models, maps the decision
threshold monotonically, so labels do not change either. Only the probabilities a clinician
reads become honest.

ECE (expected calibration error) is the top-label version: predictions are binned by their
confidence (the largest class probability), and ECE is the count-weighted mean of
``|accuracy − confidence|`` over the bins. On a small split ECE is biased upwards: even a
perfectly calibrated model scores well above 0 on 156 images, because each bin's accuracy is
a small-sample estimate. :func:`ece_floor` measures that floor for the split at hand, so a
model card can say whether an ECE can be told from perfect calibration at all.

Example:
    >>> probs = np.array([[0.1, 0.9], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    >>> labels = np.array([1, 0, 0, 1])
    >>> temperature = fit_temperature(probs, labels)
    >>> bool(temperature > 1.0)      # the model was over-confident: T > 1 softens it
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["fit_temperature", "apply_temperature", "expected_calibration_error", "ece_floor", "ece_floor_draws",
           "reliability_bins", "plot_reliability"]

_EPS = 1e-7


def _log_probs(probabilities: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), _EPS, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``N×K`` probabilities with their logits divided by ``temperature`` (1: unchanged).

    Softmax of ``log p / T`` equals temperature scaling of the logits, since ``log p``
    differs from the logits by a per-row constant; for a sigmoid model's ``[1 − p, p]``
    it is the sigmoid of ``logit(p) / T``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0:
        return probabilities
    scaled = _log_probs(probabilities) / float(temperature)
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll(probabilities: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    scaled = apply_temperature(probabilities, temperature)
    return float(-np.mean(np.log(np.clip(scaled[np.arange(len(labels)), labels], _EPS, 1.0))))


def fit_temperature(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in ``[0.05, 20]`` minimising the NLL of ``labels`` (bounded scalar search).

    Args:
        probabilities: ``N×K`` validation probabilities.
        labels: ``N`` class indices.

    Returns:
        The temperature (1.0 when there are fewer than 2 samples or only one class).
    """
    from scipy.optimize import minimize_scalar

    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if len(labels) < 2 or len(np.unique(labels)) < 2:
        return 1.0
    result = minimize_scalar(lambda log_t: _nll(probabilities, labels, float(np.exp(log_t))),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                             options={"xatol": 1e-4})
    temperature = float(np.exp(result.x))
    # Never return something worse than no calibration at all.
    return round(temperature, 5) if _nll(probabilities, labels, temperature) <= _nll(probabilities, labels, 1.0) else 1.0


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per confidence bin: mean confidence, accuracy and count (empty bins have count 0)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64).ravel()
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    index = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
    return np.nan_to_num(mean_confidence), np.nan_to_num(accuracy), counts


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Top-label ECE in ``[0, 1]`` with ``bins`` equal-width confidence bins.

    Example:
        >>> expected_calibration_error(np.array([[0.0, 1.0], [1.0, 0.0]]), np.array([1, 0]))
        0.0
    """
    confidence, accuracy, counts = reliability_bins(probabilities, labels, bins)
    total = counts.sum()
    return float(np.sum(counts * np.abs(accuracy - confidence)) / total) if total else 0.0


def ece_floor_draws(probabilities: np.ndarray, draws: int = 200, bins: int = 15,
                    rng: np.random.Generator | None = None) -> np.ndarray:
    """ECE of ``draws`` label sets drawn from ``probabilities`` themselves: a perfectly calibrated model.

    Each draw gives every image a label sampled from its own ``N×K`` probabilities, so the
    probabilities are exactly calibrated by construction; what ECE still measures is sampling
    noise of this many images in these confidence bins.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    probabilities = np.asarray(probabilities, dtype=np.float64)
    cumulative = np.cumsum(probabilities, axis=1)
    cumulative[:, -1] = 1.0
    values = np.empty(draws)
    for index in range(draws):
        labels = (rng.random((len(probabilities), 1)) > cumulative).sum(axis=1)
        values[index] = expected_calibration_error(probabilities, labels, bins)
    return values


def ece_floor(probabilities: np.ndarray, draws: int = 200, bins: int = 15, seed: int = 0) -> float:
    """The mean ECE a perfectly calibrated model with these confidences shows on this many images.

    Deterministic for a seed. An observed ECE near or under it cannot be told from perfect
    calibration on this split (e.g. about 0.066 for BreastMNIST's 156 test images).

    Example (400 coin flips called at 0.5: the floor is E|accuracy − 0.5| = 0.025·√(2/π) ≈ 0.020):
        >>> round(ece_floor(np.full((400, 2), 0.5), draws=2000), 3)
        0.02
    """
    return float(np.mean(ece_floor_draws(probabilities, draws, bins, np.random.default_rng(seed))))


def plot_reliability(before: np.ndarray, after: np.ndarray, labels: np.ndarray, path: str | Path,
                     title: str = "", bins: int = 15) -> Path:
    """Reliability diagram (accuracy against confidence per bin), before and after calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medlens.pipelines.evaluation.plots import save_figure

    figure, axis = plt.subplots(figsize=(4.6, 4.4))
    axis.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="perfect calibration")
    for probs, name, colour in ((before, "uncalibrated", "tab:red"), (after, "temperature-scaled", "tab:blue")):
        confidence, accuracy, counts = reliability_bins(probs, labels, bins)
        used = counts > 0
        ece = expected_calibration_error(probs, labels, bins)
        axis.plot(confidence[used], accuracy[used], marker="o", color=colour, label=f"{name} (ECE {ece:.3f})")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_xlabel("confidence (top-class probability)")
    axis.set_ylabel("accuracy")
    axis.set_title(title or "Reliability")
    axis.legend(loc="lower right", fontsize=8)
    written = save_figure(figure, path)
    plt.close(figure)
    return written
