"""Validation of a built configuration: allowed values from the registries, then each task's rules.

Every problem is one :class:`~medlens.pipelines.errors.ConfigError` naming the key.
"""

from __future__ import annotations

from typing import Any

from medlens.models import names as model_names
from medlens.pipelines import names
from medlens.pipelines.config.schema import (
    MultiLabelRunConfig,
    OrdinalRunConfig,
    RunConfig,
    SegRunConfig,
    TrainConfig,
    config_to_dict,
)
from medlens.pipelines.errors import ConfigError

__all__ = ["VALIDATORS"]


# Allowed values per key, read from the registries (medlens.models.names, medlens.pipelines.names).
_TRAINING_CHOICES = {
    "train.optimizer": names.OPTIMIZERS,
    "train.distribution": names.DISTRIBUTIONS,
    "train.mixed_precision": names.MIXED_PRECISION,
}

_SEG_CHOICES = {
    "data.kind": names.SEG_DATA_KINDS,
    "data.mode": names.SEG_MODES,
    "evaluate.tta": names.SEG_TTA,
    "data.augment": names.AUGMENT_PRESETS,
    "model.architecture": model_names.SEG_ARCHITECTURES,
    "model.backbone": model_names.ENCODER_NAMES,
    "model.upsampling": model_names.UPSAMPLING,
    "model.loss": model_names.LOSSES,
    **_TRAINING_CHOICES,
}

_CHOICES = {
    "data.kind": names.CLASSIFICATION_DATA_KINDS,
    "data.augment": names.AUGMENT_PRESETS,
    "model.pooling": model_names.POOLINGS,
    "model.head_norm": model_names.HEAD_NORMS,
    "evaluate.threshold": names.THRESHOLD_METHODS,
    **_TRAINING_CHOICES,
}


def _check_choices(cfg: Any, choices: dict[str, tuple[str, ...]]) -> None:
    values = config_to_dict(cfg)
    for dotted, allowed in choices.items():
        node: Any = values
        for part in dotted.split("."):
            node = node[part]
        if str(node) not in allowed:
            raise ConfigError(f"config key {dotted!r} is {node!r}; choose one of {', '.join(allowed)}")


def _check_train(train: TrainConfig) -> None:
    if train.phase1.epochs < 0 or train.phase2.epochs < 0:
        raise ConfigError("epochs must be >= 0")
    if train.phase1.epochs + train.phase2.epochs == 0:
        raise ConfigError("train.phase1.epochs + train.phase2.epochs must be at least 1")
    if isinstance(train.workers, bool) or not isinstance(train.workers, int) or train.workers < 1:
        raise ConfigError(f"config key 'train.workers' must be a whole number of loading workers, 1 or more, "
                          f"got {train.workers!r}")
    if train.join_timeout <= 0:
        raise ConfigError(f"config key 'train.join_timeout' must be a number of seconds above 0, got {train.join_timeout}")


def _validate_seg(cfg: SegRunConfig) -> None:
    _check_choices(cfg, _SEG_CHOICES)
    _check_train(cfg.train)
    data, model = cfg.data, cfg.model
    multiple = model.multiple()
    if data.mode == "patch" and (data.patch_size < multiple or data.patch_size % multiple):
        raise ConfigError(f"config key 'data.patch_size' must be a multiple of {multiple} (the network's "
                          f"downsampling), got {data.patch_size}")
    if data.mode == "whole" and (len(data.image_size) != 2 or any(s % multiple or s < multiple for s in data.image_size)):
        raise ConfigError(f"config key 'data.image_size' must be [height, width], multiples of {multiple}, "
                          f"got {data.image_size}")
    if cfg.evaluate.tile and cfg.evaluate.tile % multiple:
        raise ConfigError(f"config key 'evaluate.tile' must be a multiple of {multiple}, got {cfg.evaluate.tile}")
    if not 0 <= cfg.evaluate.overlap < 1:
        raise ConfigError("config key 'evaluate.overlap' must be in [0, 1)")
    if model.backbone != "none" and data.channels != 3:
        raise ConfigError("a pretrained encoder needs data.channels=3")
    if data.batch_size < 1 or data.num_classes < 1:
        raise ConfigError("config keys 'data.batch_size' and 'data.num_classes' must be at least 1")
    if cfg.evaluate.threshold != "best_dice":
        try:
            value = float(cfg.evaluate.threshold)
        except ValueError:
            raise ConfigError(f"config key 'evaluate.threshold' must be a number or best_dice, "
                              f"got {cfg.evaluate.threshold!r}") from None
        if not 0 < value < 1:
            raise ConfigError(f"config key 'evaluate.threshold' must be in (0, 1), got {value}")


def _validate(cfg: RunConfig) -> None:
    _check_choices(cfg, _CHOICES)
    if len(cfg.data.image_size) != 2 or min(cfg.data.image_size) < 8:
        raise ConfigError(f"config key 'data.image_size' must be [height, width] >= 8, got {cfg.data.image_size}")
    if not 0 <= cfg.data.val_fraction < 1 or not 0 <= cfg.data.test_fraction < 1:
        raise ConfigError("config keys 'data.val_fraction' and 'data.test_fraction' must be in [0, 1)")
    if cfg.data.batch_size < 1:
        raise ConfigError("config key 'data.batch_size' must be at least 1")
    _check_train(cfg.train)


def _validate_multilabel(cfg: MultiLabelRunConfig) -> None:
    _validate(cfg)
    data = cfg.data
    if data.kind not in ("csv", "npz"):
        raise ConfigError(f"config key 'data.kind' is {data.kind!r}; a multi-label run reads a csv manifest or an npz")
    if data.uncertain not in ("ignore", "ones", "zeros"):
        raise ConfigError(f"config key 'data.uncertain' is {data.uncertain!r}; choose one of ignore, ones, zeros")
    if data.class_weights or data.balanced_sampling:
        raise ConfigError("data.class_weights and data.balanced_sampling are for single-label runs; "
                          "a multi-label run balances each finding with data.positive_weights")
    if len(set(data.findings)) != len(data.findings):
        raise ConfigError(f"config key 'data.findings' names a finding twice: {data.findings}")


def _validate_ordinal(cfg: OrdinalRunConfig) -> None:
    _validate(cfg)
    grades = len(cfg.data.class_names)
    if grades and grades < 3:
        raise ConfigError(f"config key 'data.class_names' names {grades} grades; an ordinal run needs at least 3 "
                          "(use task: classification for two)")
    _check_choices(cfg, {"evaluate.grade_cuts": names.GRADE_CUTS})
    if cfg.evaluate.referable < 1 or (grades and cfg.evaluate.referable >= grades):
        raise ConfigError(f"config key 'evaluate.referable' is {cfg.evaluate.referable}; it must be a grade index in "
                          f"1..{(grades - 1) if grades else 'K-1'}")
    if cfg.data.balanced_sampling and cfg.data.class_weights:
        raise ConfigError("choose one of data.balanced_sampling and data.class_weights")




VALIDATORS = {RunConfig: _validate, SegRunConfig: _validate_seg, MultiLabelRunConfig: _validate_multilabel,
               OrdinalRunConfig: _validate_ordinal}

