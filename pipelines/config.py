"""Typed run configuration, loaded from YAML, presets and ``key=value`` overrides.

A configuration is a tree of dataclasses. ``load_config`` accepts a preset name
(``xray-pneumonia``), a YAML path, or a dict, applies dotted overrides such as
``train.phase1.epochs=2``, expands ``${MEDLENS_DATA}`` and validates the result,
raising :class:`ConfigError` with the offending key on any problem.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Union, get_args, get_origin, get_type_hints

import yaml

from medlens.models import names as model_names
from medlens.pipelines import names
from medlens.pipelines.errors import ConfigError

log = logging.getLogger(__name__)

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
]

DEFAULT_DATA_ROOT = "../shared/data"


def data_root() -> Path:
    """Where shared datasets live: ``$MEDLENS_DATA`` or ``../shared/data``."""
    return Path(os.environ.get("MEDLENS_DATA") or DEFAULT_DATA_ROOT).expanduser().resolve()


# Default manifest column of each role of a classification manifest (data.columns overrides).
# ``findings`` (multi-label only): one column listing a row's findings separated by ``|``
# (NIH ChestX-ray14's ``Finding Labels``); off by default: one 0/1 column per finding.
MANIFEST_COLUMNS = {"image": "path", "label": "label", "patient_id": "patient_id", "split": "split",
                    "findings": ""}


@dataclass
class DataConfig:
    """Where the images come from and how they are split and fed.

    kind: ``folder`` (one sub-folder per class), ``csv`` (manifest with
    ``path,label[,patient_id][,split]``) or ``npz`` (MedMNIST layout).
    """

    kind: str = "folder"
    root: str = ""
    manifest: str = ""
    npz: str = ""
    # Manifest column per role (image, label, patient_id, split); a missing role uses the
    # default name in MANIFEST_COLUMNS. The same key as segmentation's data.columns.
    columns: dict[str, str] = field(default_factory=dict)
    class_names: list[str] = field(default_factory=list)
    image_size: list[int] = field(default_factory=lambda: [224, 224])
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    dedupe: bool = True
    augment: str = "none"
    class_weights: bool = False
    balanced_sampling: bool = False
    batch_size: int = 32
    cache: bool = True
    # The data-randomisation sanity check (medlens sanity --data): train and val labels permuted
    # (seeded), test labels kept, so the model can only memorise and its test metrics show chance.
    shuffle_labels: bool = False

    def column(self, role: str) -> str:
        """The manifest column holding ``role`` (``image``, ``label``, ``patient_id``, ``split``)."""
        # An empty name switches an optional role off (e.g. no patient grouping).
        return self.columns[role] if role in self.columns else MANIFEST_COLUMNS[role]


@dataclass
class ModelConfig:
    """Backbone and transfer head."""

    backbone: str = "vgg16"
    weights: str = "imagenet"
    pooling: str = "avg"
    dropout: float = 0.3
    dense_units: int = 128
    # BatchNorm of the pooled features before the head (see build_classifier).
    head_norm: str = "batchnorm"


@dataclass
class PhaseConfig:
    """One training phase: frozen-backbone feature extraction or fine-tuning.

    ``unfreeze_blocks``: 0 keeps the backbone frozen (feature extraction), N makes
    its top N blocks trainable (fine-tuning), -1 makes the whole backbone trainable
    (training from scratch, for ``weights: none``). BatchNorm layers always stay
    in inference mode.
    """

    epochs: int = 5
    learning_rate: float = 1e-3
    unfreeze_blocks: int = 0


@dataclass
class TrainConfig:
    """Two phases plus callbacks, and how many devices train (see :mod:`medlens.pipelines.distribute`)."""

    phase1: PhaseConfig = field(default_factory=lambda: PhaseConfig(5, 1e-3, 0))
    phase2: PhaseConfig = field(default_factory=lambda: PhaseConfig(5, 1e-5, 1))
    optimizer: str = "adam"
    monitor: str = "val_loss"
    early_stopping_patience: int = 5
    reduce_lr_patience: int = 2
    reduce_lr_factor: float = 0.5
    tensorboard: bool = False
    workers: int = 1
    distribution: str = "none"
    devices: int = 0
    scale_learning_rate: bool = False
    mixed_precision: str = "none"
    join_timeout: float = 600.0
    # Classifiers without augmentation: run frozen layers once per phase, train the top on
    # their cached activations (in memory up to frozen_cache_mb, else on disk).
    frozen_cache: bool = True
    frozen_cache_mb: int = 2048


@dataclass
class EvalConfig:
    """How the decision threshold is chosen on validation (binary tasks)."""

    threshold: str = "youden"
    target_sensitivity: float = 0.95


@dataclass
class RunConfig:
    """Everything one run needs."""

    name: str = "run"
    task: str = "classification"
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)


@dataclass
class FindingsDataConfig(DataConfig):
    """A multi-label data section: which findings, and what missing or uncertain labels mean.

    ``findings``: the finding names, each a 0/1 column of the manifest, or, with
    ``columns.findings`` naming a ``|``-separated column, the tokens of that column
    (default: every token found except ``no_finding``). Blank values are missing
    and left out of the loss and metrics; ``-1`` (uncertain, as CheXpert writes it)
    follows ``uncertain``: ``ignore`` (missing), ``ones`` or ``zeros``.
    ``positive_weights`` weighs each finding's positives by ``n_negative / n_positive``
    of the training split.
    """

    kind: str = "csv"
    findings: list[str] = field(default_factory=list)
    uncertain: str = "ignore"
    no_finding: str = "No Finding"
    positive_weights: bool = True


@dataclass
class MultiLabelRunConfig(RunConfig):
    """A multi-label run: a classifier with one sigmoid per finding."""

    task: str = "multilabel"
    data: FindingsDataConfig = field(default_factory=FindingsDataConfig)


@dataclass
class GradeEvalConfig(EvalConfig):
    """An ordinal run's evaluation: the referable operating point ``grade ≥ referable``.

    ``referable`` indexes ``data.class_names`` (DR: 2 = moderate or worse); its threshold on
    ``P(grade ≥ referable)`` is chosen on validation by ``threshold``.
    """

    referable: int = 2


@dataclass
class OrdinalRunConfig(RunConfig):
    """An ordinal run: ordered grades, a cumulative (rank-consistent) head."""

    task: str = "ordinal"
    evaluate: GradeEvalConfig = field(default_factory=GradeEvalConfig)


@dataclass
class SegDataConfig:
    """Where paired segmentation data comes from and how it is sampled.

    Attributes:
        kind: ``drive``, ``folder`` or ``csv`` (see the module docstring; ``folders``, the old
            spelling, still works with a notice).
        root: Dataset folder; other paths are relative to it.
        image_dir: ``folder``: image sub-folder (``root/image_dir`` or ``root/<split>/image_dir``).
        mask_dir: ``folder``: mask sub-folder; may equal ``image_dir`` when masks sit beside the
            images with a suffix (``case_1.tif`` / ``case_1_mask.tif``).
        fov_dir: ``folder``: optional FOV sub-folder (``""`` for none).
        manifest: ``csv``: manifest file (relative to ``root``); ``drive``: optional.
        columns: ``csv``: column names per role, e.g. ``{"patient_id": "patient"}``; roles are
            ``image``, ``mask``, ``fov``, ``patient_id``, ``split``, ``mask2``. Missing roles fall
            back to common names (``patient``, ``case``...).
        val_fraction: Share carved from train for validation (by patient / image).
        test_fraction: Share held out for test when the data gives no splits.
        mode: ``patch`` (random patches) or ``whole`` (whole images resized to ``image_size``).
        patch_size: Patch side in pixels (``patch`` mode).
        patches_per_image: Patches drawn from each image per epoch (``patch`` mode).
        foreground_bias: Probability that a patch is centred on a foreground pixel.
        image_size: ``[height, width]`` for ``whole`` mode.
        augment: Augmentation preset (``none``, ``xray``, ``tumour``, ``fundus``).
        batch_size: Patches or images per batch.
        num_classes: 1 for a binary mask and one sigmoid unit; C > 1 for class-index masks
            (one-hot ``y``).
        channels: 1 or 3 model input channels (3 for pretrained encoders).
    """

    kind: str = "folder"
    root: str = ""
    image_dir: str = "images"
    mask_dir: str = "masks"
    fov_dir: str = ""
    manifest: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    mode: str = "patch"
    patch_size: int = 64
    patches_per_image: int = 8
    foreground_bias: float = 0.5
    image_size: list[int] = field(default_factory=lambda: [256, 256])
    augment: str = "none"
    batch_size: int = 8
    num_classes: int = 1
    channels: int = 3

    def sequence_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`SegmentationSequence` taken from this config."""
        return {
            "mode": self.mode,
            "patch_size": self.patch_size,
            "patches_per_image": self.patches_per_image,
            "foreground_bias": self.foreground_bias,
            "image_size": tuple(self.image_size) if self.image_size else None,
            "batch_size": self.batch_size,
            "augment": self.augment,
            "num_classes": self.num_classes,
            "channels": self.channels,
        }


