"""Evaluate an ordinal run: the referable threshold on validation, metrics per split, model card.

``metrics.json`` has every task's shape (``schema``, one entry per split, ``threshold: {value,
method, chosen_on}``), the threshold being the one on ``P(grade ≥ referable)``; ``run.json``
gains ``threshold`` (what :class:`~medlens.pipelines.predict.OrdinalPredictor` applies).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.data import ClassificationSequence, Dataset
from medlens.pipelines.evaluation.classification import choose_threshold
from medlens.pipelines.evaluation.ordinal import choose_grade_cuts, ordinal_metrics
from medlens.pipelines.evaluation.runs import (
    backbone_line,
    card_opening,
    finish_card,
    fmt,
    run_parts,
    skipped_rows_lines,
)
from medlens.pipelines.rundir import RunDir, threshold_record

__all__ = ["evaluate_ordinal_run", "predict_cumulative", "write_ordinal_card"]

log = logging.getLogger(__name__)


def predict_cumulative(model: keras.Model, source: Any, cfg: Any) -> np.ndarray:
    """``(N, K-1)`` ``P(grade ≥ k)`` for every image of a source, in order."""
    sequence = ClassificationSequence(source, image_size=tuple(cfg.data.image_size), batch_size=cfg.data.batch_size,
                                      preprocess=preprocess_function(cfg.model.backbone), num_classes=3,
                                      cache=False, images_only=True)
    return np.concatenate([np.asarray(model.predict_on_batch(sequence[i]), np.float64) for i in range(len(sequence))])


def evaluate_ordinal_run(run_dir: str | Path, *, split: str = "test", model: keras.Model | None = None,
                         dataset: Dataset | None = None, cfg: Any = None) -> dict[str, Any]:
    """Choose the referable threshold on validation, score ``split``, update ``metrics.json``."""
    from medlens.pipelines.data import load_dataset

    run, model, cfg, dataset = run_parts(run_dir, model, cfg, dataset, lambda data, seed: load_dataset(data, seed))
    names, referable = list(dataset.class_names), cfg.evaluate.referable
    state = run.read_state()
    val = dataset.splits["val"]
    val_cumulative = predict_cumulative(model, val, cfg)
    val_grades = np.asarray(val.labels)
    threshold = round(choose_threshold((val_grades >= referable).astype(int), val_cumulative[:, referable - 1],
                                       method=cfg.evaluate.threshold,
                                       target_sensitivity=cfg.evaluate.target_sensitivity), 6)
    method = getattr(cfg.evaluate, "grade_cuts", "0.5")
    cuts = None if method == "0.5" else choose_grade_cuts(val_grades, val_cumulative, method)
    if method != "0.5" and cuts is None:
        log.warning("%s: evaluate.grade_cuts=%s needs validation cases of two grades or more; grades are decoded "
                    "by the 0.5 rule", run.root, method)
    state.update(threshold=threshold, threshold_method=cfg.evaluate.threshold, referable_grade=referable,
                 grade_cuts=cuts, grade_cuts_method=method if cuts is not None else "0.5")
    run.write_state(state)
    def score(name: str) -> dict[str, Any]:
        cumulative = val_cumulative if name == "val" else predict_cumulative(model, dataset.splits[name], cfg)
        return ordinal_metrics(dataset.splits[name].labels, cumulative, names, referable=referable,
                               threshold=threshold, seed=cfg.seed, cuts=cuts)

    everything = run.read_metrics()
    # The split asked for, validation, and every split scored before: the threshold and the cuts may have
    # changed since, so no split keeps stale figures.
    for name in dataset.splits:
        if name in (split, "val") or name in everything:
            everything[name] = score(name)
    metrics = everything[split]
    everything["grade_cuts"] = {"method": state["grade_cuts_method"], "cuts": cuts, "of": "E[grade] = Σ P(grade ≥ k)",
                                "chosen_on": "val" if cuts is not None else None}
    everything["threshold"] = {**threshold_record(threshold, cfg.evaluate.threshold),
                               "of": f"P(grade {metrics['referable']['grade']})"}
    everything["calibration"] = {"method": "none"}
    run.write_metrics(everything)
    log.info("%s: QWK %.3f, accuracy %.3f, macro AUC %s", split, metrics["qwk"], metrics["accuracy"], metrics["auc"])
    return metrics


def _decoding_text(state: dict[str, Any]) -> str:
    cuts = state.get("grade_cuts")
    if not cuts:
        return "predicted grade = thresholds passed at 0.5"
    return (f"predicted grade = cut points reached by E[grade] = Σ P(grade ≥ k), chosen on validation to maximise "
            f"{'quadratic weighted kappa' if state.get('grade_cuts_method') == 'qwk' else 'accuracy'}: "
            + ", ".join(f"{c:.3f}" for c in cuts))


def write_ordinal_card(run_dir: str | Path) -> Path:
    """``model_card.md`` of an ordinal run."""
    run = RunDir(run_dir)
    cfg, state, metrics = run.read_config(), run.read_state(), run.read_metrics()
    test = metrics.get("test", {})
    ref = test.get("referable", {})
    ci = test.get("qwk_ci95")
    lines = [
        *card_opening(cfg, run),
        "## Model",
        f"- Task: ordinal grades {' < '.join(state.get('class_names', []))}; cumulative head P(grade ≥ k), "
        "rank-consistent (shared weights, ordered thresholds), " + _decoding_text(state),
        backbone_line(state, f"{state.get('epochs_run')} epochs, best epoch {state.get('best_epoch')}; Keras "
                             f"{state.get('keras_version')} on {state.get('keras_backend')}"),
        "",
        "## Data",
        f"- Source: {cfg['data'].get('kind')} {cfg['data'].get('npz') or cfg['data'].get('root')}",
        f"- Grade counts per split: {state.get('data_report', {}).get('class_counts')}",
        *skipped_rows_lines(state),
        "",
        "## Test results",
        f"- n = {test.get('n')}, quadratic weighted kappa {fmt(test.get('qwk'))}"
        + (f" (95% CI {fmt(ci[0])}–{fmt(ci[1])})" if ci else "")
        + f", MAE {fmt(test.get('mae'))}, accuracy {fmt(test.get('accuracy'))}, macro AUC (one-vs-rest) "
        f"{fmt(test.get('auc'))}",
        f"- Referable (grade {ref.get('grade')}): AUC {fmt(ref.get('auc'))}; at threshold {fmt(ref.get('threshold'))} "
        f"on P(grade {ref.get('grade')}) (chosen on validation by {state.get('threshold_method')}): sensitivity "
        f"{fmt(ref.get('sensitivity'))}, specificity {fmt(ref.get('specificity'))}, prevalence "
        f"{fmt(ref.get('prevalence'))}",
        f"- Confusion matrix (rows true, columns predicted): {test.get('confusion_matrix')}",
        "",
        "## Limits",
        "- Evaluated only on the test split above; other cameras, sites and populations are unknown.",
        "- Probabilities are not calibrated.",
        "",
    ]
    return finish_card(run, "\n".join(lines))
