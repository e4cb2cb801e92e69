"""The two training phases: compile, freeze or unfreeze, fit with the phase callbacks, and resume.

:func:`run_phases` trains phase 1 (backbone or encoder frozen) and phase 2 (top blocks
unfrozen at a lower learning rate) for every kind of model medlens trains, classifiers and
segmentation networks alike; the pieces that differ come in as arguments.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras

from medlens.models.classifier import freeze_backbone, unfreeze_all, unfreeze_top_blocks
from medlens.pipelines.config import PhaseConfig, RunConfig, SegRunConfig
from medlens.pipelines.distribute import Distribution
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.training.callbacks import EpochSync, HistoryWriter, OnWholeModel, PhaseController

__all__ = ["TrainResult", "build_optimizer", "compile_phase", "set_trainable", "run_phases", "EvenBatches", "replica_batches",
           "reload_outside", "worker_result"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished training run produced."""

    run_dir: Path
    metrics: dict[str, Any]
    epochs_run: int
    seconds: float




def build_optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def compile_phase(model: keras.Model, cfg: RunConfig, phase: PhaseConfig, objectives: Callable[[], tuple[Any, list]],
             replicas: int = 1, optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Compile for one phase; ``objectives()`` gives the task's loss and fresh metric objects."""
    rate = phase.learning_rate * (replicas if cfg.train.scale_learning_rate else 1)
    loss, metrics = objectives()
    model.compile(optimizer=optimizer or build_optimizer(cfg.train.optimizer, rate), loss=loss, metrics=metrics)


def set_trainable(model: keras.Model, backbone_name: str, unfreeze_blocks: int) -> None:
    if unfreeze_blocks == 0:
        freeze_backbone(model)
    elif unfreeze_blocks < 0:
        unfreeze_all(model)
    else:
        unfreeze_top_blocks(model, unfreeze_blocks, backbone_name)




def run_phases(
    run: RunDir,
    cfg: RunConfig | SegRunConfig,
    model: keras.Model,
    train_data: Any,
    val_data: Any,
    *,
    prepare_phase: Callable[[keras.Model, PhaseConfig], None],
    compile_phase: Callable[[keras.Model, PhaseConfig], None],
    class_weight: dict[int, float] | None = None,
    resume_state: dict[str, Any] | None = None,
    verbose: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
    frozen_top: Callable[[keras.Model, PhaseConfig], tuple[keras.Model, Any, Any] | None] | None = None,
) -> tuple[keras.Model, dict[str, Any]]:
    """Fit ``model`` through the two phases of ``cfg.train``, checkpointing every epoch.

    Shared by every task (classification, segmentation): the task decides how a
    phase changes trainability (``prepare_phase``) and what it compiles with
    (``compile_phase``). With ``resume_state`` (``checkpoints/state.json`` of an
    interrupted run) it continues from the last finished epoch with the saved
    optimizer, counters and history. ``frozen_top(model, phase)`` may return the
    model's trainable top with data sets of cached frozen activations
    (:mod:`medlens.pipelines.frozen`): the phase then fits that top, sharing the
    model's weights and optimizer, and checkpoints still hold the whole model.

    Returns:
        The model holding the best weights, and the final controller state.
    """
    state: dict[str, Any] = dict(resume_state or {})
    rows: list[dict[str, Any]] = list(state.get("history", []))
    epochs_done = int(state.get("epochs_done", 0))
    for number, phase in ((1, cfg.train.phase1), (2, cfg.train.phase2)):
        resuming_this_phase = resume_state is not None and state.get("phase") == number
        if resume_state is not None and (state.get("phase", 0) > number or
                                         (resuming_this_phase and state.get("phase_complete"))):
            continue
        if phase.epochs == 0:
            continue
        if resuming_this_phase:
            phase_start = int(state["phase_start"])
            log.info("resuming phase %d at epoch %d", number, epochs_done + 1)
        else:
            phase_start = epochs_done
            state.update(phase_best=None, wait=0, lr_wait=0)
            (run.checkpoints / "phase_best.weights.h5").unlink(missing_ok=True)
            prepare_phase(model, phase)
            compile_phase(model, phase)
        log.info("phase %d: epochs %d-%d at lr %g, %d trainable weights", number, phase_start + 1,
                 phase_start + phase.epochs, phase.learning_rate, len(model.trainable_weights))
        started = time.time()  # the phase's cost includes computing any cached activations
        fitted, phase_train, phase_val = model, train_data, val_data
        top = frozen_top(model, phase) if frozen_top is not None else None
        if top is not None:
            fitted, phase_train, phase_val = top
        phase_callbacks: list[keras.callbacks.Callback] = [
            HistoryWriter(run.history_path, rows, number),
            PhaseController(run, cfg, number, phase_start, state, rows, saved=model if top else None),
        ]
        if hasattr(phase_train, "set_epoch"):
            phase_callbacks.insert(0, EpochSync(phase_train))
        if cfg.train.tensorboard:
            phase_callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run.root / "tensorboard")))
        fitted.fit(
            phase_train,
            validation_data=phase_val,
            initial_epoch=epochs_done,
            epochs=phase_start + phase.epochs,
            class_weight=class_weight,
            # Our datasets shuffle themselves from (seed, epoch); Keras's own batch shuffle
            # draws from Python's global `random`, which no checkpoint can restore.
            shuffle=False,
            verbose=verbose,
            callbacks=phase_callbacks + ([OnWholeModel(list(callbacks or []), model)] if top else list(callbacks or [])),
        )
        ran, seconds = int(state["epochs_done"]) - epochs_done, time.time() - started
        if ran:
            log.info("phase %d: %d epochs in %.1f s (%.2f epochs/s%s)", number, ran, seconds,
                     ran / max(seconds, 1e-9), ", frozen layers cached" if top else "")
            timing = state.setdefault("phase_timing", {}).setdefault(str(number), {"epochs": 0, "seconds": 0.0})
            timing.update(epochs=timing["epochs"] + ran, seconds=round(timing["seconds"] + seconds, 2),
                          frozen_cached=top is not None)
        epochs_done = int(state["epochs_done"])
    best_path = run.checkpoints / "best.keras"
    if best_path.is_file():
        model = keras.saving.load_model(best_path)
    return model, state




