"""Two-phase transfer learning for a classifier, into one run directory.

Phase 1 trains the head with the backbone frozen (feature extraction); phase 2
unfreezes the backbone's top blocks and continues at a lower learning rate
(fine-tuning). BatchNorm layers stay in inference mode throughout. The best
epoch across both phases (by ``train.monitor``) is kept, the decision
threshold is chosen on validation, and the test split is evaluated.

Example:
    from medlens.pipelines.config import load_config
    from medlens.pipelines.train import train
    cfg = load_config("breast-ultrasound", ["model.weights=none", "train.phase1.epochs=1"])
    result = train(cfg, "runs/breast")
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.models.classifier import freeze_backbone, unfreeze_all, unfreeze_top_blocks
from medlens.pipelines.config import PhaseConfig, RunConfig, SegRunConfig, config_to_dict, load_config
from medlens.pipelines.data import ClassificationSequence, Dataset
from medlens.pipelines.distribute import Distribution, cluster_failure, setup_distribution, worker_role
from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.frozen import FeatureSequence, cached_features, split_frozen
from medlens.pipelines.rundir import RunDir, atomic_write_csv, atomic_write_json
from medlens.pipelines.tasks import task_named

__all__ = ["train", "train_classifier", "TrainResult", "set_determinism"]

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


def _mode(monitor: str) -> str:
    return "max" if any(k in monitor for k in ("auc", "accuracy", "precision", "recall", "dice", "iou")) else "min"


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


class _EpochSync(keras.callbacks.Callback):
    """Pins a dataset's shuffling and augmentation to Keras's epoch index (resume-safe)."""

    def __init__(self, dataset: Any):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.dataset.set_epoch(epoch)


def _rng_variables(model: keras.Model) -> list[Any]:
    # Dropout's random state lives in SeedGenerator variables that `.keras` files do not keep.
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def rng_state(model: keras.Model) -> list[list[int]]:
    """The model's random-number states (dropout masks), as JSON-ready lists."""
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in _rng_variables(model)]


def restore_rng_state(model: keras.Model, states: list[list[int]]) -> None:
    """Put back states saved by :func:`rng_state` (same architecture, same order)."""
    variables = _rng_variables(model)
    if len(variables) != len(states):
        log.warning("random state of %d generators cannot be restored into %d; dropout masks will differ",
                    len(states), len(variables))
        return
    for variable, value in zip(variables, states, strict=True):
        variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def _save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class _PhaseController(keras.callbacks.Callback):
    """Early stopping, reduce-on-plateau, best-model keeping and per-epoch checkpoints in one place.

    Keras's own EarlyStopping and ReduceLROnPlateau keep their counters in memory, so a
    resumed run could not continue them; this controller's whole state is a small dict
    written to ``checkpoints/state.json`` after every epoch, next to the checkpoint it
    belongs to, so ``--resume`` continues exactly where the run stopped.
    """

    def __init__(self, run: RunDir, cfg: RunConfig, phase: int, phase_start: int, state: dict[str, Any],
                 rows: list[dict[str, Any]], saved: keras.Model | None = None):
        super().__init__()
        # What checkpoints hold: the fitted model, or the whole classifier when only its
        # trainable top is fitted on cached activations (the two share every weight).
        self.saved = saved
        self.run = run
        self.train_cfg = cfg.train
        self.monitor = cfg.train.monitor
        self.mode = _mode(self.monitor)
        self.phase = phase
        self.phase_start = phase_start
        self.state = state
        self.rows = rows
        self.state.setdefault("phase_best", None)
        self.state.setdefault("wait", 0)
        self.state.setdefault("lr_wait", 0)

    def _better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.mode == "max" else value < best)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ConfigError(
                f"train.monitor {self.monitor!r} is not among the logged metrics: {', '.join(sorted(logs or {}))}"
            )
        value = float(value)
        state = self.state
        saved = self.saved or self.model
        if math.isfinite(value) and self._better(value, state.get("best")):
            state.update(best=value, best_epoch=epoch + 1)
            _save_model(saved, self.run.checkpoints / "best.keras")
        if math.isfinite(value) and self._better(value, state["phase_best"]):
            state.update(phase_best=value, wait=0, lr_wait=0)
            saved.save_weights(self.run.checkpoints / "phase_best.weights.h5")
        else:
            state["wait"] += 1
            state["lr_wait"] += 1
            if state["lr_wait"] >= self.train_cfg.reduce_lr_patience:
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate = max(rate * self.train_cfg.reduce_lr_factor, 1e-7)
                state["lr_wait"] = 0
            if state["wait"] >= self.train_cfg.early_stopping_patience:
                self.model.stop_training = True
        self._checkpoint(epoch + 1, complete=False)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Like EarlyStopping(restore_best_weights=True): the phase hands on its best epoch.
        best_weights = self.run.checkpoints / "phase_best.weights.h5"
        if best_weights.is_file():
            (self.saved or self.model).load_weights(best_weights)
        last = self.rows[-1]["epoch"] if self.rows else self.phase_start
        self._checkpoint(last, complete=True)

    def _checkpoint(self, epoch: int, *, complete: bool) -> None:
        # The model file is named by epoch and written before the state that points at it,
        # so a kill at any instant leaves a state.json whose checkpoint is complete.
        name = f"last-e{epoch:03d}{'-end' if complete else ''}.keras"
        saved = self.saved or self.model
        _save_model(saved, self.run.checkpoints / name)
        self.state.update(phase=self.phase, phase_start=self.phase_start, epochs_done=epoch,
                          phase_complete=complete, checkpoint=name, history=self.rows,
                          rng=rng_state(saved))
        atomic_write_json(self.run.checkpoints / "state.json", self.state)
        for old in self.run.checkpoints.glob("last-e*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)


class _OnWholeModel(keras.callbacks.Callback):
    """Hands callbacks the whole classifier while only its trainable top is fitted (cached activations).

    A caller's callback reads ``self.model`` (weights, layers such as ``backbone``) and may set
    ``self.model.stop_training``; it sees the model it passed to training, and a stop it asks for
    reaches the fit that is running.
    """

    _HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_train_batch_begin",
              "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
              "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")

    def __init__(self, callbacks: list[keras.callbacks.Callback], whole: keras.Model):
        super().__init__()
        self.inner = callbacks
        self.whole = whole
        for hook in self._HOOKS:
            setattr(self, hook, self._forward(hook))

    def _forward(self, hook: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            for callback in self.inner:
                getattr(callback, hook)(*args, **kwargs)
            if getattr(self.whole, "stop_training", False):
                self.whole.stop_training = False
                self.model.stop_training = True

        return call

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.whole.stop_training = False
        for callback in self.inner:
            callback.set_model(self.whole)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        for callback in self.inner:
            callback.set_params(params)


def _optimizer(name: str, learning_rate: float) -> keras.optimizers.Optimizer:
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate)
    return keras.optimizers.Adam(learning_rate=learning_rate)


