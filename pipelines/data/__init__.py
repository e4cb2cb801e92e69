"""One data stack for every task: samples, manifests, splits and Keras batches.

- :mod:`~medlens.pipelines.data.sources`: labelled images loaded on demand (:class:`ImageSource`,
  :class:`FileSource`, :class:`ArraySource`) and the per-split :class:`Dataset`;
- :mod:`~medlens.pipelines.data.pairs`: an image with its mask (:class:`SegSample`), paired by
  file name and read together;
- :mod:`~medlens.pipelines.data.manifest`: CSV manifests, read one way;
- :mod:`~medlens.pipelines.data.splits`: one splitting rule (given splits kept, missing ones
  stratified and grouped by patient, duplicates dropped, patients shared by given splits reported);
- :mod:`~medlens.pipelines.data.classification`, :mod:`~medlens.pipelines.data.findings` and
  :mod:`~medlens.pipelines.data.segmentation`: the loaders (folder trees, manifests, npz, DRIVE);
- :mod:`~medlens.pipelines.data.images`: resizing and channel conversion shared by training and
  inference;
- :mod:`~medlens.pipelines.data.sequence` and :mod:`~medlens.pipelines.data.seg_sequence`: the
  seeded, bounded-cache ``PyDataset`` base and the batches each kind of target needs.

Everything public is importable from ``medlens.pipelines.data``.
"""

from __future__ import annotations

from medlens.pipelines.config import SegDataConfig
from medlens.pipelines.data.classification import class_counts, class_weights, load_dataset, read_npz_splits
from medlens.pipelines.data.findings import finding_counts, load_findings, parse_finding_value
from medlens.pipelines.data.images import prepare_image, resize_image, to_model_channels
from medlens.pipelines.data.pairs import (
    DEFAULT_MASK_SUFFIXES,
    SegSample,
    check_sizes,
    load_mask,
    load_pair,
    pair_folders,
)
from medlens.pipelines.data.seg_sequence import SegmentationSequence
from medlens.pipelines.data.segmentation import SEG_LAYOUTS, SegDataset, load_seg_dataset
from medlens.pipelines.data.sequence import BoundedCache, ClassificationSequence, SeededSequence
from medlens.pipelines.data.sources import (
    ArraySource,
    Dataset,
    FileSource,
    ImageSource,
    label_array,
    same_labels,
)
from medlens.pipelines.data.splits import SPLITS, assign_splits, check_patients, make_splits, normalise_split

__all__ = [
    "SPLITS",
    "SEG_LAYOUTS",
    "DEFAULT_MASK_SUFFIXES",
    "ImageSource",
    "FileSource",
    "ArraySource",
    "Dataset",
    "label_array",
    "same_labels",
    "load_dataset",
    "read_npz_splits",
    "load_findings",
    "finding_counts",
    "parse_finding_value",
    "make_splits",
    "assign_splits",
    "check_patients",
    "normalise_split",
    "class_counts",
    "class_weights",
    "prepare_image",
    "resize_image",
    "to_model_channels",
    "SegSample",
    "SegDataConfig",
    "SegDataset",
    "pair_folders",
    "load_seg_dataset",
    "load_mask",
    "load_pair",
    "check_sizes",
    "BoundedCache",
    "SeededSequence",
    "ClassificationSequence",
    "SegmentationSequence",
]