@dataclass
class SegModelConfig:
    """Segmentation network: a U-Net, alone or as the generator of a segmentation GAN.

    Attributes:
        architecture: ``unet`` (trained on the segmentation loss) or ``gan`` (the U-Net is the
            generator of a V-GAN-style :class:`~medlens.models.seggan.SegGAN`).
        encoder: ``none`` (plain U-Net), ``vgg16`` or ``resnet50`` (pretrained encoder).
        encoder_weights: ``imagenet``, ``none`` or a weights file, as for classifiers.
        depth, filters, batch_norm, dropout, level_dropout, upsampling: U-Net shape (see
            :func:`~medlens.models.unet.build_unet`).
        loss: ``bce``, ``dice``, ``bce_dice``, ``focal`` or ``tversky``.
        adversarial_weight: λ of the GAN generator loss ``seg_loss + λ·adversarial``.
        discriminator_filters, discriminator_depth: GAN discriminator shape.
        discriminator_learning_rate: Its Adam learning rate (the generator uses the phase's).
        init_weights: Start the U-Net (the GAN's generator) from these weights: a segmentation
            run directory, its ``model.keras``, or a ``.weights.h5`` of the same architecture
            (e.g. pretrain a U-Net, then fine-tune it adversarially as a GAN).
    """

    architecture: str = "unet"
    encoder: str = "none"
    encoder_weights: str = "none"
    depth: int = 4
    filters: int = 32
    batch_norm: bool = True
    dropout: float = 0.0
    level_dropout: float = 0.0
    upsampling: str = "transpose"
    loss: str = "bce_dice"
    adversarial_weight: float = 0.1
    discriminator_filters: int = 32
    discriminator_depth: int = 3
    discriminator_learning_rate: float = 2e-4
    init_weights: str = ""

    def multiple(self) -> int:
        """The network's size divisor: input sides must be multiples of it."""
        return {"vgg16": 16, "resnet50": 32}.get(self.encoder, 2**self.depth)


@dataclass
class SegEvalConfig:
    """How probability maps become masks, and how whole images are predicted.

    Attributes:
        threshold: A number, or ``best_dice``: the threshold maximising Dice on validation.
        tile: Sliding-window tile side (``0``: the training patch size; whole-image mode
            resizes to ``data.image_size`` instead).
        overlap: Fraction of a tile shared with its neighbour.
        batch_size: Tiles per forward pass.
        min_size: Remove predicted components smaller than this many pixels (0 keeps all).
    """

    threshold: str = "0.5"
    tile: int = 0
    overlap: float = 0.5
    batch_size: int = 16
    min_size: int = 0


def _seg_train_default() -> TrainConfig:
    return TrainConfig(phase1=PhaseConfig(20, 1e-3, -1), phase2=PhaseConfig(0, 1e-4, -1), monitor="val_dice",
                       early_stopping_patience=8, reduce_lr_patience=3)


@dataclass
class SegRunConfig:
    """Everything one segmentation run needs (``task: segmentation``)."""

    name: str = "segmentation"
    task: str = "segmentation"
    seed: int = 42
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: TrainConfig = field(default_factory=_seg_train_default)
    evaluate: SegEvalConfig = field(default_factory=SegEvalConfig)


def list_presets() -> list[str]:
    """Names of the presets shipped inside the package."""
    folder = resources.files("medlens.pipelines") / "presets"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name: str) -> dict[str, Any]:
    folder = resources.files("medlens.pipelines") / "presets"
    entry = folder / f"{name}.yaml"
    if not entry.is_file():
        raise ConfigError(
            f"unknown preset {name!r}; known presets: {', '.join(list_presets())}"
        )
    return yaml.safe_load(entry.read_text()) or {}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: a config must be a YAML mapping, got {type(loaded).__name__}")
    return loaded


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _apply_override(tree: dict[str, Any], override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        if "${MEDLENS_DATA}" in value:
            value = value.replace("${MEDLENS_DATA}", str(data_root()))
        return os.path.expandvars(value)
    if isinstance(value, list):
        return [_expand(v) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    return value


def _coerce(value: Any, hint: Any, key: str, default: Any = None) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping")
        return _build(hint, value, key, default)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} must be a list, got {value!r}")
        (item,) = get_args(hint) or (Any,)
        return [_coerce(v, item, key) for v in value]
    if origin is Union:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} must be true or false, got {value!r}")
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}")
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"config key {key!r} must be a number, got {value!r}") from None
        if hint is int:
            if number != int(number):
                raise ConfigError(f"config key {key!r} must be a whole number, got {value!r}")
            return int(number)
        return number
    if hint is str:
        return "" if value is None else str(value)
    return value


