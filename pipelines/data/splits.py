"""Train/val/test splits for every task: given ones kept, missing ones made, patients never shared.

One rule for classification, multi-label, ordinal and segmentation data:

- splits the data gives (split folders, a ``split`` column) are kept; a missing validation
  split is carved from train, and a missing test split too when only train is given
  (:func:`assign_splits`);
- splits that have to be made are stratified by class (or finding) and grouped by patient,
  seeded (:func:`make_splits`);
- exact duplicate files are dropped before splitting, the copy in test (then val) kept
  (:func:`dedupe`);
- no split made here puts a patient in two splits; patient ids that given splits share are
  reported (:func:`check_patients`: a warning naming them, counts in the data report).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from medlens.pipelines.data.sources import ImageSource, label_array, same_labels
from medlens.pipelines.errors import ConfigError, DatasetError

__all__ = [
    "SPLITS",
    "SPLIT_ALIASES",
    "normalise_split",
    "make_splits",
    "dedupe",
    "assign_splits",
    "check_patients",
    "split_pool",
]

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Names a folder or a ``split`` cell may use for each split.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}

# When the same file is in two given splits, the copy in the earlier split here is kept,
# so the test set stays intact and train loses the leaked copy.
_SPLIT_PRIORITY = {"test": 0, "val": 1, "train": 2}

_NO_DUPLICATES = {"dropped": 0, "across_splits": 0, "label_conflicts": 0}


def normalise_split(value: str, where: str) -> str:
    """``train``, ``val`` or ``test`` for any of :data:`SPLIT_ALIASES` (any case); ``DatasetError`` naming ``where`` else."""
    split = SPLIT_ALIASES.get(str(value).strip().lower())
    if split is None:
        raise DatasetError(f"{where}: unknown split {value!r}; use train, val or test")
    return split


def make_splits(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> dict[str, np.ndarray]:
    """Split sample indices into train/val/test, stratified by class and grouped by patient.

    Groups (patients) are visited in a seeded random order, largest first, and each goes
    whole to the split that still needs its classes most (relative to that split's target
    count per class). No group ends up in two splits; class proportions stay close to the
    overall ones. Without groups every sample is its own group. Multi-label samples
    (``(N, F)`` labels) are stratified by each finding's positives and by the images
    with none.

    Args:
        labels: class index per sample, or ``(N, F)`` finding labels (NaN missing).
        groups: patient id per sample, or ``None``.
        val_fraction: share of samples for validation, in ``[0, 1)``.
        test_fraction: share of samples for test, in ``[0, 1)``.
        seed: the same seed always gives the same split.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, sorted ``int64`` index arrays.

    Raises:
        ConfigError: fractions out of range or summing to 1 or more.

    Example:
        >>> parts = make_splits([0, 0, 1, 1, 0, 1, 0, 1, 0, 1], None, 0.2, 0.2, seed=0)
        >>> sorted(len(v) for v in parts.values())
        [2, 2, 6]
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in [0, 1) and sum below 1"
        )
    labels = label_array(labels)
    count = len(labels)
    if groups is None:
        group_ids = np.arange(count)
    else:
        if len(groups) != count:
            raise ValueError(f"{count} labels but {len(groups)} groups")
        _, group_ids = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    if labels.ndim == 2:
        present = np.nan_to_num(labels, nan=0.0) >= 0.5
        per_sample = np.concatenate([present, ~present.any(axis=1, keepdims=True)], axis=1).astype(np.float64)
    else:
        classes, class_index = np.unique(labels, return_inverse=True)
        per_sample = np.eye(len(classes), dtype=np.float64)[class_index]
    num_groups = int(group_ids.max()) + 1 if count else 0

    # Per-group class count matrix (groups × classes).
    per_group = np.zeros((num_groups, per_sample.shape[1]), dtype=np.float64)
    np.add.at(per_group, group_ids, per_sample)

    fractions = np.array([1.0 - val_fraction - test_fraction, val_fraction, test_fraction])
    totals = per_group.sum(axis=0)
    targets = fractions[:, None] * totals[None, :]
    filled = np.zeros_like(targets)

    rng = np.random.default_rng(seed)
    order = rng.permutation(num_groups)
    sizes = per_group.sum(axis=1)
    order = order[np.argsort(-sizes[order], kind="stable")]
    assignment = np.zeros(num_groups, dtype=np.int64)
    for group in order:
        need = per_group[group]
        with np.errstate(divide="ignore", invalid="ignore"):
            remaining = np.where(targets > 0, (targets - filled) / targets, -np.inf)
        scores = np.where(need > 0, remaining, 0.0).sum(axis=1) / max(need.sum(), 1.0)
        scores[fractions <= 0] = -np.inf
        best = int(np.argmax(scores))
        assignment[group] = best
        filled[best] += need

    sample_split = assignment[group_ids] if count else np.zeros(0, dtype=np.int64)
    return {name: np.flatnonzero(sample_split == k).astype(np.int64) for k, name in enumerate(SPLITS)}



def dedupe(source: ImageSource, splits: Sequence[str] | None) -> tuple[np.ndarray, dict[str, int]]:
    """Indices to keep (first copy per content hash; test > val > train across splits) and counts."""
    count = len(source)
    order = list(range(count))
    if splits is not None:
        order.sort(key=lambda i: (_SPLIT_PRIORITY[splits[i]], i))
    seen: dict[str, int] = {}
    keep: list[int] = []
    dropped = across = conflicts = 0
    for i in order:
        key = source.content_hash(i)
        first = seen.get(key)
        if first is None:
            seen[key] = i
            keep.append(i)
            continue
        dropped += 1
        if splits is not None and splits[first] != splits[i]:
            across += 1
        if not same_labels(source.labels[first], source.labels[i]):
            conflicts += 1
            logger.warning("%s duplicates %s but has a different label", source.ids[i], source.ids[first])
    stats = {"dropped": dropped, "across_splits": across, "label_conflicts": conflicts}
    return np.asarray(sorted(keep), dtype=np.int64), stats


