"""Segmentation runs: train a U-Net or a segmentation GAN, pick a threshold, evaluate whole images.

``medlens train CONFIG`` with ``task: segmentation`` lands here (through
:func:`medlens.pipelines.train.train`, which also handles ``--resume``). The run uses the
same two-phase loop, checkpoints and resume as classification
(:func:`~medlens.pipelines.train.run_phases`): phase 1 trains with the encoder frozen
(``unfreeze_blocks: 0``) or everything (``-1``), phase 2 fine-tunes everything at a lower
learning rate. A GAN run trains a :class:`~medlens.models.seggan.SegGAN` and keeps only its
generator as ``model.keras``, a plain U-Net, so every later command treats both alike.

Evaluation predicts each *whole* image of a split the way ``medlens segment`` will
(sliding-window tiles with Gaussian blending in ``patch`` mode, a resize in ``whole`` mode),
and scores it inside the field of view: pooled over all pixels of the split (the DRIVE
convention) and per image. With ``evaluate.threshold: best_dice`` the threshold is the one
that maximises Dice on the validation split.

Example:
    from medlens.pipelines.config import load_config
    train(load_config("fundus-vessels"), "runs/vessels")
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.models.losses import get_loss
from medlens.models.metrics import segmentation_metrics
from medlens.models.seggan import SegGAN, build_discriminator
from medlens.models.unet import build_unet, freeze_encoder, unfreeze_encoder
from medlens.pipelines.config import SegRunConfig
from medlens.pipelines.data import (
    SegmentationSequence,
    SegSample,
    load_pair,
    load_seg_dataset,
    to_model_channels,
)
from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.evaluation.segmentation import seg_metrics
from medlens.pipelines.inference.tiling import sliding_window_predict, whole_image_predict
from medlens.pipelines.rundir import RunDir, atomic_write_csv, atomic_write_text, threshold_record
from medlens.pipelines.tasks import require_command

__all__ = ["SegModel", "train_segmentation", "evaluate_segmentation", "choose_seg_threshold"]

log = logging.getLogger(__name__)


def _preprocess(encoder: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The encoder's ``preprocess_input`` for pretrained encoders; None scales to [0, 1]."""
    return preprocess_function(encoder) if encoder in ("vgg16", "resnet50") else None


