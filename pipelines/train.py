"""Two-phase transfer learning for a classifier, into one run directory.

Phase 1 trains the head with the backbone frozen (feature extraction); phase 2
unfreezes the backbone's top blocks and continues at a lower learning rate
(fine-tuning). BatchNorm layers stay in inference mode throughout. The best
epoch across both phases (by ``train.monitor``) is kept, the decision
threshold is chosen on validation, and the test split is evaluated.

Example:
    >>> from medlens.pipelines.config import load_config
    >>> from medlens.pipelines.train import train
    >>> cfg = load_config("breast-ultrasound", ["model.weights=none", "train.phase1.epochs=1"])
    >>> result = train(cfg, "runs/breast")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.models.classifier import build_classifier, freeze_backbone, unfreeze_all, unfreeze_top_blocks
from medlens.pipelines.config import PhaseConfig, RunConfig, config_to_dict
from medlens.pipelines.data import ClassificationSequence, Dataset, class_weights, load_dataset
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.run_eval import evaluate_run, write_model_card
from medlens.pipelines.rundir import RunDir, atomic_write_csv

__all__ = ["train", "TrainResult", "set_determinism"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path
    metrics: dict[str, Any]
    epochs_run: int
    seconds: float


def set_determinism(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend; make TensorFlow ops deterministic on CPU."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        try:
            tf.config.experimental.enable_op_determinism()
        except Exception:  # pragma: no cover - older TF without the switch
            log.warning("TensorFlow op determinism is not available; results may vary run to run")


class _HistoryWriter(keras.callbacks.Callback):
    """Rewrites ``history.csv`` atomically after every epoch, with the phase and learning rate."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], phase: int):
        super().__init__()
        self.path = path
        self.rows = rows
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase}
        try:
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # pragma: no cover - exotic schedules
            row["learning_rate"] = ""
        row.update({key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"})
        self.rows.append(row)
        columns: list[str] = []
        for item in self.rows:
            columns.extend(key for key in item if key not in columns)
        atomic_write_csv(self.path, columns, ([item.get(c, "") for c in columns] for item in self.rows))


class _BestKeeper(keras.callbacks.Callback):
    """Saves the model whenever the monitored value improves, across both phases."""

    def __init__(self, path: Path, monitor: str, state: dict[str, Any]):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.state = state
        self.mode = "max" if any(k in monitor for k in ("auc", "accuracy", "precision", "recall")) else "min"

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        best = self.state.get("best")
        better = best is None or (value > best if self.mode == "max" else value < best)
        if better:
            self.state.update(best=float(value), epoch=epoch + 1)
            tmp = self.path.with_name(f".{self.path.name}.tmp.keras")
            self.model.save(tmp)
            os.replace(tmp, self.path)


def _optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def _compile(model: keras.Model, cfg: RunConfig, phase: PhaseConfig, num_classes: int) -> None:
    binary = num_classes == 2
    model.compile(
        optimizer=_optimizer(cfg.train.optimizer, phase.learning_rate),
        loss="binary_crossentropy" if binary else "categorical_crossentropy",
        metrics=[
            keras.metrics.BinaryAccuracy(name="accuracy") if binary else keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.AUC(name="auc"),
        ],
    )


def _set_trainable(model: keras.Model, backbone_name: str, unfreeze_blocks: int) -> None:
    if unfreeze_blocks == 0:
        freeze_backbone(model)
    elif unfreeze_blocks < 0:
        unfreeze_all(model)
    else:
        unfreeze_top_blocks(model, unfreeze_blocks, backbone_name)


def _callbacks(cfg: RunConfig, run: RunDir, rows: list[dict[str, Any]], phase: int,
               best_state: dict[str, Any], extra: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    monitor = cfg.train.monitor
    mode = "max" if any(k in monitor for k in ("auc", "accuracy")) else "min"
    callbacks: list[keras.callbacks.Callback] = [
        _BestKeeper(run.checkpoints / "best.keras", monitor, best_state),
        keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=cfg.train.early_stopping_patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor=monitor, mode=mode, patience=cfg.train.reduce_lr_patience, factor=cfg.train.reduce_lr_factor,
            min_lr=1e-7,
        ),
        _HistoryWriter(run.history_path, rows, phase),
    ]
    if cfg.train.tensorboard:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.root / "tensorboard")))
    return callbacks + extra