def _compile(model: keras.Model, cfg: RunConfig, phase: PhaseConfig, objectives: Callable[[], tuple[Any, list]],
             replicas: int = 1, optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Compile for one phase; ``objectives()`` gives the task's loss and fresh metric objects."""
    rate = phase.learning_rate * (replicas if cfg.train.scale_learning_rate else 1)
    loss, metrics = objectives()
    model.compile(optimizer=optimizer or _optimizer(cfg.train.optimizer, rate), loss=loss, metrics=metrics)


def _set_trainable(model: keras.Model, backbone_name: str, unfreeze_blocks: int) -> None:
    if unfreeze_blocks == 0:
        freeze_backbone(model)
    elif unfreeze_blocks < 0:
        unfreeze_all(model)
    else:
        unfreeze_top_blocks(model, unfreeze_blocks, backbone_name)


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
            _HistoryWriter(run.history_path, rows, number),
            _PhaseController(run, cfg, number, phase_start, state, rows, saved=model if top else None),
        ]
        if hasattr(phase_train, "set_epoch"):
            phase_callbacks.insert(0, _EpochSync(phase_train))
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
            callbacks=phase_callbacks + ([_OnWholeModel(list(callbacks or []), model)] if top else list(callbacks or [])),
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


def _resume_state(run: RunDir) -> dict[str, Any]:
    state_path = run.checkpoints / "state.json"
    if not run.config_path.is_file() or not state_path.is_file():
        raise RunDirError(f"{run.root}: nothing to resume (no config.yaml or checkpoints/state.json)")
    state = json.loads(state_path.read_text())
    if not (run.checkpoints / state["checkpoint"]).is_file():
        raise RunDirError(f"{run.root}: checkpoint {state['checkpoint']} named in state.json is missing")
    return state


