"""The configuration schema: one dataclass tree per task, with their defaults.

``DataConfig``/``ModelConfig``/``TrainConfig``/``EvalConfig`` make a classifier's
:class:`RunConfig`; the multi-label and ordinal tasks extend it; segmentation has
:class:`SegRunConfig`. :func:`config_to_dict` is the plain form written to a run's
``config.yaml``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_DATA_ROOT", "MANIFEST_COLUMNS", "data_root", "config_to_dict",
    "DataConfig", "ModelConfig", "PhaseConfig", "TrainConfig", "EvalConfig", "RunConfig",
    "FindingsDataConfig", "MultiLabelRunConfig", "GradeEvalConfig", "OrdinalRunConfig",
    "SegDataConfig", "SegModelConfig", "SegEvalConfig", "SegRunConfig",
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


# Shares carved for validation and test when the data gives no such split: one default for every task
# (segmentation's were 0.2 / 0.2 before medlens had one data stack; set them to keep earlier splits).
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15


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
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
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
    # Batches loaded (read, resize, augment, preprocess) in parallel with training: threads by
    # default (decoding and OpenCV release the GIL), processes with use_multiprocessing.
    workers: int = 1
    use_multiprocessing: bool = False
    distribution: str = "none"
    devices: int = 0
    scale_learning_rate: bool = False
    mixed_precision: str = "none"
    join_timeout: float = 600.0
    # Classifiers without augmentation: run frozen layers once per phase, train the top on
    # their cached activations (in memory up to frozen_cache_mb, else on disk).
    frozen_cache: bool = True
    frozen_cache_mb: int = 2048

    def loader_kwargs(self) -> dict[str, Any]:
        """``PyDataset`` arguments of the training and validation batches."""
        return {"workers": self.workers, "use_multiprocessing": self.use_multiprocessing}


@dataclass
class EvalConfig:
    """How the decision threshold is chosen on validation (binary tasks)."""

    threshold: str = "youden"
    target_sensitivity: float = 0.95


@dataclass
class RunConfig:
    """Everything one run needs: its name, task and seed, and one section each for data, model,
    training and evaluation (a classifier's here; each task's config subclasses this one)."""

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

    ``grade_cuts``: ``0.5`` predicts the number of ``P(grade ≥ k)`` that reach 0.5; ``qwk`` or
    ``accuracy`` choose ``K-1`` cut points on the expected grade ``Σ P(grade ≥ k)`` that maximise
    that score on validation (the probabilities, the AUCs and the referable call do not change).
    """

    referable: int = 2
    grade_cuts: str = "0.5"


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
        val_fraction: Share carved from train for validation (by patient / image); 0.15 as for
            every task (``DEFAULT_VAL_FRACTION``; segmentation used 0.2 before the data stacks merged).
        test_fraction: Share held out for test when the data gives no splits (0.15, formerly 0.2).
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
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
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
        backbone: the U-Net's encoder: ``none`` (plain U-Net), ``vgg16`` or ``resnet50`` (a
            pretrained backbone, as ``model.backbone`` of a classifier; the old key
            ``model.encoder`` still works, with a notice).
        weights: the backbone's weights: ``imagenet``, ``none`` or a weights file, as
            ``model.weights`` of a classifier (formerly ``model.encoder_weights``).
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
    backbone: str = "none"
    weights: str = "none"
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
        return {"vgg16": 16, "resnet50": 32}.get(self.backbone, 2**self.depth)


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
        tta: Test-time augmentation: ``none``, or ``flips`` (each batch also predicted flipped
            left-right, up-down and both, flipped back and averaged: 4× the inference cost).
            Recorded in ``run.json``; validation, test and every later ``segment`` use it.
    """

    threshold: str = "0.5"
    tile: int = 0
    overlap: float = 0.5
    batch_size: int = 16
    min_size: int = 0
    tta: str = "none"


def _seg_train_default() -> TrainConfig:
    return TrainConfig(phase1=PhaseConfig(20, 1e-3, -1), phase2=PhaseConfig(0, 1e-4, -1), monitor="val_dice",
                       early_stopping_patience=8, reduce_lr_patience=3)


@dataclass
class SegRunConfig(RunConfig):
    """Everything one segmentation run needs (``task: segmentation``): the run's keys, its own sections."""

    name: str = "segmentation"
    task: str = "segmentation"
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    train: TrainConfig = field(default_factory=_seg_train_default)
    evaluate: SegEvalConfig = field(default_factory=SegEvalConfig)


def config_to_dict(cfg: RunConfig | SegRunConfig) -> dict[str, Any]:
    """Plain-dict form, as written to ``config.yaml`` in a run directory."""
    return dataclasses.asdict(cfg)
