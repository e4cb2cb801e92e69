"""The names the pipelines accept, in one light module: config validation reads them.

The modules that act on these names (heavy: albumentations, TensorFlow, scikit-learn) import
them from here, so ``load_config`` validates against the same tuples without importing them.
"""

from __future__ import annotations

__all__ = [
    "AUGMENT_PRESETS",
    "CLASSIFICATION_DATA_KINDS",
    "SEG_DATA_KINDS",
    "SEG_MODES",
    "SEG_TTA",
    "OPTIMIZERS",
    "DISTRIBUTIONS",
    "MIXED_PRECISION",
    "THRESHOLD_METHODS",
    "GRADE_CUTS",
]

#: Augmentation presets per modality (:func:`medlens.pipelines.augment.build_augmentation`).
AUGMENT_PRESETS: tuple[str, ...] = ("none", "xray", "tumour", "fundus")
#: Layouts of labelled image data (:func:`medlens.pipelines.data.load_dataset`).
CLASSIFICATION_DATA_KINDS: tuple[str, ...] = ("folder", "csv", "npz")
#: Layouts of image/mask data (:func:`medlens.pipelines.data.load_seg_dataset`).
SEG_DATA_KINDS: tuple[str, ...] = ("drive", "folder", "csv")
#: How segmentation batches are cut: random patches or whole resized images.
SEG_MODES: tuple[str, ...] = ("patch", "whole")
#: Test-time augmentation of a segmentation run (:class:`medlens.pipelines.seg_model.SegModel`).
SEG_TTA: tuple[str, ...] = ("none", "flips")
#: Optimizers of both training phases.
OPTIMIZERS: tuple[str, ...] = ("adam", "sgd", "adamw")
#: ``train.distribution`` (:func:`medlens.pipelines.distribute.setup_distribution`).
DISTRIBUTIONS: tuple[str, ...] = ("none", "mirrored", "multi_worker")
#: ``train.mixed_precision`` (Keras dtype policies).
MIXED_PRECISION: tuple[str, ...] = ("none", "mixed_float16", "mixed_bfloat16")
#: How a binary classifier's threshold is chosen on validation (a number also works).
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "sensitivity", "0.5")
#: How an ordinal run turns ``P(grade ≥ k)`` into a grade: the 0.5 rule, or cut points on the expected
#: grade chosen on validation to maximise accuracy or quadratic weighted kappa.
GRADE_CUTS: tuple[str, ...] = ("0.5", "accuracy", "qwk")