def train(
    cfg: RunConfig | SegRunConfig | None,
    run_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    verbose: int = 0,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train a classifier (or, for ``task: segmentation``, a U-Net or segmentation GAN) and write a run directory.

    Args:
        cfg: validated configuration (see :func:`medlens.pipelines.config.load_config`);
            ignored with ``resume`` (the run's own ``config.yaml`` is used).
        run_dir: where the run goes; must not exist or be empty unless ``overwrite``.
        overwrite: replace an existing run directory's files.
        resume: continue an interrupted run in ``run_dir`` from its last finished epoch.
        verbose: Keras ``fit`` verbosity (0 silent, 1 progress bar, 2 one line per epoch).
        callbacks: extra Keras callbacks (e.g. a progress reporter).

    Returns:
        A :class:`TrainResult` with the test metrics.

    Raises:
        ConfigError, DatasetError, WeightsError, RunDirError: with one-line messages.
    """
    started = time.time()
    resume_state = None
    if resume:
        chief_run = RunDir(run_dir)
        resume_state = _resume_state(chief_run)
        cfg = load_config(chief_run.read_config())
    elif cfg is None:
        raise ConfigError("a configuration is needed unless resuming")
    # Read before anything starts TensorFlow: a bad TF_CONFIG fails here, with no run directory made.
    role = worker_role(cfg.train.distribution)
    scratch = None
    if not role.chief:
        # Every worker runs the same fit and saves in step with the chief; only the chief's files are kept.
        scratch = Path(tempfile.mkdtemp(prefix=f"medlens-worker{role.index}-"))
        run = RunDir(scratch / "run").create()
        run.write_config(config_to_dict(cfg))
        if resume:
            shutil.copytree(chief_run.checkpoints, run.checkpoints, dirs_exist_ok=True)
    elif resume:
        run = chief_run
    else:
        run = RunDir(run_dir).create(overwrite=overwrite)
        run.write_config(config_to_dict(cfg))
    try:
        distribution = setup_distribution(cfg.train.distribution, devices=cfg.train.devices,
                                          mixed_precision=cfg.train.mixed_precision,
                                          join_timeout=cfg.train.join_timeout, role=role)
        set_determinism(cfg.seed)
        if distribution.kind != "none":
            log.info("training on %d replicas (%s)", distribution.replicas, distribution.kind)
        try:
            result = task_named(cfg.task).train(cfg, run, resume_state, verbose=verbose, callbacks=callbacks,
                                                started=started, distribution=distribution)
        except Exception as exc:
            failure = cluster_failure(exc, run_dir) if distribution.kind == "multi_worker" else None
            if failure is None:
                raise
            raise failure from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if scratch is not None:
        return TrainResult(Path(run_dir), {}, result.epochs_run, result.seconds)
    return result


def worker_result(distribution: Distribution, run: RunDir, state: dict[str, Any], started: float) -> TrainResult | None:
    """For a worker that is not the chief, the end of training: the chief evaluates and writes the run."""
    if distribution.chief:
        return None
    return TrainResult(run.root, {}, int(state.get("epochs_done", 0)), time.time() - started)


class EvenBatches(keras.utils.PyDataset):
    """A dataset whose last batch splits evenly across replicas (a remainder batch is dropped).

    TensorFlow's strategies split each batch across replicas, and a last batch of one image
    leaves a replica an empty batch, which BatchNorm cannot take; JAX's DataParallel needs
    every batch divisible by the device count. Only used when training on several replicas
    (evaluation runs on one device, with every image).
    """

    def __init__(self, dataset: Any, replicas: int):
        super().__init__()
        self.dataset = dataset
        self.length = len(dataset)
        if self.length > 1:
            last = len(dataset[self.length - 1][0])
            # JAX shards every batch evenly over devices; TensorFlow only needs one image per replica.
            uneven = last % replicas if keras.backend.backend() == "jax" else last < replicas
            if uneven:
                self.length -= 1

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

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


def _frozen_top(cfg: RunConfig, sequences: dict[str, ClassificationSequence], backbone_name: str,
                objectives: Callable[[], tuple[Any, list]]
                ) -> Callable[[keras.Model, PhaseConfig], tuple[keras.Model, Any, Any] | None]:
    """The ``frozen_top`` hook of :func:`run_phases` for a classifier trained without augmentation."""

    def hook(model: keras.Model, phase: PhaseConfig) -> tuple[keras.Model, Any, Any] | None:
        split = split_frozen(model, backbone_name)
        if split is None:
            return None
        data = [FeatureSequence(sequences[name], cached_features(split, sequences[name],
                                                                 memory_mb=cfg.train.frozen_cache_mb))
                for name in ("train", "val")]
        # The same optimizer object: its state is the model's, saved in every checkpoint.
        _compile(split.top, cfg, phase, objectives, optimizer=model.optimizer)
        log.info("frozen layers up to %s computed once; training %s on their activations",
                 split.cut, split.top.name)
        return split.top, data[0], data[1]

    return hook


def shuffle_labels(dataset: Any, seed: int) -> None:
    """Permute the train and val labels in place (seeded; test labels kept): a data-randomisation model."""
    rng = np.random.default_rng([seed, 0x5A17])
    for split in ("train", "val"):
        source = dataset.splits[split]
        source.labels = source.labels[rng.permutation(len(source.labels))]
    log.warning("data.shuffle_labels: train and val labels permuted; this run is a sanity-check model, "
                "not a classifier")


def train_classifier(cfg: RunConfig, run: RunDir, resume_state: dict[str, Any] | None, *, verbose: int,
                     callbacks: list[keras.callbacks.Callback] | None, started: float,
                     distribution: Distribution) -> TrainResult:
    """Training of the classifier tasks (single-label, multi-label; see :func:`train`, which prepares
    ``run`` and ``distribution``). The task (``TASKS[cfg.task]``) supplies the data, the head, the
    loss and metrics, and the evaluation; the two phases are the same for all of them."""
    task = task_named(cfg.task)
    resume = resume_state is not None
    dataset = task.load_data(cfg.data, seed=cfg.seed)
    class_names = list(dataset.class_names)
    num_classes = len(class_names)
    for split in ("train", "val", "test"):
        if split not in dataset.splits or len(dataset.splits[split]) == 0:
            raise ConfigError(f"dataset has no {split!r} split; set data.val_fraction/test_fraction above 0")
    if cfg.data.shuffle_labels:
        shuffle_labels(dataset, cfg.seed)
    log.info("%s %s; counts %s", task.output_kind, class_names,
             dataset.report.get("class_counts") or dataset.report.get("finding_counts"))

    backbone_name = cfg.model.backbone
    with distribution.scope():
        if resume_state is not None:
            model = keras.saving.load_model(run.checkpoints / resume_state["checkpoint"])
            restore_rng_state(model, resume_state.get("rng", []))
        else:
            model = task.build_model(cfg, num_classes)
    sequences = build_sequences(cfg, dataset, preprocess_function(backbone_name))
    train_data, val_data = sequences["train"], sequences["val"]
    if distribution.replicas > 1:
        train_data, val_data = EvenBatches(train_data, distribution.replicas), EvenBatches(val_data, distribution.replicas)
    weights = task.class_weight(cfg, dataset)
    objectives = task.objectives(cfg, dataset)
    pretrained = str(cfg.model.weights).lower() not in ("none", "")
    if cfg.train.phase1.unfreeze_blocks == 0 and not pretrained:
        log.warning("phase 1 freezes a backbone with random weights (model.weights: none); "
                    "set train.phase1.unfreeze_blocks=-1 to train it from scratch")

    frozen_top = None
    if cfg.train.frozen_cache and distribution.kind == "none":
        if cfg.data.augment == "none":
            frozen_top = _frozen_top(cfg, sequences, backbone_name, objectives)
        else:
            log.info("frozen layers are run every epoch: augmentation (%s) changes their input each time",
                     cfg.data.augment)
    with distribution.scope():
        model, state = run_phases(
            run, cfg, model, train_data, val_data,
            prepare_phase=lambda m, phase: _set_trainable(m, backbone_name, phase.unfreeze_blocks),
            compile_phase=lambda m, phase: _compile(m, cfg, phase, objectives, distribution.replicas),
            class_weight=weights, resume_state=resume_state, verbose=verbose, callbacks=callbacks,
            frozen_top=frozen_top,
        )
    _save_model(model, run.model_path)
    if (done := worker_result(distribution, run, state, started)) is not None:
        return done
    model = reload_outside(distribution, model, run.model_path)
    epochs_done = int(state.get("epochs_done", 0))
    previous_seconds = float(run.read_state().get("train_seconds", 0)) if run.state_path.is_file() else 0.0
    run.write_state({
        "task": task.name,
        "class_names": class_names,
        **task.run_facts(cfg, dataset),
        "backbone": backbone_name,
        "weights": cfg.model.weights,
        "image_size": list(cfg.data.image_size),
        "num_classes": num_classes,
        "best_epoch": state.get("best_epoch"),
        "best_monitor": {cfg.train.monitor: state.get("best")},
        "epochs_run": epochs_done,
        "phase_timing": state.get("phase_timing", {}),
        "resumed": resume,
        "distribution": distribution.describe(),
        "data_report": dataset.report,
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": round(previous_seconds + time.time() - started, 1),
    })
    metrics = task.evaluate_model(run.root, split="test", model=model, dataset=dataset, cfg=cfg)
    return TrainResult(run.root, metrics, epochs_done, time.time() - started)