class SegModel:
    """A trained segmentation model with the settings to predict whole images of any size.

    Args:
        run_dir: A finished segmentation run (``run.json`` says ``task: segmentation``).
        model: An already loaded model (default: ``run_dir/model.keras``).

    Raises:
        RunDirError: Not a finished segmentation run.
    """

    def __init__(self, run_dir: str | Path, model: keras.Model | None = None):
        self.run = RunDir(run_dir).require()
        self.state = self.run.read_state()
        require_command(self.state, self.run.root, "segment")
        self.model = model if model is not None else keras.saving.load_model(self.run.model_path, compile=False)
        self.channels = int(self.state["channels"])
        self.num_classes = int(self.state["num_classes"])
        self.mode = self.state["mode"]
        self.image_size = tuple(self.state["image_size"])
        self.tile = int(self.state["tile"])
        self.overlap = float(self.state["overlap"])
        self.batch_size = int(self.state.get("batch_size", 16))
        self.multiple = int(self.state["multiple"])
        self.threshold = float(self.state.get("threshold", 0.5))
        self.min_size = int(self.state.get("min_size", 0))
        self.preprocess = _preprocess(self.state.get("encoder", "none"))
        self.input_scale: dict[str, Any] | None = self.state.get("input_scale")

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Reader pixels (``[0, 1]``) → the model's ``H×W×channels`` input."""
        image = to_model_channels(np.asarray(pixels, dtype=np.float32), self.channels)
        return self.preprocess(image[None])[0] if self.preprocess else image / np.float32(255.0)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.predict_on_batch(batch))

    def probability(self, pixels: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """Foreground probability ``H×W`` (``H×W×C`` for several classes) at the image's own size.

        ``factor`` ≠ 1 resamples the image by it first (``--match-scale``: to the training scale)
        and the probabilities back to the image's size.
        """
        import cv2

        if factor != 1.0:
            height, width = pixels.shape[:2]
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            resized = cv2.resize(np.asarray(pixels, np.float32), size,
                                 interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
            resized = np.clip(resized, 0.0, 1.0)
            prob = self.probability(resized[..., None] if resized.ndim == 2 else resized)
            return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = self.model_input(pixels)
        height, width = x.shape[:2]
        if self.mode == "whole":
            resized = cv2.resize(x, self.image_size[::-1], interpolation=cv2.INTER_AREA
                                 if height * width > self.image_size[0] * self.image_size[1] else cv2.INTER_LINEAR)
            if resized.ndim == 2:
                resized = resized[..., None]
            prob = whole_image_predict(self._predict, resized, multiple=self.multiple)
            return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        if min(height, width) < self.tile:
            return whole_image_predict(self._predict, x, multiple=self.multiple)
        return sliding_window_predict(self._predict, x, tile=self.tile, overlap=self.overlap,
                                      batch_size=self.batch_size, multiple=self.multiple)


# --------------------------------------------------------------------------- thresholds and metrics


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


def _split_maps(model: SegModel, samples: list[SegSample]) -> list[tuple[SegSample, np.ndarray, np.ndarray, Any]]:
    results = []
    for sample in samples:
        image, mask, fov = load_pair(sample, model.num_classes)
        results.append((sample, model.probability(image), mask, fov))
    return results


def _pooled(maps: list[tuple[SegSample, np.ndarray, np.ndarray, Any]]) -> tuple[np.ndarray, np.ndarray]:
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
    maps = _split_maps(model, samples)
    threshold = model.threshold
    rows = []
    per_image = []
    for sample, prob, mask, fov in maps:
        metrics = seg_metrics(prob, mask, fov, threshold)
        per_image.append(metrics)
        rows.append([str(sample.image_path), *(_fmt(metrics.get(k)) for k in _ROW_KEYS)])
    probs, truths = _pooled(maps)
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


def _build_model(cfg: SegRunConfig) -> keras.Model:
    m, d = cfg.model, cfg.data
    unet = build_unet(
        (None, None, d.channels),
        num_classes=d.num_classes,
        depth=m.depth,
        filters=m.filters,
        batch_norm=m.batch_norm,
        dropout=m.dropout,
        encoder=None if m.backbone == "none" else m.backbone,
        encoder_weights=m.weights,
        level_dropout=m.level_dropout,
        upsampling=m.upsampling,
    )
    if m.init_weights:
        _load_init_weights(unet, m.init_weights)
    if m.architecture != "gan":
        return unet
    discriminator = build_discriminator((None, None, d.channels), filters=m.discriminator_filters,
                                        depth=m.discriminator_depth, mask_channels=d.num_classes)
    return SegGAN(unet, discriminator, seg_loss=m.loss, adversarial_weight=m.adversarial_weight)


def _load_init_weights(unet: keras.Model, source: str) -> None:
    """Copy weights from a run directory, a ``.keras`` model or a ``.weights.h5`` file into ``unet``."""
    path = Path(source)
    if path.is_dir():
        path = path / "model.keras"
    if not path.is_file():
        raise ConfigError(f"{path}: model.init_weights not found (a segmentation run, .keras or .weights.h5)")
    try:
        if path.name.endswith(".weights.h5"):
            unet.load_weights(path)
        else:
            donor = keras.saving.load_model(path, compile=False)
            unet.set_weights(_generator(donor).get_weights())
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{path}: cannot initialise the U-Net from it ({str(exc).splitlines()[0][:160]}); "
                          "it must have the same depth, filters and encoder") from None
    log.info("U-Net initialised from %s", path)


def _generator(model: keras.Model) -> keras.Model:
    return model.generator if isinstance(model, SegGAN) else model


def train_segmentation(
    cfg: SegRunConfig,
    run: RunDir,
    *,
    resume_state: dict[str, Any] | None = None,
    verbose: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
    started: float | None = None,
    distribution: Any = None,
) -> Any:
    """Train, choose the threshold, evaluate on test and write the run directory.

    Called by :func:`medlens.pipelines.train.train`, which creates (or reopens, to resume)
    ``run`` and writes its ``config.yaml``.

    Returns:
        A :class:`~medlens.pipelines.training.phases.TrainResult` whose metrics are the pooled test metrics.
    """
    from medlens.pipelines.distribute import Distribution
    from medlens.pipelines.training.callbacks import restore_rng_state, save_model
    from medlens.pipelines.training.phases import (
        EvenBatches,
        TrainResult,
        build_optimizer,
        reload_outside,
        run_phases,
        worker_result,
    )

    distribution = distribution or Distribution()

    started = started or time.time()
    dataset = load_seg_dataset(cfg.data, seed=cfg.seed)
    for split in ("train", "val", "test"):
        if not dataset.splits.get(split):
            raise ConfigError(f"segmentation dataset has no {split!r} split; set data.val_fraction/test_fraction "
                              "above 0 or give splits")
    preprocess = _preprocess(cfg.model.backbone)
    kwargs = cfg.data.sequence_kwargs()
    train_data = SegmentationSequence(dataset.splits["train"], **kwargs, preprocess=preprocess, seed=cfg.seed)
    kwargs.update(augment="none")
    val_data = SegmentationSequence(dataset.splits["val"], **kwargs, preprocess=preprocess, seed=cfg.seed + 1,
                                    shuffle=False)
    if distribution.replicas > 1:
        train_data, val_data = EvenBatches(train_data, distribution.replicas), EvenBatches(val_data, distribution.replicas)
    with distribution.scope():
        if resume_state is not None:
            model = keras.saving.load_model(run.checkpoints / resume_state["checkpoint"])
            restore_rng_state(model, resume_state.get("rng", []))
        else:
            model = _build_model(cfg)
    has_encoder = cfg.model.backbone != "none"

    def prepare_phase(m: keras.Model, phase: Any) -> None:
        if has_encoder:
            (freeze_encoder if phase.unfreeze_blocks == 0 else unfreeze_encoder)(_generator(m))

    def compile_phase(m: keras.Model, phase: Any) -> None:
        optimizer = build_optimizer(cfg.train.optimizer, phase.learning_rate)
        if isinstance(m, SegGAN):
            m.compile(g_optimizer=optimizer,
                      d_optimizer=keras.optimizers.Adam(cfg.model.discriminator_learning_rate, beta_1=0.5))
        else:
            m.compile(optimizer=optimizer, loss=get_loss(cfg.model.loss), metrics=segmentation_metrics())

    with distribution.scope():
        model, state = run_phases(run, cfg, model, train_data, val_data, prepare_phase=prepare_phase,
                                  compile_phase=compile_phase, resume_state=resume_state, verbose=verbose,
                                  callbacks=callbacks)
    generator = _generator(model)
    save_model(generator, run.model_path)
    if (done := worker_result(distribution, run, state, started)) is not None:
        return done
    generator = reload_outside(distribution, generator, run.model_path)
    d = cfg.data
    tile = cfg.evaluate.tile or (d.patch_size if d.mode == "patch" else max(d.image_size))
    previous = float(run.read_state().get("train_seconds", 0)) if run.state_path.is_file() else 0.0
    run_state = {
        "task": "segmentation",
        "architecture": cfg.model.architecture,
        "encoder": cfg.model.backbone,  # run.json keeps its field names: runs written before still load
        "encoder_weights": cfg.model.weights,
        "channels": d.channels,
        "num_classes": d.num_classes,
        "mode": d.mode,
        "patch_size": d.patch_size,
        "image_size": list(d.image_size),
        "tile": tile,
        "overlap": cfg.evaluate.overlap,
        "batch_size": cfg.evaluate.batch_size,
        "multiple": cfg.model.multiple(),
        "min_size": cfg.evaluate.min_size,
        "threshold": 0.5,
        "input_scale": _training_scale(dataset.splits["train"]),
        "best_epoch": state.get("best_epoch"),
        "best_monitor": {cfg.train.monitor: state.get("best")},
        "epochs_run": int(state.get("epochs_done", 0)),
        "resumed": resume_state is not None,
        "distribution": distribution.describe(),
        "data_report": dataset.report,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": round(previous + time.time() - started, 1),
    }
    run.write_state(run_state)
    seg_model = SegModel(run.root, model=generator)
    if cfg.evaluate.threshold == "best_dice":
        probs, truths = _pooled(_split_maps(seg_model, dataset.splits["val"]))
        run_state["threshold"] = choose_seg_threshold(probs, truths)
        run_state["threshold_method"] = "best_dice on validation"
    else:
        run_state["threshold"] = float(cfg.evaluate.threshold)
        run_state["threshold_method"] = "fixed"
    run.write_state(run_state)
    seg_model.threshold = run_state["threshold"]
    evaluate_segmentation(run.root, "val", model=seg_model, dataset=dataset, cfg=cfg)
    metrics = evaluate_segmentation(run.root, "test", model=seg_model, dataset=dataset, cfg=cfg)
    write_seg_model_card(run.root)
    return TrainResult(run.root, metrics["pooled"], run_state["epochs_run"], time.time() - started)


def _training_scale(samples: list[Any]) -> dict[str, Any]:
    """The training images' pixel spacing and FOV diameter (see :mod:`medlens.pipelines.scale`)."""
    from medlens.pipelines.imaging import read_image
    from medlens.pipelines.scale import training_scale

    def images() -> Any:
        for sample in samples:
            try:
                record = read_image(sample.image_path)
            except MedlensError:
                continue  # training read it; a file gone since is not this summary's business
            yield record.pixels, record.spacing

    return training_scale(images())


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
