"""Plots of an evaluation: ROC curves, the confusion matrix, training history.

Plots use :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so they are headless and
safe to call from worker threads. Every file is written atomically: to a temporary file in the
same folder, then ``os.replace``.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from medlens.pipelines.errors import RunDirError
from medlens.pipelines.evaluation.probabilities import as_int_labels, to_probabilities
from medlens.pipelines.rundir import atomic_write_bytes

__all__ = ["plot_roc", "plot_confusion", "plot_history", "save_figure"]

logger = logging.getLogger(__name__)

_PLOT_DPI = 120


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG, atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=_PLOT_DPI)
    written = atomic_write_bytes(path, buffer.getvalue())
    logger.debug("Wrote %s", written)
    return written



def plot_roc(
    y_true: Any,
    probs: Any,
    class_names: Sequence[str],
    path: str | Path,
    threshold: float | None = None,
) -> Path:
    """Plot ROC curves to a PNG.

    Binary: the ROC of the positive class with its AUC in the legend and the
    operating point at ``threshold`` (default 0.5) marked. Multi-class: one
    one-vs-rest curve per class present, plus the macro-average curve.

    Args:
        y_true: ``(N,)`` integer labels in ``0..K-1``.
        probs: ``(N, K)`` probabilities or a binary sigmoid output.
        class_names: The K class names.
        path: PNG to write (atomically).
        threshold: Binary operating point; default 0.5.

    Returns:
        The path written.
    """
    names = [str(name) for name in class_names]
    k = len(names)
    probabilities = to_probabilities(probs, num_classes=k)
    labels = as_int_labels(y_true, k)
    if labels.size != probabilities.shape[0]:
        raise ValueError(f"{labels.size} labels but {probabilities.shape[0]} predictions.")

    figure = Figure(figsize=(5.5, 5.0), layout="constrained")
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    if k == 2:
        cut = 0.5 if threshold is None else float(threshold)
        if np.unique(labels).size < 2:
            logger.warning("ROC undefined: the labels hold only one class; writing an empty plot.")
            axes.text(0.5, 0.5, "ROC undefined:\nonly one class in the labels", ha="center", va="center")
        else:
            fpr, tpr, _ = roc_curve(labels, probabilities[:, 1])
            auc = roc_auc_score(labels, probabilities[:, 1])
            axes.plot(fpr, tpr, linewidth=2, label=f"{names[1]} (AUC = {auc:.3f})")
            predicted = probabilities[:, 1] >= cut
            positives = labels == 1
            point_tpr = np.mean(predicted[positives])
            point_fpr = np.mean(predicted[~positives])
            axes.plot(
                [point_fpr],
                [point_tpr],
                marker="o",
                markersize=8,
                color="crimson",
                linestyle="none",
                label=f"threshold {cut:.3f} (sens {point_tpr:.2f}, spec {1 - point_fpr:.2f})",
            )
        axes.set_title(f"ROC: {names[1]} vs {names[0]}")
    else:
        grid = np.linspace(0.0, 1.0, 201)
        curves = []
        for i, name in enumerate(names):
            is_class = labels == i
            if is_class.all() or not is_class.any():
                continue
            fpr, tpr, _ = roc_curve(is_class, probabilities[:, i])
            auc = roc_auc_score(is_class, probabilities[:, i])
            axes.plot(fpr, tpr, linewidth=1.3, label=f"{name} (AUC = {auc:.3f})")
            curves.append((np.interp(grid, fpr, tpr), auc))
        if curves:
            mean_tpr = np.mean([curve for curve, _ in curves], axis=0)
            mean_tpr[0] = 0.0
            macro = float(np.mean([auc for _, auc in curves]))
            axes.plot(grid, mean_tpr, color="black", linewidth=2.5, label=f"macro (AUC = {macro:.3f})")
        else:
            axes.text(0.5, 0.5, "ROC undefined:\nonly one class in the labels", ha="center", va="center")
        axes.set_title("ROC: one-vs-rest")
    axes.set_xlim(-0.01, 1.01)
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return save_figure(figure, path)


def plot_confusion(
    cm: Any,
    class_names: Sequence[str],
    path: str | Path,
    normalize: bool = False,
) -> Path:
    """Plot a confusion matrix (rows = true class) to a PNG, with counts in the cells.

    Args:
        cm: ``K x K`` counts, rows = true class, columns = predicted class.
        class_names: The K class names.
        path: PNG to write (atomically).
        normalize: Colour by the fraction of each true class (row) and show the
            fraction above the count.

    Returns:
        The path written.

    Raises:
        ValueError: If ``cm`` is not ``K x K`` for the K class names.
    """
    counts = np.asarray(cm, dtype=np.float64)
    names = [str(name) for name in class_names]
    k = len(names)
    if counts.shape != (k, k):
        raise ValueError(f"Confusion matrix has shape {counts.shape}; expected ({k}, {k}) for {k} classes.")
    if normalize:
        row_totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            shown = np.where(row_totals > 0, counts / row_totals, 0.0)
        upper = 1.0
    else:
        shown = counts
        upper = max(float(counts.max()), 1.0)

    size = max(5.0, 0.9 * k + 2.5)
    figure = Figure(figsize=(size + 1.5, size), layout="constrained")
    axes = figure.add_subplot()
    image = axes.imshow(shown, cmap="Blues", vmin=0.0, vmax=upper)
    figure.colorbar(image, ax=axes, shrink=0.8)
    for row in range(k):
        for column in range(k):
            text = f"{int(counts[row, column])}"
            if normalize:
                text = f"{shown[row, column]:.2f}\n({text})"
            colour = "white" if shown[row, column] > 0.6 * upper else "black"
            axes.text(column, row, text, ha="center", va="center", color=colour, fontsize="small")
    axes.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    axes.set_yticks(range(k), names)
    axes.set_xlabel("Predicted")
    axes.set_ylabel("True")
    axes.set_title("Confusion matrix" + (" (row-normalised)" if normalize else ""))
    return save_figure(figure, path)


def plot_history(history_csv_path: str | Path, path: str | Path) -> Path:
    """Plot training curves from a Keras ``CSVLogger`` file to a PNG.

    One panel per quantity (``loss`` first, then each metric such as ``auc``),
    with the training and ``val_`` curves together. If the file has a ``phase``
    column (frozen backbone, then fine-tuning), each change of phase is marked with
    a vertical line. Learning-rate columns are left out.

    Args:
        history_csv_path: The CSV (columns ``epoch, loss, val_loss, ...``).
        path: PNG to write (atomically).

    Returns:
        The path written.

    Raises:
        RunDirError: If the CSV is missing, empty, or has no numeric columns to plot.
    """
    source = Path(history_csv_path)
    try:
        with source.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    except FileNotFoundError:
        raise RunDirError(f"{source}: training history not found.") from None
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise RunDirError(f"{source}: cannot read training history ({error}).") from None
    if not rows:
        raise RunDirError(f"{source}: training history has no epochs.")
    columns = [name for name in rows[0] if name is not None]

    def numbers(column: str) -> np.ndarray:
        return np.array([_to_float(row.get(column)) for row in rows], dtype=np.float64)

    epochs = numbers("epoch") if "epoch" in columns else np.full(len(rows), np.nan)
    # Phases may restart the epoch count; fall back to the row index when epochs are not increasing.
    if np.any(np.isnan(epochs)) or np.any(np.diff(epochs) <= 0):
        epochs = np.arange(len(rows), dtype=np.float64)

    skip = {"epoch", "phase", "lr", "learning_rate"}
    bases: list[str] = []
    for name in columns:
        base = name[4:] if name.startswith("val_") else name
        if base in skip or base in bases:
            continue
        if not np.all(np.isnan(numbers(name))):
            bases.append(base)
    if not bases:
        raise RunDirError(f"{source}: training history has no numeric columns to plot.")
    bases.sort(key=lambda base: (base != "loss", columns.index(base) if base in columns else len(columns)))

    n_columns = min(len(bases), 2)
    n_rows = math.ceil(len(bases) / n_columns)
    figure = Figure(figsize=(5.0 * n_columns, 3.6 * n_rows), layout="constrained")
    grid = figure.subplots(n_rows, n_columns, squeeze=False)
    phases = [row.get("phase") for row in rows] if "phase" in columns else None
    for index, base in enumerate(bases):
        axes = grid[index // n_columns][index % n_columns]
        for name, label in ((base, "train"), (f"val_{base}", "validation")):
            if name in columns:
                values = numbers(name)
                if not np.all(np.isnan(values)):
                    axes.plot(epochs, values, marker="o", markersize=3, label=label)
        if phases is not None:
            for boundary in range(1, len(rows)):
                if phases[boundary] != phases[boundary - 1]:
                    x = (epochs[boundary - 1] + epochs[boundary]) / 2.0
                    axes.axvline(x, color="0.4", linestyle="--", linewidth=1)
                    axes.annotate(
                        f"phase {phases[boundary]}",
                        xy=(x, 1.0),
                        xycoords=("data", "axes fraction"),
                        xytext=(3, -12),
                        textcoords="offset points",
                        fontsize="x-small",
                        color="0.3",
                    )
        axes.set_title(base)
        axes.set_xlabel("epoch")
        axes.grid(alpha=0.3)
        axes.legend(fontsize="small")
    for index in range(len(bases), n_rows * n_columns):
        grid[index // n_columns][index % n_columns].set_visible(False)
    return save_figure(figure, path)


def _to_float(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan
