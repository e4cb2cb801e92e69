"""Typed run configuration, loaded from YAML, presets and ``key=value`` overrides.

A configuration is a tree of dataclasses (:mod:`~medlens.pipelines.config.schema`).
``load_config`` (:mod:`~medlens.pipelines.config.loading`) accepts a preset name
(``xray-pneumonia``), a YAML path, or a dict, applies dotted overrides such as
``train.phase1.epochs=2``, expands ``${MEDLENS_DATA}`` and validates the result
(:mod:`~medlens.pipelines.config.validation`), raising :class:`ConfigError` with the
offending key on any problem. Everything public is importable from here.
"""

from __future__ import annotations

from medlens.pipelines.config.loading import build_and_validate, list_presets, load_config
from medlens.pipelines.config.schema import (
    DEFAULT_DATA_ROOT,
    MANIFEST_COLUMNS,
    DataConfig,
    EvalConfig,
    FindingsDataConfig,
    GradeEvalConfig,
    ModelConfig,
    MultiLabelRunConfig,
    OrdinalRunConfig,
    PhaseConfig,
    RunConfig,
    SegDataConfig,
    SegEvalConfig,
    SegModelConfig,
    SegRunConfig,
    TrainConfig,
    config_to_dict,
    data_root,
)

__all__ = [
    "DataConfig",
    "ModelConfig",
    "PhaseConfig",
    "TrainConfig",
    "EvalConfig",
    "RunConfig",
    "FindingsDataConfig",
    "MultiLabelRunConfig",
    "GradeEvalConfig",
    "OrdinalRunConfig",
    "SegDataConfig",
    "SegModelConfig",
    "SegEvalConfig",
    "SegRunConfig",
    "load_config",
    "list_presets",
    "data_root",
    "config_to_dict",
    "build_and_validate",
    "DEFAULT_DATA_ROOT",
    "MANIFEST_COLUMNS",
]
