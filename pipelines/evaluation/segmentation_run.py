"""Evaluating a segmentation run: pooled and per-image metrics per split, the threshold, the model card.

:func:`evaluate_segmentation` scores a run on a split (Dice, IoU, sensitivity, specificity,
accuracy, AUC; pooled over all pixels inside the field of view and per image, the DRIVE
convention; on DRIVE the second observer too); :func:`choose_seg_threshold` picks the
threshold on validation; :func:`write_seg_model_card` writes ``model_card.md``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.config import SegRunConfig
from medlens.pipelines.data import (
    SegSample,
    load_pair,
    load_seg_dataset,
)
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.runs import skipped_rows_lines
from medlens.pipelines.evaluation.segmentation import seg_metrics
from medlens.pipelines.rundir import RunDir, atomic_write_csv, atomic_write_text, threshold_record
from medlens.pipelines.seg_model import SegModel

__all__ = ["evaluate_segmentation", "choose_seg_threshold", "write_seg_model_card", "pooled_maps", "split_maps"]

log = logging.getLogger(__name__)


def _foreground(prob: np.ndarray) -> np.ndarray:
    return prob if prob.ndim == 2 else prob[..., -1] if prob.shape[-1] == 1 else prob


def choose_seg_threshold(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """The threshold in 0.05…0.95 (steps of 0.01) that maximises Dice over pooled pixels."""
    probabilities = np.asarray(probabilities, dtype=np.float32).ravel()
    positive = np.asarray(truth).ravel() > 0
    candidates = np.round(np.arange(0.05, 0.951, 0.01), 2)
    # Histogram once, then every threshold's TP/FP/FN from cumulative sums.
    bins = np.clip((probabilities * 100).astype(np.int64), 0, 100)
    pos_counts = np.bincount(bins[positive], minlength=101)
    neg_counts = np.bincount(bins[~positive], minlength=101)
    pos_above = np.cumsum(pos_counts[::-1])[::-1]
    neg_above = np.cumsum(neg_counts[::-1])[::-1]
    total_pos = positive.sum()
    best, best_dice = 0.5, -1.0
    for threshold in candidates:
        index = int(round(threshold * 100))
        tp, fp = pos_above[index], neg_above[index]
        fn = total_pos - tp
        dice = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else 0.0
        if dice > best_dice:
            best, best_dice = float(threshold), float(dice)
    return best


def split_maps(model: SegModel, samples: list[SegSample]) -> list[tuple[SegSample, np.ndarray, np.ndarray, Any]]:
    results = []
    for sample in samples:
        image, mask, fov = load_pair(sample, model.num_classes)
        results.append((sample, model.probability(image), mask, fov))
    return results


def pooled_maps(maps: list[tuple[SegSample, np.ndarray, np.ndarray, Any]]) -> tuple[np.ndarray, np.ndarray]:
    probs, truths = [], []
    for _, prob, mask, fov in maps:
        region = fov if fov is not None else np.ones(mask.shape, bool)
        probs.append(_foreground(prob)[region])
        truths.append(mask[region])
    return np.concatenate(probs), np.concatenate(truths)


def _rounded(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def evaluate_segmentation(
    run_dir: str | Path,
    split: str = "test",
    *,
    model: SegModel | None = None,
    dataset: Any = None,
    cfg: SegRunConfig | None = None,
) -> dict[str, Any]:
    """Score whole images of ``split`` and update ``metrics.json`` and ``per_image_<split>.csv``.

    Returns:
        ``{"n", "pooled": {dice, iou, sensitivity, specificity, precision, accuracy, auc…},
        "mean": {…per-image means…}, "threshold", "second_observer": {…} (DRIVE test)}``.

    Raises:
        RunDirError, DatasetError: The run or its data cannot be used.
    """
    from medlens.pipelines.config import load_config

    run = RunDir(run_dir)
    model = model or SegModel(run.root)
    if cfg is None:
        cfg = load_config(run.read_config())
    if dataset is None:
        dataset = load_seg_dataset(cfg.data, seed=cfg.seed)
    samples = dataset.splits.get(split) or []
    if not samples:
        raise ConfigError(f"{run.root}: the dataset has no {split!r} split")
    started = time.perf_counter()
    maps = split_maps(model, samples)
    threshold = model.threshold
    rows = []
    per_image = []
    for sample, prob, mask, fov in maps:
        metrics = seg_metrics(prob, mask, fov, threshold)
        per_image.append(metrics)
        rows.append([str(sample.image_path), *(_fmt(metrics.get(k)) for k in _ROW_KEYS)])
    probs, truths = pooled_maps(maps)
    pooled = seg_metrics(probs[None, :], truths[None, :], None, threshold)
    result: dict[str, Any] = {
        "n": len(maps),
        "threshold": threshold,
        "pooled": _rounded(pooled),
        "mean": {k: round(float(np.mean([m[k] for m in per_image if m.get(k) is not None])), 6)
                 for k in _ROW_KEYS if any(m.get(k) is not None for m in per_image)},
        "seconds_per_image": round((time.perf_counter() - started) / len(maps), 3),
    }
    second = [(s, m) for s, _, m, _ in maps if s.mask2_path is not None]
    if second:
        human_probs, human_truth = [], []
        for sample, mask in second:
            _, observer, fov = load_pair(type(sample)(sample.image_path, sample.mask2_path, sample.fov_path),
                                         model.num_classes)
            region = fov if fov is not None else np.ones(mask.shape, bool)
            human_probs.append((observer[region] > 0).astype(np.float32))
            human_truth.append(mask[region])
        human = seg_metrics(np.concatenate(human_probs)[None, :], np.concatenate(human_truth)[None, :], None, 0.5)
        result["second_observer"] = _rounded({k: human[k] for k in ("dice", "sensitivity", "specificity", "accuracy")})
    atomic_write_csv(run.root / f"per_image_{split}.csv", ["path", *_ROW_KEYS], rows)
    all_metrics = run.read_metrics()
    all_metrics[split] = result
    all_metrics["threshold"] = threshold_record(threshold, run.read_state().get("threshold_method", "fixed"))
    run.write_metrics(all_metrics)
    return result


_ROW_KEYS = ("dice", "iou", "sensitivity", "specificity", "precision", "accuracy", "auc")


def _fmt(value: Any) -> Any:
    return "" if value is None else round(float(value), 6)


# --------------------------------------------------------------------------- training


_ROW_KEYS = ("dice", "iou", "sensitivity", "specificity", "precision", "accuracy", "auc")


def _fmt(value: Any) -> Any:
    return "" if value is None else round(float(value), 6)


# --------------------------------------------------------------------------- training


def write_seg_model_card(run_dir: str | Path) -> Path:
    """A short ``model_card.md``: what was trained on what, how it scored, its limits."""

    run = RunDir(run_dir)
    state = run.read_state()
    metrics = run.read_metrics()
    config = run.read_config()
    lines = [
        f"# Model card: {config.get('name', run.root.name)}",
        "",
        "> Decision support only. Not a diagnosis; not cleared for clinical use.",
        "",
        f"- Task: binary segmentation ({state['num_classes']} output channel(s)), "
        f"{'segmentation GAN (U-Net generator)' if state['architecture'] == 'gan' else 'U-Net'}"
        f"{', ' + state['encoder'] + ' encoder (' + str(state['encoder_weights']) + ')' if state['encoder'] != 'none' else ''}.",
        f"- Data: {config.get('data', {}).get('kind')} at {config.get('data', {}).get('root')}; "
        f"splits {state['data_report'].get('split_counts', state['data_report'].get('counts', ''))}.",
        *skipped_rows_lines(state),
        f"- Input: {state['channels']} channel(s); {state['mode']} mode "
        f"({'patches of ' + str(state['patch_size']) + ' px, tiles of ' + str(state['tile']) if state['mode'] == 'patch' else 'resized to ' + str(state['image_size'])}).",
        f"- Trained {state['epochs_run']} epochs in {state['train_seconds']:.0f} s on Keras {state['keras_version']} "
        f"({state['keras_backend']}); best epoch {state['best_epoch']} by {next(iter(state['best_monitor']))}.",
        f"- Threshold {state['threshold']} ({state.get('threshold_method', 'fixed')}).",
        "",
        "| split | n | Dice (pooled) | AUC | sensitivity | specificity | accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        if split in metrics:
            p = metrics[split]["pooled"]
            lines.append(f"| {split} | {metrics[split]['n']} | {p['dice']:.4f} | {_fmt(p.get('auc'))} | "
                         f"{_fmt(p.get('sensitivity'))} | {_fmt(p.get('specificity'))} | {_fmt(p.get('accuracy'))} |")
    lines += ["", "Metrics are computed inside the field-of-view mask when the data has one, on whole images "
              "predicted the way `medlens segment` predicts them.", ""]
    return atomic_write_text(run.card_path, "\n".join(lines))
