"""Evaluate a trained run like a clinical study, and write its model card.

The decision threshold of a binary classifier is chosen on the validation
split (Youden's J or a target sensitivity) and then applied, unchanged, to the
test split. Results go to ``metrics.json`` (one entry per split evaluated) and
plots to ``plots/``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.config import RunConfig, load_config
from medlens.pipelines.data import ClassificationSequence, Dataset, load_dataset
from medlens.pipelines.errors import RunDirError
from medlens.pipelines.evaluation import calibration
from medlens.pipelines.evaluation.classification import choose_threshold, classification_metrics
from medlens.pipelines.evaluation.plots import plot_confusion, plot_history, plot_roc
from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.evaluation.runs import backbone_line, card_opening, skipped_rows_lines
from medlens.pipelines.rundir import RunDir, threshold_record

__all__ = ["evaluate_run", "load_run_model", "write_model_card", "predict_source"]

log = logging.getLogger(__name__)


def load_run_model(run_dir: str | Path) -> keras.Model:
    """Load ``model.keras`` from a finished run directory."""
    from medlens.models import multilabel, ordinal  # noqa: F401  (register their losses, metrics and head)

    run = RunDir(run_dir).require()
    try:
        return keras.saving.load_model(run.model_path)
    except Exception as exc:
        raise RunDirError(f"{run.model_path}: cannot load model ({type(exc).__name__}: {exc})".splitlines()[0]) from None


def predict_source(model: keras.Model, source: Any, cfg: RunConfig, num_classes: int) -> np.ndarray:
    """Probabilities ``N×K`` for every item of an image source, in order."""
    sequence = ClassificationSequence(
        source,
        image_size=tuple(cfg.data.image_size),
        batch_size=cfg.data.batch_size,
        preprocess=preprocess_function(cfg.model.backbone),
        num_classes=num_classes,
        cache=False,
    )
    outputs = [model.predict_on_batch(sequence[i][0]) for i in range(len(sequence))]
    return to_probabilities(np.concatenate([np.asarray(o) for o in outputs]), num_classes)


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    model: keras.Model | None = None,
    dataset: Dataset | None = None,
    cfg: RunConfig | None = None,
) -> dict[str, Any]:
    """Compute metrics for ``split`` and merge them into ``RUN/metrics.json``.

    Returns:
        The metrics of ``split`` (see :func:`classification_metrics`).
    """
    run = RunDir(run_dir)
    if model is None:
        run.require()
        model = load_run_model(run.root)
    if cfg is None:
        cfg = load_config(run.read_config())
    if dataset is None:
        dataset = load_dataset(cfg.data, seed=cfg.seed)
    if split not in dataset.splits:
        raise RunDirError(f"{run.root}: the dataset has no {split!r} split (it has {', '.join(dataset.splits)})")
    state = run.read_state()
    class_names = list(state.get("class_names") or dataset.class_names)
    num_classes = len(class_names)

    # Temperature scaling and the decision threshold are both fitted on validation, in that
    # order, so the threshold lives on the calibrated scale that predictions report.
    val_raw = predict_source(model, dataset.splits["val"], cfg, num_classes)
    val_labels = np.asarray(dataset.splits["val"].labels)
    temperature = calibration.fit_temperature(val_raw, val_labels)
    val_probs = calibration.apply_temperature(val_raw, temperature)
    state["temperature"] = temperature
    threshold = None
    if num_classes == 2:
        threshold = choose_threshold(val_labels, val_probs[:, 1], method=cfg.evaluate.threshold,
                                     target_sensitivity=cfg.evaluate.target_sensitivity)
        state["threshold"] = threshold
        state["threshold_method"] = cfg.evaluate.threshold
    run.write_state(state)
    val_metrics = _with_calibration(
        classification_metrics(val_labels, val_probs, class_names, threshold=threshold), val_raw, val_probs, val_labels)

    source = dataset.splits[split]
    labels = np.asarray(source.labels)
    raw = val_raw if split == "val" else predict_source(model, source, cfg, num_classes)
    probs = calibration.apply_temperature(raw, temperature)
    metrics = _with_calibration(classification_metrics(labels, probs, class_names, threshold=threshold),
                                raw, probs, labels)

    all_metrics = run.read_metrics()
    all_metrics[split] = metrics
    all_metrics["val"] = val_metrics
    all_metrics["threshold"] = threshold_record(threshold, cfg.evaluate.threshold)
    all_metrics["calibration"] = {"method": "temperature scaling", "temperature": temperature, "fitted_on": "val"}
    run.write_metrics(all_metrics)

    run.plots.mkdir(exist_ok=True)
    calibration.plot_reliability(raw, probs, labels, run.plots / f"reliability_{split}.png",
                                 title=f"Reliability ({split})")
    plot_roc(labels, probs, class_names, run.plots / f"roc_{split}.png", threshold=threshold)
    plot_confusion(np.asarray(metrics["confusion_matrix"]), class_names, run.plots / f"confusion_{split}.png")
    if run.history_path.is_file():
        plot_history(run.history_path, run.plots / "history.png")
    return metrics


def _with_calibration(metrics: dict[str, Any], raw: np.ndarray, calibrated: np.ndarray,
                      labels: np.ndarray) -> dict[str, Any]:
    metrics["ece"] = round(calibration.expected_calibration_error(calibrated, labels), 6)
    metrics["ece_uncalibrated"] = round(calibration.expected_calibration_error(raw, labels), 6)
    # What a perfectly calibrated model with these confidences would score on this many images.
    metrics["ece_floor"] = round(calibration.ece_floor(calibrated), 6)
    return metrics


def _phase(phase: dict[str, Any]) -> str:
    blocks = int(phase.get("unfreeze_blocks", 0))
    what = ("backbone frozen (feature extraction)" if blocks == 0 else
            "whole network trained from scratch" if blocks < 0 else f"top {blocks} block(s) fine-tuned")
    return f"{phase.get('epochs')} epochs at lr {phase.get('learning_rate')}, {what}"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def write_model_card(run_dir: str | Path) -> Path:
    """Write ``model_card.md``: what the model is, what it was trained on, how it scored, its limits."""
    run = RunDir(run_dir)
    cfg = run.read_config()
    state = run.read_state()
    metrics = run.read_metrics()
    test = metrics.get("test", {})
    counts = state.get("data_report", {}).get("class_counts", {})
    lines = [
        *card_opening(cfg, run),
        "## Model",
        f"- Task: {state.get('task')} into {', '.join(state.get('class_names', []))}",
        backbone_line(state),
        f"- Training: phase 1 {_phase(cfg['train']['phase1'])}; phase 2 {_phase(cfg['train']['phase2'])}; "
        f"{state.get('epochs_run')} epochs run, best epoch {state.get('best_epoch')}",
        f"- Keras {state.get('keras_version')} on {state.get('keras_backend')}; seed {cfg.get('seed')}; "
        f"created {state.get('created')}",
        "",
        "## Data",
        f"- Source: {cfg['data'].get('kind')} {cfg['data'].get('npz') or cfg['data'].get('root')}",
        f"- Class counts per split: {json.dumps(counts)}",
        f"- Duplicates removed before splitting: {state.get('data_report', {}).get('duplicates_dropped', 0)}",
        *skipped_rows_lines(state),
        "",
        "## Test results",
        f"- n = {test.get('n')}, accuracy {_fmt(test.get('accuracy'))}, AUC {_fmt(test.get('auc'))}"
        + (f" (95% CI {_fmt(test['auc_ci95'][0])}–{_fmt(test['auc_ci95'][1])})" if test.get("auc_ci95") else ""),
    ]
    if state.get("num_classes") == 2:
        lines.append(
            f"- At threshold {_fmt(state.get('threshold'))} (chosen on validation by {state.get('threshold_method')}): "
            f"sensitivity {_fmt(test.get('sensitivity'))}, specificity {_fmt(test.get('specificity'))}, "
            f"precision {_fmt(test.get('precision'))}, F1 {_fmt(test.get('f1'))}"
        )
    lines += [
        "",
        "## Limits",
        "- Evaluated only on the test split above; performance on other scanners, sites and populations is unknown.",
        f"- Probabilities are temperature-scaled (T = {_fmt(state.get('temperature'))}, fitted on validation): "
        f"test ECE {_fmt(test.get('ece'))} (uncalibrated {_fmt(test.get('ece_uncalibrated'))}). Calibration "
        "holds for data like the validation split, not necessarily for other sites.",
        *([f"- On {test.get('n')} test images even a perfectly calibrated model would show an ECE of about "
           f"{_fmt(test['ece_floor'])} (sampling noise in 15 confidence bins): an ECE near it cannot be told from "
           "perfect calibration."] if test.get("ece_floor") is not None else []),
        "",
    ]
    from medlens.pipelines.evaluation.runs import finish_card

    return finish_card(run, "\n".join(lines))