def build_sequences(cfg: RunConfig, dataset: Dataset, preprocess: Callable[[np.ndarray], np.ndarray]
                    ) -> dict[str, ClassificationSequence]:
    """One Keras ``PyDataset`` per split: training shuffled and augmented, others in order."""
    num_classes = len(dataset.class_names)
    size = tuple(cfg.data.image_size)
    sequences = {}
    for split, source in dataset.splits.items():
        training = split == "train"
        sequences[split] = ClassificationSequence(
            source,
            image_size=size,
            batch_size=cfg.data.batch_size,
            preprocess=preprocess,
            num_classes=num_classes,
            augment=cfg.data.augment if training else None,
            shuffle=training,
            balanced=training and cfg.data.balanced_sampling,
            seed=cfg.seed,
            cache=cfg.data.cache,
        )
    return sequences


def train(
    cfg: RunConfig,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    verbose: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train a classifier as ``cfg`` says and write a complete run directory.

    Args:
        cfg: validated configuration (see :func:`medlens.pipelines.config.load_config`).
        run_dir: where the run goes; must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing run directory's files.
        verbose: Keras ``fit`` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
        callbacks: extra Keras callbacks (e.g. a progress reporter).

    Returns:
        A :class:`TrainResult` with the test metrics.

    Raises:
        ConfigError, DatasetError, WeightsError, RunDirError: with one-line messages.
    """
    if cfg.task != "classification":
        raise ConfigError(f"task {cfg.task!r} is not a classification task")
    started = time.time()
    run = RunDir(run_dir).create(overwrite=overwrite)
    set_determinism(cfg.seed)
    run.write_config(config_to_dict(cfg))

    dataset = load_dataset(cfg.data, seed=cfg.seed)
    class_names = list(dataset.class_names)
    num_classes = len(class_names)
    for split in ("train", "val", "test"):
        if split not in dataset.splits or len(dataset.splits[split]) == 0:
            raise ConfigError(f"dataset has no {split!r} split; set data.val_fraction/test_fraction above 0")
    log.info("classes %s; counts %s", class_names, dataset.report.get("class_counts"))

    backbone_name = cfg.model.backbone
    input_shape = (*cfg.data.image_size, 3)
    model = build_classifier(
        backbone=backbone_name,
        num_classes=num_classes,
        input_shape=input_shape,
        weights=cfg.model.weights,
        pooling=cfg.model.pooling,
        dropout=cfg.model.dropout,
        dense_units=cfg.model.dense_units,
    )
    sequences = build_sequences(cfg, dataset, preprocess_function(backbone_name))
    weights = (
        class_weights(dataset.splits["train"].labels, num_classes) if cfg.data.class_weights else None
    )

    rows: list[dict[str, Any]] = []
    best_state: dict[str, Any] = {}
    epochs_done = 0
    pretrained = str(cfg.model.weights).lower() not in ("none", "")
    for phase_number, phase in ((1, cfg.train.phase1), (2, cfg.train.phase2)):
        if phase.epochs == 0:
            continue
        if phase_number == 1 and phase.unfreeze_blocks == 0 and not pretrained:
            log.warning("phase 1 freezes a backbone with random weights (model.weights: none); "
                        "set train.phase1.unfreeze_blocks=-1 to train it from scratch")
        # EarlyStopping(restore_best_weights) hands phase 2 the best phase-1 weights.
        _set_trainable(model, backbone_name, phase.unfreeze_blocks)
        _compile(model, cfg, phase, num_classes)
        log.info("phase %d: %d epochs at lr %g, %d trainable weights", phase_number, phase.epochs,
                 phase.learning_rate, len(model.trainable_weights))
        history = model.fit(
            sequences["train"],
            validation_data=sequences["val"],
            initial_epoch=epochs_done,
            epochs=epochs_done + phase.epochs,
            class_weight=weights,
            verbose=verbose,
            callbacks=_callbacks(cfg, run, rows, phase_number, best_state, callbacks or []),
        )
        epochs_done += len(history.epoch)

    best_path = run.checkpoints / "best.keras"
    if best_path.is_file():
        model = keras.saving.load_model(best_path)
    tmp = run.model_path.with_name(".model.tmp.keras")
    model.save(tmp)
    os.replace(tmp, run.model_path)

    run.write_state({
        "task": "classification",
        "class_names": class_names,
        "backbone": backbone_name,
        "weights": cfg.model.weights,
        "image_size": list(cfg.data.image_size),
        "num_classes": num_classes,
        "best_epoch": best_state.get("epoch"),
        "best_monitor": {cfg.train.monitor: best_state.get("best")},
        "epochs_run": epochs_done,
        "data_report": dataset.report,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": round(time.time() - started, 1),
    })
    metrics = evaluate_run(run.root, split="test", model=model, dataset=dataset, cfg=cfg)
    write_model_card(run.root)
    return TrainResult(run.root, metrics, epochs_done, time.time() - started)
