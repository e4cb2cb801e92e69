"""The bad-input corpus (tests/bad_inputs.py) through every reader, the dataset loaders and the CLI.

Each file either loads as float32 ``H×W×C`` in [0, 1] with no NaN, or is refused with one of
our own one-line errors naming the file and the reason. A prediction batch holding all of
them plus good images writes a row for every loadable image or frame, lists every bad file in
errors.csv, and loses nothing.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from bad_inputs import BadCase, make_bad_inputs
from pydicom.pixels import get_decoder
from pydicom.uid import UID, HTJ2KLossless, JPEGLSLossless

from medlens.app.cli import main
from medlens.pipelines.config import DataConfig
from medlens.pipelines.data import SegSample, check_sizes, load_dataset, load_pair
from medlens.pipelines.errors import DatasetError, ImageReadError, MedlensError
from medlens.pipelines.imaging import list_images, read_frames, read_image

GOOD_IMAGES = 3


def _case_names(*kinds: str) -> list[str]:
    """Case names for parametrization (the corpus is tiny: generate it once more at collection)."""
    with tempfile.TemporaryDirectory() as tmp:
        return [case.name for case in make_bad_inputs(Path(tmp)) if case.kind in kinds]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, BadCase]]:
    folder = tmp_path_factory.mktemp("bad_inputs")
    cases = make_bad_inputs(folder)
    return folder, {case.name: case for case in cases}


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a FIFO, a symlink loop) where SIGALRM exists."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_pixels(case: BadCase, pixels: np.ndarray) -> None:
    assert pixels.shape == case.shape, f"{case.name}: shape {pixels.shape}, expected {case.shape}"
    assert pixels.dtype == np.float32
    assert np.all(np.isfinite(pixels)), f"{case.name}: non-finite pixels"
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def _check_error(case: BadCase, error: BaseException, *names: object) -> None:
    message = str(error)
    assert isinstance(error, MedlensError) and type(error) is not MedlensError
    assert "\n" not in message and "Traceback" not in message, message
    assert case.reason in message.lower(), f"{case.name}: {case.reason!r} not in {message!r}"
    for name in (case.path, *names):
        assert str(name) in message, f"{case.name}: {name} not named in {message!r}"


# --------------------------------------------------------------------------- (a) every file, both readers


@pytest.mark.parametrize("name", _case_names("file"))
def test_file_case_through_readers(corpus, name: str) -> None:
    case = corpus[1][name]
    with deadline(20):
        if case.expect == "load":
            record = read_image(case.path)
            _check_pixels(case, record.pixels)
            for row, column, value in case.probes:
                assert record.pixels[row, column, 0] == pytest.approx(value, abs=1e-6), (row, column)
            frames = read_frames(case.path)
            assert len(frames) == case.frames
            assert [r.frame for r in frames] == list(range(case.frames))
            for frame in frames:
                _check_pixels(case, frame.pixels)
        else:
            for reader in (read_image, read_frames):
                with pytest.raises(MedlensError) as info:
                    reader(case.path)
                _check_error(case, info.value)
                assert isinstance(info.value, ImageReadError) and info.value.path == str(case.path)


@pytest.mark.parametrize(("name", "syntax"), [("dicom_jpeg_ls", JPEGLSLossless), ("dicom_htj2k", HTJ2KLossless)])
def test_undecodable_dicom_names_syntax_and_fix(corpus, name: str, syntax: str) -> None:
    decoder = get_decoder(UID(syntax))
    with pytest.raises(ImageReadError) as info:
        read_image(corpus[1][name].path)
    message = str(info.value)
    assert syntax in message or decoder.is_available  # the UID, unless a decoder found the data corrupt
    if not decoder.is_available:
        assert "no decoder installed; pip install " in message and "pylibjpeg" in message


def test_folder_scan_ends_and_skips_loops(corpus) -> None:
    folder, cases = corpus
    files = folder / "files"
    loops = cases["symlink_loop_folder"].path
    with deadline(20):
        found = list_images(files)
        from_loops = list_images(loops)  # "up" leads to files/: followed, each real folder once
    expected = {case.path for case in cases.values() if case.kind == "file" and case.listed}
    assert set(found) == expected | {loops / "inside.png"} and len(found) == len(set(found))
    assert loops / "inside.png" in from_loops
    real = [os.path.realpath(p) for p in from_loops]
    assert len(real) == len(set(real)) == len(found), "each real file listed exactly once"


# --------------------------------------------------------------------------- (b, c) one batch, nothing lost


def _good_images(phantom_dir: Path, target: Path) -> list[Path]:
    target.mkdir()
    sources = sorted((phantom_dir / "lesion").glob("*.png"))[:GOOD_IMAGES]
    return [Path(shutil.copy(source, target / f"good {i}.png")) for i, source in enumerate(sources)]


def _predict_and_check(run: Path, corpus, good: list[Path], out: Path, *extra: str) -> list[dict[str, str]]:
    folder, cases = corpus
    file_cases = [c for c in cases.values() if c.kind in ("file", "folder") and c.listed]
    loads = [c for c in file_cases if c.expect == "load"]
    errors = [c for c in file_cases if c.expect == "error"]
    expected_rows = {os.path.realpath(p): 1 for p in good}
    for case in loads:
        path = case.path / "inside.png" if case.kind == "folder" else case.path
        expected_rows[os.path.realpath(path)] = case.frames
    before = sum(expected_rows.values())
    assert before == GOOD_IMAGES + sum(c.frames for c in loads)

    with deadline(240):
        code = main(["predict", str(run), str(folder / "files"), *map(str, good), "--out", str(out), *extra])
    assert code == 0

    rows = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8")))
    got: dict[str, list[int]] = {}
    for row in rows:
        got.setdefault(os.path.realpath(row["path"]), []).append(int(row["frame"] or 0))
        probabilities = [float(v) for k, v in row.items() if k.startswith("p_")]
        assert all(np.isfinite(probabilities)) and sum(probabilities) == pytest.approx(1.0, abs=1e-4)
    assert {path: len(frames) for path, frames in got.items()} == expected_rows
    assert all(sorted(frames) == list(range(len(frames))) for frames in got.values())
    after = len(rows)
    assert before - after == 0, f"{before - after} good image(s)/frame(s) lost"

    listed = {r["path"]: r["error"] for r in csv.DictReader((out / "errors.csv").open(encoding="utf-8"))}
    assert set(listed) == {str(c.path) for c in errors}, "errors.csv must list exactly the bad files"
    for case in errors:
        reason = listed[str(case.path)]
        assert case.reason in reason.lower() and "\n" not in reason, (case.name, reason)
    return rows


def test_predict_batch_loses_nothing(tiny_run, phantom_dir, corpus, tmp_path) -> None:
    good = _good_images(phantom_dir, tmp_path / "good")
    _predict_and_check(tiny_run, corpus, good, tmp_path / "pred")


def test_predict_with_gradcam_loses_nothing(tiny_run, phantom_dir, corpus, tmp_path) -> None:
    good = _good_images(phantom_dir, tmp_path / "good")
    rows = _predict_and_check(tiny_run, corpus, good, tmp_path / "explained", "--explain", "gradcam")
    overlays = [value for row in rows for key, value in row.items() if key.endswith("_overlay")]
    assert len(overlays) == len(rows) and all(overlays), "every prediction must have its Grad-CAM overlay"
    assert all(Path(v).is_file() or (tmp_path / "explained" / v).is_file() for v in overlays)


# --------------------------------------------------------------------------- (d) dataset loaders


@pytest.mark.parametrize("name", _case_names("dataset", "manifest", "mask"))
def test_loader_case(corpus, name: str, caplog) -> None:
    case = corpus[1][name]
    if case.kind == "dataset":
        with pytest.raises(DatasetError) as info:
            load_dataset(DataConfig(kind="folder", root=str(case.path.parent)), seed=0)
        _check_error(case, info.value)
    elif case.kind == "manifest":  # the bad row is named and left out; the good rows train
        assert case.expect == "skip"
        with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
            dataset = load_dataset(DataConfig(kind="csv", root=str(case.path.parent), manifest=case.path.name,
                                              val_fraction=0.0, test_fraction=0.0), seed=0)
        assert dataset.report["rows_skipped"] == 1
        assert sum(len(source) for source in dataset.splits.values()) == len(case.path.read_text().splitlines()) - 2
        (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
        _check_error(case, DatasetError(warning.getMessage()), case.other)
    else:
        sample = SegSample(image_path=str(case.other), mask_path=str(case.path))
        for call in (lambda: load_pair(sample), lambda: check_sizes([sample])):
            with pytest.raises(ImageReadError) as info:
                call()
            _check_error(case, info.value, case.other)


# --------------------------------------------------------------------------- (e) the CLI on an empty class


def test_cli_train_on_empty_class_folder_is_one_line(corpus, tmp_path, capsys) -> None:
    case = corpus[1]["dataset_empty_class"]
    config = tmp_path / "empty_class.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"kind": "folder", "root": str(case.path.parent)},
        "model": {"backbone": "small_cnn", "weights": "none"},
    }))
    capsys.readouterr()
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medlens: error:") and "\n" not in err, err
    assert str(case.path) in err and case.reason in err.lower(), err
    assert not (tmp_path / "run" / "model.keras").exists()


@pytest.mark.parametrize("command", ["predict", "segment"])
def test_special_files_named_on_the_command_line(tiny_run, phantom_dir, tmp_path, capsys, command, request) -> None:
    """A FIFO or a link loop given directly never hangs a batch and gets the reader's reason."""
    run = tiny_run
    if command == "segment":
        run = request.getfixturevalue("tiny_seg_run")
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "loop_a.png").symlink_to(tmp_path / "loop_b.png")
    (tmp_path / "loop_b.png").symlink_to(tmp_path / "loop_a.png")
    good = sorted((phantom_dir / "lesion").iterdir())[0]
    with deadline(60):
        code = main([command, str(run), str(tmp_path / "pipe.png"), str(tmp_path / "loop_a.png"),
                     str(tmp_path / "absent.png"), str(good), "--out", str(tmp_path / "out")])
    assert code == 0
    reasons = {Path(row["path"]).name: row["error"]
               for row in csv.DictReader((tmp_path / "out" / "errors.csv").open(encoding="utf-8"))}
    assert "not a regular file" in reasons["pipe.png"] and "symbolic link loop" in reasons["loop_a.png"]
    assert reasons["absent.png"] == "no such file or folder" and len(reasons) == 3
    table = "predictions.csv" if command == "predict" else "segmentation.csv"
    assert len(list(csv.DictReader((tmp_path / "out" / table).open()))) == 1
