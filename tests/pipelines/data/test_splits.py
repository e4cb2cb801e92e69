"""One data stack for every task: the same split rule, manifest reader and bounded cache."""

from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

import numpy as np
import pytest
from files import write_manifest as _write_manifest
from files import write_png as _png

from medlens.pipelines.config import DataConfig, FindingsDataConfig
from medlens.pipelines.data import (
    SegmentationSequence,
    SegSample,
    assign_splits,
    check_patients,
    load_dataset,
    load_findings,
    load_seg_dataset,
)
from medlens.pipelines.data.manifest import ManifestFiles
from medlens.pipelines.errors import DatasetError


def _dataset(root: Path, patients: int, splits: dict[int, str] | None = None) -> None:
    """Two images per patient, each with a mask; one manifest for classification, one for segmentation."""
    rng = np.random.default_rng(0)
    classes, masks = [], []
    for p in range(patients):
        for k in range(2):
            image = _png(root / f"img/p{p:02d}_{k}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
            mask = _png(root / f"mask/p{p:02d}_{k}.png", (rng.random((16, 16)) > 0.7) * 255)
            split = {"split": splits[p]} if splits is not None else {}
            classes.append({"path": image.relative_to(root), "label": p % 2, "patient_id": f"P{p:02d}", **split})
            masks.append({"image": image.relative_to(root), "mask": mask.relative_to(root),
                          "patient_id": f"P{p:02d}", **split})
    _write_manifest(root / "classes.csv", classes)
    _write_manifest(root / "masks.csv", masks)


def _load_both(root: Path, folder: str = "", **fractions: float):
    classes = load_dataset(DataConfig(kind="csv", root=str(root), manifest=f"{folder}classes.csv", **fractions),
                           seed=0)
    masks = load_seg_dataset({"kind": "csv", "root": str(root), "manifest": f"{folder}masks.csv", **fractions},
                             seed=0)
    patients = {
        "classification": {name: {g for g in source.groups} for name, source in classes.splits.items()},
        "segmentation": {name: {s.patient_id for s in items} for name, items in masks.splits.items()},
    }
    return classes, masks, patients


def test_given_train_only_carves_val_and_test_by_patient_for_every_task(tmp_path: Path) -> None:
    _dataset(tmp_path, 20, {p: "train" for p in range(20)})
    classes, masks, patients = _load_both(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert classes.report["splits_from"] == "given train, val/test carved from train"
    assert masks.report["carved"] == ["test", "val"]
    for task, split_patients in patients.items():
        sizes = {name: len(ids) for name, ids in split_patients.items()}
        assert sizes == {"train": 12, "val": 4, "test": 4}, (task, sizes)
        assert not split_patients["train"] & split_patients["val"], task
        assert not split_patients["train"] & split_patients["test"], task
        assert not split_patients["val"] & split_patients["test"], task
    assert all(s.split == name for name, items in masks.splits.items() for s in items)


def test_given_splits_that_share_patient_ids_are_reported_not_refused(tmp_path: Path, caplog) -> None:
    # The Kermany README: ids that occur in both its train and test folders may not be the same patients.
    _dataset(tmp_path, 6, {0: "train", 1: "train", 2: "train", 3: "val", 4: "test", 5: "test"})
    for manifest in ("classes.csv", "masks.csv"):  # patient P04 now also in train
        rows = list(csv.DictReader(open(tmp_path / manifest)))
        rows[-1]["split"] = "train"
        _write_manifest(tmp_path / manifest, rows)
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.splits"):
        classes, masks, patients = _load_both(tmp_path)
    shared = [r.getMessage() for r in caplog.records if "appear in both" in r.getMessage()]
    assert len(shared) == 2 and all("1 patient id(s)" in m and "P05" in m and "train and test" in m for m in shared)
    assert classes.report["patients_shared"] == masks.report["patients_shared"] == {"train/test": 1}
    assert classes.report["patients"] == masks.report["patients"] == {"train": 4, "val": 1, "test": 2}
    assert classes.report["splits_from"] == "given"


def test_without_given_splits_every_task_carves_the_same_default_shares(tmp_path: Path) -> None:
    _dataset(tmp_path, 40)
    _, _, patients = _load_both(tmp_path)  # no fractions set: the one default (0.15 / 0.15) of every task
    sizes = {task: {name: len(ids) for name, ids in split.items()} for task, split in patients.items()}
    assert sizes["classification"] == sizes["segmentation"] == {"train": 28, "val": 6, "test": 6}  # 0.2: 24/8/8


def test_manifest_file_paths_are_relative_to_the_manifest_folder_for_every_task(tmp_path: Path) -> None:
    _dataset(tmp_path / "study", 6)
    classes, masks, patients = _load_both(tmp_path, "study/")  # root is the parent; the files sit beside the lists
    assert sum(len(s.paths) for s in classes.splits.values()) == 12
    assert sum(len(items) for items in masks.splits.values()) == 12
    assert all(p.parent == tmp_path / "study" / "img" for s in classes.splits.values() for p in s.paths)


def test_manifest_paths_under_the_root_the_old_classification_rule_still_load_with_one_notice(
        tmp_path: Path, caplog) -> None:
    _dataset(tmp_path, 6)  # paths like img/p00_0.png, relative to the root
    (tmp_path / "lists").mkdir()
    for name in ("classes.csv", "masks.csv"):
        (tmp_path / name).rename(tmp_path / "lists" / name)
    rows = [{"path": row["path"], "A": int(row["label"]), "B": 1 - int(row["label"]), "patient_id": row["patient_id"]}
            for row in csv.DictReader(open(tmp_path / "lists" / "classes.csv"))]
    _write_manifest(tmp_path / "lists" / "findings.csv", rows)
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
        classes, masks, _ = _load_both(tmp_path, "lists/")
        findings = load_findings(FindingsDataConfig(kind="csv", root=str(tmp_path), manifest="lists/findings.csv",
                                                    findings=["A", "B"]), seed=0)
    assert sum(len(s.paths) for s in classes.splits.values()) == sum(len(s.paths) for s in findings.splits.values())
    assert sum(len(s.paths) for s in classes.splits.values()) == sum(len(v) for v in masks.splits.values()) == 12
    notices = [r.getMessage() for r in caplog.records]
    assert len(notices) == 3, notices  # one per manifest, not one per row
    for name, notice in zip(("classes.csv", "masks.csv", "findings.csv"), notices, strict=True):
        assert notice.startswith(f"{tmp_path / 'lists' / name}: file paths are relative to the manifest's folder")
        assert "under data.root" in notice and "deprecated" in notice
    (tmp_path / "img" / "p00_0.png").unlink()  # found in neither place: skipped, naming the manifest's folder
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
        classes, masks, _ = _load_both(tmp_path, "lists/")
    assert classes.report["rows_skipped"] == masks.report["rows_skipped"] == 1
    assert sum(len(s.paths) for s in classes.splits.values()) == sum(len(v) for v in masks.splits.values()) == 11
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 2, skipped
    assert re.fullmatch(rf"skipped {re.escape(str(tmp_path / 'lists' / 'classes.csv'))} line \d+: file not found "
                        rf"under {re.escape(str(tmp_path / 'lists'))}: img/p00_0\.png", skipped[0]), skipped[0]
    assert skipped[1].startswith(f"skipped {tmp_path / 'lists' / 'masks.csv'} line ")
    assert skipped[1].endswith(f"file not found: {tmp_path / 'lists' / 'img' / 'p00_0.png'}"), skipped[1]


def test_manifest_files_are_looked_up_once_per_cell(tmp_path: Path, monkeypatch) -> None:
    """Resolving a cell and checking it exists cost one lookup, beside the manifest or under the root."""
    (tmp_path / "lists").mkdir()
    for name in ("lists/here.png", "there.png"):
        _png(tmp_path / name, np.zeros((4, 4), np.uint8))
    looked: list[Path] = []
    is_file = Path.is_file
    monkeypatch.setattr(Path, "is_file", lambda self: looked.append(self) or is_file(self))
    # (cell, exists, lookups) with the root the manifest's folder, then above it: a file found while
    # resolving is not looked up again; only a file missing everywhere is looked up a third time.
    cases = {tmp_path / "lists": [("here.png", True, 1), ("there.png", False, 1), ("gone.png", False, 1)],
             tmp_path: [("here.png", True, 1), ("there.png", True, 2), ("gone.png", False, 3)]}
    for root, cells in cases.items():
        files = ManifestFiles(tmp_path / "lists" / "m.csv", root)
        for cell, exists, lookups in cells:
            looked.clear()
            assert files.exists(files(cell)) is exists, (root, cell)
            assert len(looked) == lookups, (root, cell, looked)
        assert not files.exists(files(""))


def test_made_splits_share_no_patient_and_report_none(tmp_path: Path) -> None:
    _dataset(tmp_path, 30)
    classes, masks, patients = _load_both(tmp_path, val_fraction=0.2, test_fraction=0.2)
    assert classes.report["patients_shared"] == masks.report["patients_shared"] == {}
    for split_patients in patients.values():
        assert sum(len(ids) for ids in split_patients.values()) == 30


def test_assign_splits_refuses_a_partly_given_split_and_a_missing_train() -> None:
    with pytest.raises(DatasetError, match="1 sample\\(s\\) have no split while others do"):
        assign_splits([0, 1, 0], None, ["train", None, "test"], 0.2, 0.2, seed=0)
    with pytest.raises(DatasetError, match="have no train split"):
        assign_splits([0, 1], None, ["val", "test"], 0.2, 0.2, seed=0)
    parts, origin = assign_splits([0, 1, 0, 1], None, ["train", "val", "test", "train"], 0.2, 0.2, seed=0)
    assert origin == "given" and {k: v.tolist() for k, v in parts.items()} == {"train": [0, 3], "val": [1], "test": [2]}


def test_check_patients_counts_known_ids_only() -> None:
    counts, shared = check_patients({"train": ["a", "a", None], "val": ["b"], "test": ["a", "c"]}, "data")
    assert counts == {"train": 1, "val": 1, "test": 2} and shared == {"train/test": 1}


@pytest.mark.parametrize("manifest_of", ["classification", "segmentation"])
def test_a_manifest_that_is_not_csv_is_one_line_naming_it(tmp_path: Path, manifest_of: str) -> None:
    (tmp_path / "bad.csv").write_bytes(b"path,label\n\x89PNG\xff\xfe,1\n")  # not UTF-8
    with pytest.raises(DatasetError) as caught:
        if manifest_of == "classification":
            load_dataset(DataConfig(kind="csv", root=str(tmp_path), manifest="bad.csv"), seed=0)
        else:
            load_seg_dataset({"kind": "csv", "root": str(tmp_path), "manifest": "bad.csv"}, seed=0)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'bad.csv'}: not a readable CSV file") and "\n" not in message


def test_segmentation_cache_keeps_to_its_limit_and_changes_no_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    samples = []
    for k in range(12):
        image = _png(tmp_path / f"i{k}.png", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
        mask = _png(tmp_path / f"i{k}_mask.png", (rng.random((64, 64)) > 0.8) * 255)
        samples.append(SegSample(image, mask))
    # One cached image holds 12 KiB of pixels, 4 KiB of mask and its foreground indices: ~30 KiB.
    limit_mb = 100 / 1024  # room for three of the twelve images
    kwargs = {"mode": "whole", "batch_size": 4, "seed": 3, "shuffle": True}
    bounded = SegmentationSequence(samples, cache_mb=limit_mb, **kwargs)
    uncached = SegmentationSequence(samples, cache=False, **kwargs)
    for epoch in range(2):
        bounded.set_epoch(epoch)
        uncached.set_epoch(epoch)
        for index in range(len(bounded)):
            for a, b in zip(bounded[index], uncached[index], strict=True):
                assert np.array_equal(a, b)
            assert bounded._cache.bytes <= limit_mb * (1 << 20)
    assert 1 <= len(bounded._cache) < len(samples)
    assert len(uncached._cache) == 0
    unbounded = SegmentationSequence(samples, **kwargs)
    for index in range(len(unbounded)):
        unbounded[index]
    assert len(unbounded._cache) == len(samples)  # the default 2 GiB holds them all