def _build(cls: type, values: dict[str, Any], prefix: str = "", default: Any = None) -> Any:
    """``cls`` from ``values``; missing keys come from ``default`` (the parent's default for this
    section, e.g. a segmentation run's training defaults), else from ``cls()``."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'; valid keys here: {', '.join(sorted(names))}"
        )
    default = default if default is not None else cls()
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, getattr(default, name))
    for f in dataclasses.fields(cls):
        if f.name not in kwargs:
            kwargs[f.name] = getattr(default, f.name)
    return cls(**kwargs)


# Allowed values per key, read from the registries (medlens.models.names, medlens.pipelines.names).
_TRAINING_CHOICES = {
    "train.optimizer": names.OPTIMIZERS,
    "train.distribution": names.DISTRIBUTIONS,
    "train.mixed_precision": names.MIXED_PRECISION,
}

_SEG_CHOICES = {
    "data.kind": names.SEG_DATA_KINDS,
    "data.mode": names.SEG_MODES,
    "data.augment": names.AUGMENT_PRESETS,
    "model.architecture": model_names.SEG_ARCHITECTURES,
    "model.encoder": model_names.ENCODER_NAMES,
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
    if model.encoder != "none" and data.channels != 3:
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
    if cfg.evaluate.referable < 1 or (grades and cfg.evaluate.referable >= grades):
        raise ConfigError(f"config key 'evaluate.referable' is {cfg.evaluate.referable}; it must be a grade index in "
                          f"1..{(grades - 1) if grades else 'K-1'}")
    if cfg.data.balanced_sampling and cfg.data.class_weights:
        raise ConfigError("choose one of data.balanced_sampling and data.class_weights")


def load_config(
    source: str | Path | dict[str, Any] | None = None,
    overrides: list[str] | None = None,
) -> RunConfig | SegRunConfig:
    """Build a validated :class:`RunConfig`, or :class:`SegRunConfig` for ``task: segmentation``.

    Args:
        source: a preset name, a YAML file path, a dict, or None for defaults.
            A YAML file may name ``preset: NAME`` to start from a preset.
        overrides: ``key.sub=value`` strings; values are parsed as YAML.

    Raises:
        ConfigError: unknown preset, unreadable file, unknown key, bad value.

    Example:
        >>> cfg = load_config("breast-ultrasound", ["train.phase1.epochs=1"])
        >>> cfg.train.phase1.epochs
        1
    """
    tree: dict[str, Any]
    if source is None:
        tree = {}
    elif isinstance(source, dict):
        tree = dict(source)
    else:
        path = Path(source)
        if path.suffix in (".yaml", ".yml") or path.exists():
            tree = _read_yaml(path)
        else:
            tree = _read_preset(str(source))
    if "preset" in tree:
        tree = _deep_merge(_read_preset(str(tree.pop("preset"))), tree)
    for override in overrides or []:
        _apply_override(tree, override)
    _migrate_spellings(tree)
    from medlens.pipelines.tasks import DEFAULT_TASK, task_named

    return task_named(tree.get("task", DEFAULT_TASK)).build_config(tree)


# Old spellings that keep working, each with a one-line notice naming the key that replaces it.
_RENAMED_DATA_KEYS = {"path_column": "image", "label_column": "label", "patient_column": "patient_id",
                      "split_column": "split"}
_RENAMED_VALUES = {("data", "kind", "folders"): "folder"}


def _migrate_spellings(tree: dict[str, Any]) -> None:
    """Rewrite deprecated keys and values of a config tree in place, with a notice for each."""
    data = tree.get("data")
    if not isinstance(data, dict):
        return
    for old, role in _RENAMED_DATA_KEYS.items():
        if old in data:
            value = data.pop(old)
            columns = data.setdefault("columns", {}) or {}
            data["columns"] = columns
            columns.setdefault(role, value)
            log.warning("config key 'data.%s' is deprecated; use 'data.columns.%s' (set to %r)", old, role, value)
    for (section, key, old), new in _RENAMED_VALUES.items():
        node = tree.get(section)
        if isinstance(node, dict) and node.get(key) == old:
            node[key] = new
            log.warning("config value %s.%s: %s is deprecated; use %s", section, key, old, new)


def build_and_validate(cls: type, tree: dict[str, Any]) -> Any:
    """``cls`` (a task's config dataclass) from a config tree, ``${VAR}`` expanded and validated."""
    cfg = _build(cls, _expand(tree))
    _VALIDATORS[cls](cfg)
    return cfg


_VALIDATORS = {RunConfig: _validate, SegRunConfig: _validate_seg, MultiLabelRunConfig: _validate_multilabel,
               OrdinalRunConfig: _validate_ordinal}


def config_to_dict(cfg: RunConfig | SegRunConfig) -> dict[str, Any]:
    """Plain-dict form, as written to ``config.yaml`` in a run directory."""
    return dataclasses.asdict(cfg)
