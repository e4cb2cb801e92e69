"""Segmentation data: pairing rules, DRIVE and LGG layouts, patch/whole sequences."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
from files import write_png as _png

from medlens.pipelines.data import (
    SegDataConfig,
    SegmentationSequence,
    SegSample,
    check_sizes,
    load_mask,
    load_pair,
    load_seg_dataset,
    pair_folders,
)
from medlens.pipelines.errors import DatasetError, ImageReadError, MedlensError


@pytest.fixture(scope="module")
def data_root() -> Path:
    root = Path(os.environ.get("MEDLENS_DATA") or Path(__file__).resolve().parents[3].parent / "shared" / "data")
    assert (root / "drive").is_dir() and (root / "lgg_mri_segmentation").is_dir(), f"no data at {root}"
    return root


@pytest.fixture(scope="module")
def drive(data_root: Path):
    return load_seg_dataset({"kind": "drive", "root": str(data_root / "drive")}, seed=0)


def _touch_images(folder: Path, names: list[str], size: tuple[int, int] = (8, 8)) -> None:
    for name in names:
        _png(folder / name, np.zeros(size, np.uint8))


def _square_sample(folder: Path, name: str = "a", size: int = 64, box: tuple[int, int, int, int] = (28, 36, 28, 36),
                   fov: np.ndarray | None = None, image: np.ndarray | None = None) -> SegSample:
    mask = np.zeros((size, size), np.uint8)
    r0, r1, c0, c1 = box
    mask[r0:r1, c0:c1] = 255
    if image is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    fov_path = _png(folder / f"{name}_fov.png", fov.astype(np.uint8) * 255) if fov is not None else None
    return SegSample(_png(folder / f"{name}.png", image), _png(folder / f"{name}_mask.png", mask), fov_path)


# --------------------------------------------------------------------------- real data


def test_drive_layout(drive, data_root: Path) -> None:
    splits = drive.splits
    assert len(splits["train"]) + len(splits["val"]) == 20
    assert len(splits["val"]) > 0 and len(splits["test"]) == 20
    assert drive.report["carved"] == ["val"]
    train_ids = {s.patient_id for s in splits["train"]}
    assert not train_ids & {s.patient_id for s in splits["val"]}
    for sample in splits["train"] + splits["val"]:
        assert sample.image_path.parent.parent.name == "training"
        assert sample.mask_path.parent.name == "1st_manual" and sample.fov_path.parent.name == "mask"
        assert sample.mask_path.name.split("_")[0] == sample.image_path.name.split("_")[0] == sample.fov_path.name.split("_")[0]
        assert sample.mask2_path is None
    for sample in splits["test"]:
        assert sample.mask2_path is not None and sample.mask2_path.name.startswith(sample.image_path.name[:2])
    # Manifest and folder pairing agree.
    from_folders = load_seg_dataset({"kind": "drive", "root": str(data_root / "drive"), "manifest": "none.csv"}, 0)
    assert {k: [s.image_path for s in v] for k, v in from_folders.splits.items()} == {
        k: [s.image_path for s in v] for k, v in drive.splits.items()
    }
    assert [s.mask2_path for s in from_folders.splits["test"]] == [s.mask2_path for s in splits["test"]]


def test_drive_masks_binary_and_shapes(drive, data_root: Path) -> None:
    fractions = {}
    with open(data_root / "drive" / "manifest.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            fractions[row["id"]] = float(row["vessel_fraction_in_fov"])
    for sample in [drive.splits["train"][0], drive.splits["val"][0], drive.splits["test"][0]]:
        image, mask, fov = load_pair(sample)
        assert image.shape == (584, 565, 3) and mask.shape == fov.shape == (584, 565)
        assert set(np.unique(mask)) == {0, 1}
        assert abs(mask[fov].mean() - fractions[sample.patient_id]) < 1e-3
    # The second observer's palette GIF holds indices 0/1: read with "> 0" it is a real vessel map.
    sample = drive.splits["test"][0]
    first, second = load_mask(sample.mask_path), load_mask(sample.mask2_path)
    assert set(np.unique(second)) == {0, 1}
    dice = 2 * np.sum(first & second) / (first.sum() + second.sum())
    assert 0.6 < dice < 1.0


def test_drive_pair_folders_real(data_root: Path) -> None:
    training = data_root / "drive" / "training"
    samples = pair_folders(training / "images", training / "1st_manual", training / "mask")
    assert len(samples) == 20
    for sample in samples:
        number = sample.image_path.name.split("_")[0]
        assert sample.mask_path.name == f"{number}_manual1.gif"
        assert sample.fov_path.name == f"{number}_training_mask.gif"


def test_lgg_csv_grouped_by_patient(data_root: Path) -> None:
    root = data_root / "lgg_mri_segmentation"
    data = load_seg_dataset({"kind": "csv", "root": str(root), "manifest": "manifest.csv"}, seed=0)
    samples = [s for items in data.splits.values() for s in items]
    assert len(samples) == 89 and len({s.patient_id for s in samples}) == 4
    patients = {name: {s.patient_id for s in items} for name, items in data.splits.items()}
    assert all(patients[name] for name in ("train", "val", "test"))
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    assert data.report["patients"] == {name: len(ids) for name, ids in patients.items()}
    # Another seed gives a grouped split too; masks are binary with 30 tumour slices.
    other = load_seg_dataset(SegDataConfig(kind="csv", root=str(root), manifest="manifest.csv"), seed=7)
    assert sum(len(v) for v in other.splits.values()) == 89
    tumour = 0
    for sample in samples:
        mask = load_mask(sample.mask_path)
        assert mask.shape == (256, 256) and mask.max() <= 1
        tumour += int(mask.any())
    assert tumour == 30


def test_lgg_masks_beside_images(data_root: Path) -> None:
    case = data_root / "lgg_mri_segmentation" / "kaggle_3m" / "TCGA_CS_4942_19970222"
    samples = pair_folders(case, case)
    assert len(samples) == 20
    assert all(s.mask_path.stem == s.image_path.stem + "_mask" for s in samples)


# --------------------------------------------------------------------------- pairing rules


def test_pair_folders_rules(tmp_path: Path) -> None:
    _touch_images(tmp_path / "img", ["21_training.tif", "case_b.png", "007_scan.png"])
    _touch_images(tmp_path / "lab", ["21_manual1.gif", "case_b.png", "7_label.png"])
    _touch_images(tmp_path / "fov", ["21_training_mask.gif", "case_b_fov.png", "7_mask.png"])
    samples = pair_folders(tmp_path / "img", tmp_path / "lab", tmp_path / "fov", split="train")
    pairs = {s.image_path.name: (s.mask_path.name, s.fov_path.name, s.split) for s in samples}
    assert pairs == {
        "21_training.tif": ("21_manual1.gif", "21_training_mask.gif", "train"),
        "case_b.png": ("case_b.png", "case_b_fov.png", "train"),
        "007_scan.png": ("7_label.png", "7_mask.png", "train"),
    }


def test_pair_folders_unmatched_is_one_line(tmp_path: Path) -> None:
    _touch_images(tmp_path / "img", ["1_a.png", "2_a.png", "lonely.png"])
    _touch_images(tmp_path / "lab", ["1_mask.png", "2_mask.png", "orphan_mask.png"])
    with pytest.raises(DatasetError) as info:
        pair_folders(tmp_path / "img", tmp_path / "lab")
    message = str(info.value)
    assert "\n" not in message and "lonely.png" in message and "orphan_mask.png" in message
    with pytest.raises(DatasetError, match="not found"):
        pair_folders(tmp_path / "img", tmp_path / "nowhere")


def test_mask_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = _png(tmp_path / "img" / "x.png", np.zeros((10, 12), np.uint8))
    mask = _png(tmp_path / "lab" / "x_mask.png", np.zeros((10, 11), np.uint8))
    sample = pair_folders(tmp_path / "img", tmp_path / "lab")[0]
    for call in (lambda: check_sizes([sample]), lambda: load_pair(sample)):
        with pytest.raises(ImageReadError) as info:
            call()
        assert str(image) in str(info.value) and str(mask) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(MedlensError, match="x.png"):
        load_seg_dataset({"kind": "folders", "root": str(tmp_path), "image_dir": "img", "mask_dir": "lab"}, 0)


def test_folders_layout_given_splits(tmp_path: Path) -> None:
    for split, count in (("train", 6), ("test", 2)):
        for k in range(count):
            _png(tmp_path / split / "images" / f"{split}{k}.png", np.zeros((8, 8), np.uint8))
            _png(tmp_path / split / "masks" / f"{split}{k}_mask.png", np.zeros((8, 8), np.uint8))
    data = load_seg_dataset({"kind": "folders", "root": str(tmp_path), "val_fraction": 0.34}, seed=1)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 4, "val": 2, "test": 2}
    assert all(s.split == "val" for s in data.splits["val"])


def test_multiclass_mask_values(tmp_path: Path) -> None:
    sample = SegSample(_png(tmp_path / "i.png", np.zeros((4, 4))), _png(tmp_path / "m.png", np.full((4, 4), 3)))
    assert load_mask(sample.mask_path, num_classes=4).max() == 3
    assert load_mask(sample.mask_path, num_classes=1).max() == 1
    with pytest.raises(ImageReadError, match="m.png"):
        load_mask(sample.mask_path, num_classes=3)


# --------------------------------------------------------------------------- sequence


def test_patch_shapes_and_fov_weights(drive) -> None:
    sequence = SegmentationSequence(drive.splits["test"][:3], patch_size=48, patches_per_image=6, batch_size=8,
                                    foreground_bias=0.0, seed=2)
    assert len(sequence) == 3  # 18 patches
    x, y, w = sequence[0]
    assert x.shape == (8, 48, 48, 3) and y.shape == (8, 48, 48, 1) and w.shape == (8, 48, 48)
    assert x.dtype == y.dtype == w.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0 and set(np.unique(y)) <= {0.0, 1.0} and set(np.unique(w)) <= {0.0, 1.0}
    assert sequence[2][0].shape[0] == 2
    centres = np.concatenate([sequence[i][2][:, 24, 24] for i in range(len(sequence))])
    assert centres.size == 18 and np.all(centres == 1.0)  # every patch is centred inside the FOV
    # Weights are the FOV: where w is 0 the fundus image is (nearly) black.
    whole = SegmentationSequence(drive.splits["test"][:1], mode="whole", batch_size=1)
    x, y, w = whole[0]
    assert x.shape == (1, 584, 565, 3) and 0.6 < w.mean() < 0.8
    assert x[0][w[0] == 0].mean() < 0.05 < x[0][w[0] == 1].mean()
    assert y[0, ..., 0][w[0] == 0].sum() < 100  # DRIVE manuals have a few vessel pixels outside the FOV
    x2, y2 = SegmentationSequence(drive.splits["test"][:1], mode="whole", batch_size=1, return_fov_weights=False)[0]
    np.testing.assert_array_equal(x2, x)


def test_foreground_bias(tmp_path: Path) -> None:
    sample = _square_sample(tmp_path, size=64, box=(40, 48, 10, 18))  # base rate 64 / 4096
    base_rate = 64 / 4096

    def centre_rate(bias: float) -> float:
        seq = SegmentationSequence([sample], patch_size=16, patches_per_image=800, batch_size=200,
                                   foreground_bias=bias, seed=3)
        return float(np.mean([seq[i][1][:, 8, 8, 0].mean() for i in range(len(seq))]))

    biased = SegmentationSequence([sample], patch_size=16, patches_per_image=200, batch_size=200,
                                  foreground_bias=1.0, seed=3)[0][1]
    assert np.mean(biased.reshape(200, -1).max(axis=1) > 0) >= 0.9
    assert centre_rate(1.0) == 1.0
    assert abs(centre_rate(0.0) - base_rate) < 0.015
    assert 0.4 < centre_rate(0.5) < 0.65


def test_fov_limits_centres_and_weights(tmp_path: Path) -> None:
    fov = np.zeros((64, 64), bool)
    fov[:, 32:] = True
    sample = _square_sample(tmp_path, box=(0, 64, 0, 40), fov=fov)  # foreground also outside the FOV
    seq = SegmentationSequence([sample], patch_size=8, patches_per_image=300, batch_size=300, foreground_bias=0.7)
    x, y, w = seq[0]
    assert np.all(w[:, 4, 4] == 1)
    # Patches straddling the FOV edge carry weight 0 on its outside.
    assert 0 < w.mean() < 1


def test_sequence_deterministic(tmp_path: Path) -> None:
    samples = [_square_sample(tmp_path, name=f"s{k}") for k in range(3)]

    def batches(seed: int, epoch: int = 0) -> list[np.ndarray]:
        seq = SegmentationSequence(samples, patch_size=16, patches_per_image=4, batch_size=5, seed=seed,
                                   augment="tumour")
        seq.set_epoch(epoch)
        return [part for i in range(len(seq)) for part in seq[i]]

    first, again = batches(1), batches(1)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, batches(2), strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, batches(1, epoch=1), strict=True))
    seq = SegmentationSequence(samples, patch_size=16, patches_per_image=4, batch_size=5, seed=1, augment="tumour",
                               cache=False)
    seq.on_epoch_end()
    seq.set_epoch(0)
    assert np.array_equal(seq[1][0], first[3])


def test_augment_keeps_image_and_mask_aligned(tmp_path: Path) -> None:
    mask = np.zeros((64, 64), np.uint8)
    mask[10:30, 8:50] = 1
    mask[40:60, 20:28] = 1
    sample = SegSample(_png(tmp_path / "i.png", mask * 255), _png(tmp_path / "i_mask.png", mask * 255))
    plain = SegmentationSequence([sample], mode="whole", batch_size=1)
    moved = 0
    for seed in range(6):
        seq = SegmentationSequence([sample] * 4, mode="whole", batch_size=4, augment="tumour", seed=seed)
        x, y, w = seq[0]
        image_fg = x[..., 0] > 0.5
        agreement = np.mean(image_fg[w > 0] == (y[..., 0] > 0.5)[w > 0])
        assert agreement > 0.97
        moved += int(not np.array_equal(y, np.repeat(plain[0][1], 4, axis=0)))
    assert moved >= 4


def test_whole_mode_shapes_and_channels(tmp_path: Path) -> None:
    samples = [_square_sample(tmp_path, name=f"w{k}", size=50 + 10 * k) for k in range(3)]
    seq = SegmentationSequence(samples, mode="whole", image_size=(48, 40), batch_size=2)
    assert len(seq) == 2
    x, y, w = seq[0]
    assert x.shape == (2, 48, 40, 3) and y.shape == (2, 48, 40, 1) and w.shape == (2, 48, 40)
    assert np.all(w == 1) and set(np.unique(y)) == {0.0, 1.0}
    grey = SegmentationSequence(samples, mode="whole", image_size=(32, 32), batch_size=3, channels=1,
                                preprocess=lambda batch: batch - 127.5)
    x, _, _ = grey[0]
    assert x.shape == (3, 32, 32, 1) and x.min() < 0 < x.max()
    with pytest.raises(ValueError, match="image_size"):
        SegmentationSequence(samples, mode="whole", batch_size=3)[0]


def test_grey_image_becomes_three_channels(tmp_path: Path) -> None:
    sample = _square_sample(tmp_path, image=np.full((64, 64), 200, np.uint8))
    x, _, _ = SegmentationSequence([sample], patch_size=16, batch_size=2)[0]
    assert x.shape == (2, 16, 16, 3)
    np.testing.assert_allclose(x, 200 / 255, atol=1e-6)


def test_multiclass_one_hot(tmp_path: Path) -> None:
    labels = np.zeros((32, 32), np.uint8)
    labels[4:12, 4:12] = 1
    labels[20:30, 16:30] = 2
    sample = SegSample(_png(tmp_path / "m.png", labels * 80), _png(tmp_path / "m_mask.png", labels))
    x, y, w = SegmentationSequence([sample], mode="whole", batch_size=1, num_classes=3)[0]
    assert y.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(y.sum(axis=-1), 1.0)
    np.testing.assert_array_equal(y[0].argmax(axis=-1), labels)
    patches = SegmentationSequence([sample], patch_size=8, batch_size=4, num_classes=3, foreground_bias=1.0)[0][1]
    assert patches.shape == (4, 8, 8, 3) and np.all(patches[:, 4, 4, 0] == 0)
