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
from pathlib import Path
from typing import Any

import keras

from medlens.models.losses import get_loss
from medlens.models.metrics import segmentation_metrics
from medlens.models.seggan import SegGAN, build_discriminator
from medlens.models.unet import build_unet, freeze_encoder, unfreeze_encoder
from medlens.pipelines.config import SegRunConfig
from medlens.pipelines.data import (
    SegmentationSequence,
    load_seg_dataset,
)
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.segmentation_run import (
    choose_seg_threshold,
    evaluate_segmentation,
    pooled_maps,
    split_maps,
    write_seg_model_card,
)
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.scale import source_scale
from medlens.pipelines.seg_model import SegModel, encoder_preprocess

__all__ = ["train_segmentation"]

log = logging.getLogger(__name__)


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
        TrainResult,
        build_optimizer,
        reload_outside,
        replica_batches,
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
    preprocess = encoder_preprocess(cfg.model.backbone)
    kwargs = {**cfg.data.sequence_kwargs(), **cfg.train.loader_kwargs()}
    train_data = SegmentationSequence(dataset.splits["train"], **kwargs, preprocess=preprocess, seed=cfg.seed)
    kwargs.update(augment="none")
    val_data = SegmentationSequence(dataset.splits["val"], **kwargs, preprocess=preprocess, seed=cfg.seed + 1,
                                    shuffle=False)
    train_data, val_data = replica_batches(distribution, train_data, val_data)
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
        "tta": cfg.evaluate.tta,
        "threshold": 0.5,
        "input_scale": source_scale([sample.image_path for sample in dataset.splits["train"]]),
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
        probs, truths = pooled_maps(split_maps(seg_model, dataset.splits["val"]))
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