def assign_splits(
    labels: Sequence[int] | np.ndarray,
    groups: Sequence[str] | None,
    given: Sequence[str | None] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], str]:
    """Sample indices per split, and where the splits came from.

    Args:
        labels: per sample, for stratification (zeros when there is nothing to stratify by).
        groups: patient per sample, or ``None``.
        given: split per sample as the data gives it, or ``None`` when the data gives none.
        val_fraction: share for validation (carved from train when the data gives no val split).
        test_fraction: share for test when the data gives no test split and no val split.
        seed: seed of every split made here.

    Returns:
        ``({"train": idx, "val": idx, "test": idx}, origin)``; ``origin`` is ``"made"``,
        ``"given"`` or says what was carved from train.

    Raises:
        DatasetError: some samples have a split and others not, or no sample is in train.
    """
    labels = label_array(labels)
    if given is None or all(split is None for split in given):
        return make_splits(labels, groups, val_fraction, test_fraction, seed), "made"
    unsplit = sum(split is None for split in given)
    if unsplit:
        raise DatasetError(f"{unsplit} sample(s) have no split while others do; give every sample a split")
    given_array = np.asarray(given)
    indices = {name: np.flatnonzero(given_array == name) for name in SPLITS}
    present = {name for name, idx in indices.items() if len(idx)}
    if "train" not in present:
        raise DatasetError(f"the given splits ({', '.join(sorted(present))}) have no train split")
    if present == set(SPLITS):
        return indices, "given"
    train = indices["train"]
    sub_groups = None if groups is None else [groups[i] for i in train]
    if "test" in present:
        carved = make_splits(labels[train], sub_groups, val_fraction, 0.0, seed)
        indices["train"] = train[carved["train"]]
        indices["val"] = np.sort(np.concatenate([indices["val"], train[carved["val"]]])).astype(np.int64)
        return indices, "given train/test, val carved from train"
    carved = make_splits(labels[train], sub_groups, val_fraction, test_fraction, seed)
    extra_val = indices["val"]
    indices = {name: train[idx] for name, idx in carved.items()}
    if len(extra_val):
        indices["val"] = np.sort(np.concatenate([indices["val"], extra_val])).astype(np.int64)
    return indices, "given train, val/test carved from train"


def check_patients(
    groups: Mapping[str, Sequence[str | None] | None], where: str
) -> tuple[dict[str, int | None], dict[str, int]]:
    """Patients per split, and the patient ids two splits share (logged as a warning naming them).

    Splits made here never share a patient. Splits the data gives may: their ids can be local to
    a split (the Kermany chest X-ray README says so of its ``personN`` ids), so a shared id is
    reported, not refused; the run's data report keeps the counts.

    Args:
        groups: per split, the patient of each sample (``None`` for an unknown one), or ``None``
            when the data has no patient ids.
        where: the data, as the warning names it.

    Returns:
        ``({split: patients or None}, {"train/test": shared ids, ...})`` (pairs that share none left out).

    Example:
        >>> check_patients({"train": ["a", "b"], "val": ["c"], "test": None}, "data")
        ({'train': 2, 'val': 1, 'test': None}, {})
    """
    ids = {name: None if values is None else {str(v) for v in values if v is not None}
           for name, values in groups.items()}
    names = list(ids)
    shared: dict[str, int] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            both = (ids[a] or set()) & (ids[b] or set())
            if both:
                shared[f"{a}/{b}"] = len(both)
                logger.warning("%s: %d patient id(s) appear in both the given %s and %s splits (e.g. %s)",
                               where, len(both), a, b, ", ".join(sorted(both)[:3]))
    return {name: None if values is None else len(values) for name, values in ids.items()}, shared


def split_pool(
    pool: ImageSource,
    given: Sequence[str] | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    remove_duplicates: bool,
    where: str,
) -> tuple[dict[str, ImageSource], dict[str, object]]:
    """One source per split from every sample found: duplicates dropped, splits assigned, patients checked.

    Returns:
        ``(splits, report)``; ``report`` holds ``splits_from``, the duplicate counts and
        ``patients`` per split.
    """
    keep, stats = dedupe(pool, given) if remove_duplicates else (np.arange(len(pool)), dict(_NO_DUPLICATES))
    if stats["dropped"]:
        logger.info("%s: dropped %d exact duplicate file(s) (%d across splits)", where, stats["dropped"],
                    stats["across_splits"])
    pool = pool.subset(keep)
    given = None if given is None else [given[i] for i in keep]
    indices, origin = assign_splits(pool.labels, pool.groups, given, val_fraction, test_fraction, seed)
    splits = {name: pool.subset(indices[name]) for name in SPLITS}
    patients, shared = check_patients({name: source.groups for name, source in splits.items()}, where)
    report: dict[str, object] = {
        "splits_from": origin,
        "duplicates_dropped": stats["dropped"],
        "duplicates_across_splits": stats["across_splits"],
        "duplicate_label_conflicts": stats["label_conflicts"],
        "patients": patients,
        "patients_shared": shared,
    }
    return splits, report
