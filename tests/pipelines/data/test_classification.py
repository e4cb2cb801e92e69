"""Tests for medlens.pipelines.data: loading, dedupe, splits, class statistics, sequences."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from files import write_manifest as _write_manifest

from medlens.pipelines.config import DataConfig
from medlens.pipelines.data import (
    ArraySource,
    ClassificationSequence,
    Dataset,
    FileSource,
    class_counts,
    class_weights,
    load_dataset,
    make_splits,
    prepare_image,
)
from medlens.pipelines.errors import ConfigError, DatasetError


@pytest.fixture(scope="session")
def data_root() -> Path:
    return Path(os.environ.get("MEDLENS_DATA", Path(__file__).resolve().parents[3] / "../shared/data"))


def _write_png(path: Path, value: int, size: int = 16, channels: int = 1) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    image = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    image[0, 0] = value % 256
    image[0, 1] = value // 256
    assert cv2.imwrite(str(path), image if channels == 3 else image[..., 0])
    return path


def _write_tree(root: Path, counts: dict[str, int], start: int = 0) -> int:
    value = start
    for name, count in counts.items():
        for i in range(count):
            _write_png(root / name / f"{name}_{i:03d}.png", value)
            value += 1
    return value


def _total(dataset: Dataset) -> int:
    return sum(len(source) for source in dataset.splits.values())


# --------------------------------------------------------------------------- folder


def test_folder_two_classes(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"yes": 12, "no": 8})
    cfg = DataConfig(kind="folder", root=str(tmp_path), val_fraction=0.25, test_fraction=0.25)
    dataset = load_dataset(cfg, seed=0)
    assert dataset.class_names == ["no", "yes"]
    assert set(dataset.splits) == {"train", "val", "test"}
    assert _total(dataset) == 20
    assert dataset.report["duplicates_dropped"] == 0
    counts = class_counts(dataset)
    assert sum(counts["train"].values()) == len(dataset.splits["train"])
    assert counts["test"] == {"no": 2, "yes": 3}
    assert dataset.report["class_counts"] == counts
    image = dataset.splits["train"].load(0)
    assert image.dtype == np.float32 and image.ndim == 3 and image.max() <= 1.0
    assert isinstance(dataset.splits["train"], FileSource)
    yes_ids = [i for i, label in zip(dataset.splits["train"].ids, dataset.splits["train"].labels, strict=True)
               if label == 1]
    assert all("/yes/" in i for i in yes_ids)


def test_folder_class_names_order(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"yes": 4, "no": 4, "extra": 2})
    cfg = DataConfig(kind="folder", root=str(tmp_path), class_names=["yes", "no"], val_fraction=0, test_fraction=0)
    dataset = load_dataset(cfg, seed=0)
    assert dataset.class_names == ["yes", "no"]
    assert len(dataset.splits["train"]) == 8
    assert len(dataset.splits["val"]) == 0
    assert class_counts(dataset)["train"] == {"yes": 4, "no": 4}


def test_folder_empty_class_is_an_error(tmp_path: Path) -> None:
    _write_tree(tmp_path, {"a": 3})
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match=r"b: class folder has no supported images"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path)), seed=0)


def test_folder_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        load_dataset(DataConfig(kind="folder", root=str(tmp_path / "nope")), seed=0)
    with pytest.raises(ConfigError, match="data.root"):
        load_dataset(DataConfig(kind="folder", root=""), seed=0)


def test_folder_split_dirs_carve_val(tmp_path: Path) -> None:
    value = _write_tree(tmp_path / "train", {"A": 20, "B": 20})
    _write_tree(tmp_path / "test", {"A": 5, "B": 5}, start=value)
    cfg = DataConfig(kind="folder", root=str(tmp_path), val_fraction=0.2)
    dataset = load_dataset(cfg, seed=1)
    assert len(dataset.splits["test"]) == 10
    assert len(dataset.splits["val"]) == 8
    assert len(dataset.splits["train"]) == 32
    assert all("/test/" in i for i in dataset.splits["test"].ids)
    assert "carved" in dataset.report["splits_from"]


def test_dedupe_within_and_across_splits(tmp_path: Path) -> None:
    value = _write_tree(tmp_path / "train", {"A": 6, "B": 6})
    _write_tree(tmp_path / "test", {"A": 2, "B": 2}, start=value)
    # one exact copy inside train, one test image copied into train
    shutil.copy(tmp_path / "train/A/A_000.png", tmp_path / "train/A/A_copy.png")
    shutil.copy(tmp_path / "test/B/B_001.png", tmp_path / "train/B/B_leak.png")
    dataset = load_dataset(DataConfig(kind="folder", root=str(tmp_path), val_fraction=0.0), seed=0)
    assert dataset.report["duplicates_dropped"] == 2
    assert dataset.report["duplicates_across_splits"] == 1
    assert len(dataset.splits["test"]) == 4
    assert len(dataset.splits["train"]) == 12
    assert not any(i.endswith("B_leak.png") for i in dataset.splits["train"].ids)
    no_dedupe = load_dataset(DataConfig(kind="folder", root=str(tmp_path), val_fraction=0.0, dedupe=False), seed=0)
    assert len(no_dedupe.splits["train"]) == 14


def test_brain_mri_dedupe(data_root: Path) -> None:
    cfg = DataConfig(kind="folder", root=str(data_root / "brain_mri_yes_no"))
    dataset = load_dataset(cfg, seed=0)
    assert dataset.class_names == ["no", "yes"]
    assert dataset.report["duplicates_dropped"] == 25
    assert _total(dataset) == 228
    ids = [i for source in dataset.splits.values() for i in source.ids]
    assert len(set(ids)) == 228


# --------------------------------------------------------------------------- csv


def _patient_manifest(root: Path, patients: int = 60) -> Path:
    rng = np.random.default_rng(0)
    rows = []
    value = 0
    for p in range(patients):
        label = "tumour" if p % 3 == 0 else "normal"
        for k in range(int(rng.integers(1, 4))):
            rel = f"img/p{p:03d}_{k}.png"
            _write_png(root / rel, value)
            value += 1
            rows.append({"file": rel, "diagnosis": label, "patient": f"P{p:03d}"})
    return _write_manifest(root / "labels.csv", rows)


def _csv_cfg(root: Path, **extra: object) -> DataConfig:
    return DataConfig(
        kind="csv",
        root=str(root),
        manifest="labels.csv",
        columns={"image": "file", "label": "diagnosis", "patient_id": "patient"},
        val_fraction=0.2,
        test_fraction=0.2,
        **extra,
    )


def test_csv_grouped_stratified_split(tmp_path: Path) -> None:
    _patient_manifest(tmp_path)
    dataset = load_dataset(_csv_cfg(tmp_path), seed=3)
    assert dataset.class_names == ["normal", "tumour"]
    assert dataset.report["splits_from"] == "made"
    patients = {name: set(source.groups or []) for name, source in dataset.splits.items()}
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert dataset.report["patients"] == {name: len(v) for name, v in patients.items()}
    total = _total(dataset)
    overall = sum(int(s.labels.sum()) for s in dataset.splits.values()) / total
    for name, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
        source = dataset.splits[name]
        assert abs(len(source) / total - fraction) < 0.06, name
        assert abs(source.labels.mean() - overall) < 0.1, name

    again = load_dataset(_csv_cfg(tmp_path), seed=3)
    other = load_dataset(_csv_cfg(tmp_path), seed=4)
    assert again.splits["test"].ids == dataset.splits["test"].ids
    assert other.splits["test"].ids != dataset.splits["test"].ids


def test_csv_class_names_map_string_labels(tmp_path: Path) -> None:
    _patient_manifest(tmp_path, patients=12)
    dataset = load_dataset(_csv_cfg(tmp_path, class_names=["tumour", "normal"]), seed=0)
    assert dataset.class_names == ["tumour", "normal"]
    train = dataset.splits["train"]
    for path, label in zip(train.ids, train.labels, strict=True):
        patient = int(Path(path).name[1:4])
        assert label == (0 if patient % 3 == 0 else 1)


def test_csv_missing_label_column(tmp_path: Path) -> None:
    _patient_manifest(tmp_path, patients=4)
    cfg = _csv_cfg(tmp_path)
    cfg.columns["label"] = "label"
    with pytest.raises(DatasetError) as info:
        load_dataset(cfg, seed=0)
    message = str(info.value)
    assert "labels.csv" in message and "'label'" in message and "file, diagnosis, patient" in message
    assert "\n" not in message


def test_csv_rows_with_missing_files_are_skipped_and_named(tmp_path: Path, caplog) -> None:
    manifest = _patient_manifest(tmp_path, patients=6)
    rows = len(manifest.read_text().splitlines()) - 1
    (tmp_path / "img/p000_0.png").unlink()
    (tmp_path / "img/p001_0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
        dataset = load_dataset(_csv_cfg(tmp_path), seed=0)
    # The good rows are kept; each bad one is named by manifest and line, on one line.
    assert dataset.report["rows_skipped"] == 2 and _total(dataset) == rows - 2
    kept = {Path(p).name for source in dataset.splits.values() for p in source.paths}
    assert "p000_0.png" not in kept and "p001_0.png" not in kept
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings), warnings
    assert warnings[0].startswith(f"skipped {manifest} line 2: file not found") and "img/p000_0.png" in warnings[0]
    assert dataset.report["skipped"][1].startswith(f"{manifest} line ") and "img/p001_0.png" in dataset.report["skipped"][1]
    # Nothing usable: one line naming the manifest and the first row's problem.
    for png in (tmp_path / "img").iterdir():
        png.unlink()
    with pytest.raises(DatasetError) as info:
        load_dataset(_csv_cfg(tmp_path), seed=0)
    message = str(info.value)
    assert message.startswith(f"{manifest}: no usable rows ({manifest} line 2: file not found")
    assert "img/p000_0.png" in message and "\n" not in message


def test_csv_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="labels.csv: manifest not found"):
        load_dataset(_csv_cfg(tmp_path), seed=0)


def test_csv_rows_with_an_unknown_or_empty_label_are_skipped(tmp_path: Path, caplog) -> None:
    manifest = _patient_manifest(tmp_path, patients=6)
    lines = manifest.read_text().splitlines()
    tumour = sum(",tumour," in line for line in lines)
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
        dataset = load_dataset(_csv_cfg(tmp_path, class_names=["normal", "benign"]), seed=0)
    assert dataset.report["rows_skipped"] == tumour > 0 and _total(dataset) == len(lines) - 1 - tumour
    assert "label 'tumour' is not one of class_names (normal, benign)" in caplog.records[0].getMessage()
    lines[1] = lines[1].replace(",tumour,", ",,")
    manifest.write_text("\n".join(lines) + "\n")
    dataset = load_dataset(_csv_cfg(tmp_path), seed=0)
    assert dataset.report["skipped"] == [f"{manifest} line 2: empty 'diagnosis'"]
    assert dataset.class_names == ["normal", "tumour"]


def test_chest_xray_manifest(data_root: Path) -> None:
    cfg = DataConfig(kind="csv", root=str(data_root / "chest_xray_pneumonia_224"), manifest="manifest.csv")
    dataset = load_dataset(cfg, seed=0)
    assert dataset.class_names == ["NORMAL", "PNEUMONIA"]
    assert dataset.report["splits_from"] == "given train/test, val carved from train"
    dropped = dataset.report["duplicates_dropped"]
    assert _total(dataset) + dropped == 1258
    assert 600 <= len(dataset.splits["test"]) <= 624
    assert all(i.split("/")[-3] == "test" for i in dataset.splits["test"].ids)
    train, val = dataset.splits["train"], dataset.splits["val"]
    assert all(i.split("/")[-3] == "train" for i in train.ids + val.ids)
    assert train.groups is not None and val.groups is not None
    assert not set(train.groups) & set(val.groups)
    assert abs(len(val) / (len(train) + len(val)) - cfg.val_fraction) < 0.03
    assert abs(val.labels.mean() - train.labels.mean()) < 0.06
    assert dataset.report["patients"]["val"] == len(set(val.groups))


# --------------------------------------------------------------------------- npz


def _write_npz(path: Path, sizes: dict[str, int], channels: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in sizes.items():
        shape = (count, 28, 28) if channels is None else (count, 28, 28, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 3).reshape(-1, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_npz_synthetic(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "toy.npz", {"train": 30, "val": 6, "test": 9}, channels=3)
    dataset = load_dataset(DataConfig(kind="npz", npz=str(path)), seed=0)
    assert dataset.class_names == ["0", "1", "2"]
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 30, "val": 6, "test": 9}
    source = dataset.splits["val"]
    assert isinstance(source, ArraySource)
    image = source.load(1)
    assert image.shape == (28, 28, 3) and image.dtype == np.float32 and image.max() <= 1.0
    assert source.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert source.ids[0] == "val/0"


def test_npz_without_val(tmp_path: Path) -> None:
    path = _write_npz(tmp_path / "toy.npz", {"train": 40, "test": 9})
    dataset = load_dataset(DataConfig(kind="npz", npz=str(path), val_fraction=0.25), seed=0)
    assert len(dataset.splits["test"]) == 9
    assert len(dataset.splits["val"]) == 10
    assert len(dataset.splits["train"]) == 30
    assert dataset.splits["val"].load(0).shape == (28, 28, 1)


def test_npz_missing(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="npz file not found"):
        load_dataset(DataConfig(kind="npz", npz=str(tmp_path / "none.npz")), seed=0)


def test_breastmnist(data_root: Path) -> None:
    path = data_root / "medmnist" / "breastmnist.npz"
    dataset = load_dataset(DataConfig(kind="npz", npz=str(path), class_names=["malignant", "normal"]), seed=0)
    assert {k: len(v) for k, v in dataset.splits.items()} == {"train": 546, "val": 78, "test": 156}
    assert dataset.class_names == ["malignant", "normal"]
    assert dataset.report["class_counts"]["test"]["malignant"] + dataset.report["class_counts"]["test"]["normal"] == 156


# --------------------------------------------------------------------------- splits and statistics


def test_make_splits_stratified_deterministic() -> None:
    labels = np.array([0] * 80 + [1] * 20)
    parts = make_splits(labels, None, 0.2, 0.1, seed=5)
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "val": 20, "test": 10}
    assert labels[parts["val"]].sum() == 4 and labels[parts["test"]].sum() == 2
    joined = np.concatenate(list(parts.values()))
    assert sorted(joined.tolist()) == list(range(100))
    same = make_splits(labels, None, 0.2, 0.1, seed=5)
    assert all(np.array_equal(parts[k], same[k]) for k in parts)
    different = make_splits(labels, None, 0.2, 0.1, seed=6)
    assert not np.array_equal(parts["val"], different["val"])
    with pytest.raises(ConfigError):
        make_splits(labels, None, 0.6, 0.5, seed=0)


def test_make_splits_groups_never_straddle() -> None:
    rng = np.random.default_rng(0)
    groups = [f"g{i}" for i in rng.integers(0, 40, 200)]
    labels = np.array([int(g[1:]) % 2 for g in groups])
    parts = make_splits(labels, groups, 0.15, 0.15, seed=0)
    owner = {}
    for name, idx in parts.items():
        for i in idx:
            assert owner.setdefault(groups[i], name) == name


def test_class_weights() -> None:
    weights = class_weights([0, 0, 0, 1], 2)
    assert weights == pytest.approx({0: 4 / 6, 1: 2.0})
    assert class_weights([0, 2, 2], 3)[1] == 0.0


# --------------------------------------------------------------------------- images and sequences


def test_prepare_image() -> None:
    grey = np.linspace(0, 1, 40 * 30, dtype=np.float32).reshape(40, 30, 1)
    out = prepare_image(grey, (20, 16))
    assert out.shape == (20, 16, 3) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 255.0 and out.max() > 200
    np.testing.assert_array_equal(out[..., 0], out[..., 2])
    big = prepare_image(np.ones((8, 8, 3), np.float32), (32, 32))
    assert big.shape == (32, 32, 3)
    np.testing.assert_allclose(big, 255.0)
    assert prepare_image(np.zeros((10, 10), np.float32), (10, 10)).shape == (10, 10, 3)


def _array_source(labels: list[int], size: int = 12) -> ArraySource:
    images = np.stack([np.full((size, size), 10 * i % 256, np.uint8) for i in range(len(labels))])
    return ArraySource(images, labels)


def test_sequence_binary_batches() -> None:
    source = _array_source([0, 1] * 5)
    seq = ClassificationSequence(source, (16, 16), 4, None, 2)
    assert len(seq) == 3
    x, y = seq[0]
    assert x.shape == (4, 16, 16, 3) and x.dtype == np.float32
    assert y.shape == (4,) and y.dtype == np.float32
    assert y.tolist() == [0.0, 1.0, 0.0, 1.0]
    np.testing.assert_allclose(x[1], 10.0, atol=1e-3)
    x_last, y_last = seq[2]
    assert x_last.shape[0] == 2 and y_last.shape == (2,)
    with pytest.raises(IndexError):
        seq[3]


def test_sequence_multiclass_one_hot_and_preprocess() -> None:
    source = _array_source([0, 1, 2, 1])

    def preprocess(batch: np.ndarray) -> np.ndarray:
        batch -= 100.0  # in place, like keras.applications preprocess_input
        return batch

    seq = ClassificationSequence(source, (8, 8), 4, preprocess, 3)
    x, y = seq[0]
    assert y.shape == (4, 3)
    np.testing.assert_array_equal(y.argmax(axis=1), [0, 1, 2, 1])
    np.testing.assert_allclose(x[2], 20.0 - 100.0, atol=1e-2)
    x_again, _ = seq[0]
    np.testing.assert_array_equal(x, x_again)


def test_sequence_images_only() -> None:
    seq = ClassificationSequence(ArraySource(np.zeros((5, 6, 6, 3), np.uint8)), (6, 6), 2, None, 2, images_only=True)
    batch = seq[0]
    assert isinstance(batch, np.ndarray) and batch.shape == (2, 6, 6, 3)


def test_sequence_shuffle_deterministic() -> None:
    source = _array_source(list(range(2)) * 20)
    first = ClassificationSequence(source, (8, 8), 8, None, 2, shuffle=True, seed=1)
    second = ClassificationSequence(source, (8, 8), 8, None, 2, shuffle=True, seed=1)
    other = ClassificationSequence(source, (8, 8), 8, None, 2, shuffle=True, seed=2)
    assert np.array_equal(first.indices, second.indices)
    assert not np.array_equal(first.indices, other.indices)
    assert sorted(first.indices.tolist()) == list(range(40))
    epoch0 = first.indices.copy()
    first.on_epoch_end()
    second.on_epoch_end()
    assert not np.array_equal(first.indices, epoch0)
    assert np.array_equal(first.indices, second.indices)
    np.testing.assert_array_equal(first[0][0], second[0][0])
    unshuffled = ClassificationSequence(source, (8, 8), 8, None, 2)
    assert unshuffled.indices.tolist() == list(range(40))


def test_sequence_balanced_sampling() -> None:
    source = _array_source([0] * 90 + [1] * 10)
    seq = ClassificationSequence(source, (4, 4), 25, None, 2, balanced=True, seed=0)
    positives = []
    for _ in range(20):
        assert len(seq.indices) == 100
        positives.append(np.concatenate([seq[i][1] for i in range(len(seq))]).mean())
        seq.on_epoch_end()
    assert abs(np.mean(positives) - 0.5) < 0.05


def test_sequence_augmentation_deterministic() -> None:
    images = np.zeros((6, 16, 16), np.uint8)
    images[:, :4] = 255
    source = ArraySource(images, [0, 1, 0, 1, 0, 1])
    a = ClassificationSequence(source, (16, 16), 6, None, 2, augment="tumour", seed=4)
    b = ClassificationSequence(source, (16, 16), 6, None, 2, augment="tumour", seed=4)
    xa, xb = a[0][0], b[0][0]
    np.testing.assert_array_equal(xa, xb)
    assert xa.shape == (6, 16, 16, 3) and 0.0 <= xa.min() and xa.max() <= 255.0
    assert any(not np.array_equal(xa[i], prepare_image(source.load(i), (16, 16))) for i in range(6))
    a.on_epoch_end()
    assert not np.array_equal(a[0][0], xa)


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
def test_loader_workers_serve_the_in_process_batches_of_each_epoch(processes: bool) -> None:
    # train.workers / train.use_multiprocessing: Keras's loader (the adapter fit uses) runs __getitem__
    # in 3 threads or 3 worker processes, which start after fit's callbacks pinned the epoch. Their
    # batches, shuffled and augmented, are those of one in-process sequence at the same epoch.
    from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter

    rng = np.random.default_rng(0)
    source = ArraySource(rng.integers(0, 256, (24, 20, 20), dtype=np.uint8), [0, 1] * 12)

    def sequence(**loader: object) -> ClassificationSequence:
        return ClassificationSequence(source, (16, 16), 5, None, 2, augment="xray", shuffle=True, seed=3, **loader)

    served, reference = sequence(workers=3, use_multiprocessing=processes), sequence()
    adapter = PyDatasetAdapter(served)
    for epoch in (0, 2):  # epoch 2 as a resumed run starts it, the order drawn afresh
        served.set_epoch(epoch)  # what EpochSync does in on_epoch_begin, before the loader starts
        reference.set_epoch(epoch)
        adapter.on_epoch_begin()
        batches = list(adapter.get_numpy_iterator())
        adapter.on_epoch_end()
        assert len(batches) == len(reference) == 5
        for index, (x, y) in enumerate(batches):
            expected_x, expected_y = reference[index]
            np.testing.assert_array_equal(x, expected_x)
            np.testing.assert_array_equal(y, expected_y)
    assert not np.array_equal(batches[0][0], sequence()[0][0])  # epoch 2 is not epoch 0 again


def test_sequence_file_source_with_cache(tmp_path: Path) -> None:
    paths = [_write_png(tmp_path / f"{i}.png", i, size=20, channels=3) for i in range(5)]
    source = FileSource(paths, [0, 1, 0, 1, 1])
    seq = ClassificationSequence(source, (10, 10), 5, None, 2, cache=True)
    x1, y1 = seq[0]
    for path in paths:
        path.unlink()  # served from the cache now
    x2, _ = seq[0]
    np.testing.assert_allclose(x1, x2, atol=0.2)
    assert x1.shape == (5, 10, 10, 3) and y1.tolist() == [0, 1, 0, 1, 1]


def test_old_column_keys_still_work_with_a_notice_naming_the_new_key(tmp_path: Path, caplog) -> None:
    import logging

    from medlens.pipelines.config import load_config

    _patient_manifest(tmp_path, patients=6)
    tree = {"data": {"kind": "csv", "root": str(tmp_path), "manifest": "labels.csv", "path_column": "file",
                     "label_column": "diagnosis", "patient_column": "patient", "val_fraction": 0.2,
                     "test_fraction": 0.2}}
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.config"):
        old = load_config(tree)
    notices = [r.getMessage() for r in caplog.records]
    assert "config key 'data.path_column' is deprecated; use 'data.columns.image' (set to 'file')" in notices
    assert any("'data.patient_column' is deprecated; use 'data.columns.patient_id'" in n for n in notices)
    assert len(notices) == 3 and all("\n" not in n for n in notices)
    new = load_config({"data": {**{k: v for k, v in tree["data"].items() if not k.endswith("_column")},
                                "columns": {"image": "file", "label": "diagnosis", "patient_id": "patient"}}})
    assert old.data == new.data  # one meaning, two spellings
    first, second = load_dataset(old.data, seed=0), load_dataset(new.data, seed=0)
    assert {k: list(v.ids) for k, v in first.splits.items()} == {k: list(v.ids) for k, v in second.splits.items()}


def test_folders_is_the_old_spelling_of_folder(caplog) -> None:
    import logging

    from medlens.pipelines.config import load_config

    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.config"):
        cfg = load_config({"task": "segmentation", "data": {"kind": "folders", "root": "x"}})
    assert cfg.data.kind == "folder"
    assert [r.getMessage() for r in caplog.records] == ["config value data.kind: folders is deprecated; use folder"]
