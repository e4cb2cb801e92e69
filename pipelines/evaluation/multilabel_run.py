"""Evaluate a multi-label run: thresholds per finding on validation, metrics per split, model card.

``metrics.json`` has the shape every task writes (``schema``, one entry per split,
``threshold: {value, method, chosen_on}``); here ``value`` maps each finding to its
threshold. ``run.json`` gains ``thresholds`` (what :class:`MultiLabelPredictor` applies).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.data import ClassificationSequence, Dataset
from medlens.pipelines.evaluation.multilabel import choose_thresholds, multilabel_metrics
from medlens.pipelines.evaluation.runs import (
    backbone_line,
    card_opening,
    finish_card,
    fmt,
    run_parts,
    skipped_rows_lines,
)
from medlens.pipelines.rundir import RunDir, threshold_record

__all__ = ["evaluate_multilabel_run", "predict_findings", "write_multilabel_card"]

log = logging.getLogger(__name__)


def predict_findings(model: keras.Model, source: Any, cfg: Any) -> np.ndarray:
    """``N×F`` finding probabilities for every image of a source, in order."""
    sequence = ClassificationSequence(source, image_size=tuple(cfg.data.image_size), batch_size=cfg.data.batch_size,
                                      preprocess=preprocess_function(cfg.model.backbone),
                                      num_classes=len(cfg.data.findings) or 2, cache=False, images_only=True)
    outputs = [np.asarray(model.predict_on_batch(sequence[i]), np.float64) for i in range(len(sequence))]
    return np.concatenate(outputs) if outputs else np.zeros((0, 0))


def evaluate_multilabel_run(run_dir: str | Path, *, split: str = "test", model: keras.Model | None = None,
                            dataset: Dataset | None = None, cfg: Any = None) -> dict[str, Any]:
    """Choose each finding's threshold on validation, score ``split``, update ``metrics.json``.

    Returns:
        The metrics of ``split`` (see :func:`multilabel_metrics`).
    """
    from medlens.pipelines.data import load_findings

    run, model, cfg, dataset = run_parts(run_dir, model, cfg, dataset, lambda data, seed: load_findings(data, seed))
    findings = list(dataset.class_names)
    state = run.read_state()

    val = dataset.splits["val"]
    val_probs = predict_findings(model, val, cfg)
    thresholds = choose_thresholds(val.labels, val_probs, findings, method=cfg.evaluate.threshold,
                                   target_sensitivity=cfg.evaluate.target_sensitivity)
    state.update(thresholds=thresholds, threshold_method=cfg.evaluate.threshold)
    run.write_state(state)
    source = dataset.splits[split]
    probs = val_probs if split == "val" else predict_findings(model, source, cfg)
    metrics = multilabel_metrics(source.labels, probs, findings, thresholds, seed=cfg.seed)

    everything = run.read_metrics()
    everything[split] = metrics
    everything["val"] = multilabel_metrics(val.labels, val_probs, findings, thresholds, seed=cfg.seed)
    everything["threshold"] = threshold_record(thresholds, cfg.evaluate.threshold)
    everything["calibration"] = {"method": "none", "note": "expected calibration error per finding, uncalibrated"}
    run.write_metrics(everything)
    log.info("%s: macro AUC %s over %d findings", split, metrics["macro_auc"], len(metrics["auc_findings"]))
    return metrics


def write_multilabel_card(run_dir: str | Path) -> Path:
    """``model_card.md`` of a multi-label run: the model, its data per finding, test metrics per finding."""
    run = RunDir(run_dir)
    cfg, state, metrics = run.read_config(), run.read_state(), run.read_metrics()
    test = metrics.get("test", {})
    counts = state.get("data_report", {}).get("finding_counts", {})
    lines = [
        *card_opening(cfg, run),
        "## Model",
        f"- Task: multi-label findings ({len(state.get('findings', []))}): {', '.join(state.get('findings', []))}",
        backbone_line(state, "one sigmoid per finding"),
        "- Loss: binary cross-entropy per finding, missing labels left out"
        + (", positives weighted by n_negative / n_positive" if state.get("positive_weights") else ""),
        f"- {state.get('epochs_run')} epochs run, best epoch {state.get('best_epoch')}; Keras "
        f"{state.get('keras_version')} on {state.get('keras_backend')}; seed {cfg.get('seed')}",
        "",
        "## Data",
        f"- Source: {cfg['data'].get('kind')} {cfg['data'].get('npz') or cfg['data'].get('root')}; splits "
        f"{state.get('data_report', {}).get('splits_from')}, patients per split "
        f"{state.get('data_report', {}).get('patients')}",
        *skipped_rows_lines(state),
        "",
        "## Test results",
        f"- n = {test.get('n')}, macro AUC {fmt(test.get('macro_auc'))} over {len(test.get('auc_findings', []))} "
        f"findings with positives, micro AUC {fmt(test.get('micro_auc'))}, mean AP "
        f"{fmt(test.get('mean_average_precision'))}",
        "",
        "| finding | train +/−/missing | test n | prevalence | AUC (95% CI) | AP | threshold | sensitivity | specificity | ECE (floor) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for finding, item in test.get("findings", {}).items():
        ci = item.get("auc_ci95")
        auc = fmt(item.get("auc")) + (f" ({fmt(ci[0])}–{fmt(ci[1])})" if ci else "")
        train = "/".join(str(v) for v in counts.get("train", {}).get(finding, []))
        lines.append(f"| {finding} | {train} | {item['n']} | {fmt(item.get('prevalence'))} | "
                     f"{auc if item.get('auc') is not None else item.get('note', 'n/a')} | "
                     f"{fmt(item.get('average_precision'))} | {fmt(item.get('threshold'))} | "
                     f"{fmt(item.get('sensitivity'))} | {fmt(item.get('specificity'))} | {fmt(item.get('ece'))} "
                     f"({fmt(item.get('ece_floor'))}) |")
    lines += [
        "",
        f"Thresholds chosen per finding on validation by {state.get('threshold_method')}.",
        "",
        "## Limits",
        "- Evaluated only on the test split above; other scanners, sites and populations are unknown.",
        "- Findings with few positives have wide intervals; probabilities are not calibrated (ECE per finding above; "
        "the floor beside it is what a perfectly calibrated finding would show on this split).",
        "",
    ]
    return finish_card(run, "\n".join(lines))