def worker_result(distribution: Distribution, run: RunDir, state: dict[str, Any], started: float) -> TrainResult | None:
    """For a worker that is not the chief, the end of training: the chief evaluates and writes the run."""
    if distribution.chief:
        return None
    distribution.release()
    return TrainResult(run.root, {}, int(state.get("epochs_done", 0)), time.time() - started)


def replica_batches(distribution: Distribution, *datasets: Any) -> tuple[Any, ...]:
    """The training and validation data as ``distribution`` needs them (see :class:`EvenBatches`)."""
    if distribution.replicas == 1:
        return datasets
    return tuple(EvenBatches(d, distribution.replicas, distribution.process) for d in datasets)


class EvenBatches(keras.utils.PyDataset):
    """A dataset whose batches split evenly across replicas (a remainder batch is dropped).

    TensorFlow's strategies split each batch across replicas, and a last batch of one image
    leaves a replica an empty batch, which BatchNorm cannot take; JAX's DataParallel needs
    every batch divisible by the device count. Only used when training on several replicas
    (evaluation runs on one device, with every image).

    On JAX with several processes (``multi_worker``), each process feeds only its own part of
    every global batch: ``process = (index, count)`` keeps rows ``index * n / count`` up to
    ``(index + 1) * n / count`` of each array, the split TensorFlow's multi-worker strategy makes.

    Raises:
        ConfigError: on JAX, a batch size that does not split evenly over the devices.
    """

    def __init__(self, dataset: Any, replicas: int, process: tuple[int, int] = (0, 1)):
        # Keras reads the loading workers from the dataset it is given: this one.
        super().__init__(workers=getattr(dataset, "workers", 1),
                         use_multiprocessing=getattr(dataset, "use_multiprocessing", False))
        self.dataset = dataset
        self.index, self.processes = process
        self.length = len(dataset)
        jax = keras.backend.backend() == "jax"
        if jax and self.length and len(dataset[0][0]) % replicas:
            raise ConfigError(f"batches of {len(dataset[0][0])} images do not split evenly over the {replicas} JAX "
                              f"devices of train.distribution; make data.batch_size a multiple of {replicas}")
        if self.length > 1:
            last = len(dataset[self.length - 1][0])
            # JAX shards every batch evenly over devices; TensorFlow only needs one image per replica.
            uneven = last % replicas if jax else last < replicas
            if uneven:
                self.length -= 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        batch = self.dataset[index]
        if self.processes == 1:
            return batch
        rows = len(batch[0]) // self.processes
        part = slice(self.index * rows, (self.index + 1) * rows)
        return keras.tree.map_structure(lambda array: array[part], batch)

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def reload_outside(distribution: Distribution, model: keras.Model, path: Path) -> keras.Model:
    """A model bound to no strategy, for single-device evaluation (the file just saved)."""
    if distribution.kind == "none":
        return model
    distribution.release()
    return keras.saving.load_model(path)


