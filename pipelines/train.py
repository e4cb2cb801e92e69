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
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.config import PhaseConfig, RunConfig, SegRunConfig, config_to_dict, load_config
from medlens.pipelines.data import ClassificationSequence, Dataset
from medlens.pipelines.distribute import Distribution, cluster_failure, setup_distribution, worker_role
from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.frozen import FeatureSequence, cached_features, split_frozen
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.scale import source_scale
from medlens.pipelines.tasks import task_named
from medlens.pipelines.training.callbacks import restore_rng_state, save_model
from medlens.pipelines.training.phases import (
    TrainResult,
    compile_phase,
    reload_outside,
    replica_batches,
    run_phases,
    set_trainable,
    worker_result,
)

__all__ = ["train", "train_classifier", "TrainResult", "set_determinism"]

log = logging.getLogger(__name__)


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
            **(cfg.train.loader_kwargs() if split in ("train", "val") else {}),
        )
    return sequences




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
            distribution.abandon()
            raise failure from None
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    if scratch is not None:
        return TrainResult(Path(run_dir), {}, result.epochs_run, result.seconds)
    return result




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
        compile_phase(split.top, cfg, phase, objectives, optimizer=model.optimizer)
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
    train_data, val_data = replica_batches(distribution, train_data, val_data)
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
            prepare_phase=lambda m, phase: set_trainable(m, backbone_name, phase.unfreeze_blocks),
            compile_phase=lambda m, phase: compile_phase(m, cfg, phase, objectives, distribution.replicas),
            class_weight=weights, resume_state=resume_state, verbose=verbose, callbacks=callbacks,
            frozen_top=frozen_top,
        )
    save_model(model, run.model_path)
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
        "input_scale": source_scale(dataset.splits["train"]),  # for predict --match-scale
        "keras_backend": keras.backend.backend(),
        "keras_version": keras.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "train_seconds": round(previous_seconds + time.time() - started, 1),
    })
    metrics = task.evaluate_model(run.root, split="test", model=model, dataset=dataset, cfg=cfg)
    return TrainResult(run.root, metrics, epochs_done, time.time() - started)
