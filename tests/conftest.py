"""Shared fixtures: the real-data root, tiny phantom datasets, and one tiny trained run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Tests never reach the internet: ImageNet downloads fail fast with our own error.
os.environ["MEDLENS_OFFLINE"] = "1"

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``$MEDLENS_DATA`` or ``../shared/data`` beside the repository; CI has it, so no skipping."""
    root = Path(os.environ.get("MEDLENS_DATA") or REPO.parent / "shared" / "data").resolve()
    assert (root / "medmnist").is_dir(), f"shared datasets not found at {root}; set MEDLENS_DATA"
    return root


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """120 small phantoms (64 px) with masks and a manifest."""
    from medlens.pipelines.phantoms import write_phantoms

    folder = tmp_path_factory.mktemp("phantoms")
    write_phantoms(folder, count=120, size=64, seed=3)
    return folder


def tiny_config(phantom_folder: Path, **overrides):
    """A config that trains in seconds: small CNN, 48 px, few epochs."""
    from medlens.pipelines.config import load_config

    tree = {
        "name": "tiny",
        "seed": 5,
        "data": {
            "kind": "csv",
            "root": str(phantom_folder),
            "manifest": "manifest.csv",
            "class_names": ["no_lesion", "lesion"],
            "image_size": [48, 48],
            "batch_size": 16,
            "val_fraction": 0.2,
            "test_fraction": 0.2,
        },
        "model": {"backbone": "small_cnn", "weights": "none", "dense_units": 16, "dropout": 0.1},
        "train": {
            "phase1": {"epochs": 2, "learning_rate": 0.003, "unfreeze_blocks": -1},
            "phase2": {"epochs": 1, "learning_rate": 0.0005, "unfreeze_blocks": 1},
        },
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        tree[section][name] = value
    return load_config(tree)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, phantom_dir) -> Path:
    """One finished run directory, trained once per session and shared by read-only tests."""
    from medlens.pipelines.train import train

    run = tmp_path_factory.mktemp("runs") / "tiny"
    train(tiny_config(phantom_dir), run)
    return run


@pytest.fixture(scope="session")
def tiny_seg_run(tmp_path_factory, phantom_dir) -> Path:
    """A finished segmentation run (tiny U-Net, two epochs on the phantoms' lesion masks)."""
    from medlens.pipelines.config import load_config
    from medlens.pipelines.train import train

    cfg = load_config({
        "task": "segmentation", "name": "tiny-seg", "seed": 5,
        "data": {"kind": "csv", "root": str(phantom_dir), "manifest": "manifest.csv",
                 "columns": {"image": "path", "mask": "mask"}, "mode": "whole", "image_size": [32, 32],
                 "channels": 1, "batch_size": 16},
        "model": {"depth": 2, "filters": 4},
        "train": {"phase1": {"epochs": 2, "learning_rate": 0.003}},
    })
    run = tmp_path_factory.mktemp("runs") / "tiny-seg"
    train(cfg, run)
    return run


# ---------------------------------------------------------------------------------------------- scheduling
# pytest-xdist (``--dist loadfile``) hands whole files to the workers in collection order, and by default
# reorders them by test count: the cluster files, few tests but minutes each, came last and ran as a
# minutes-long tail on one core. Ordering the files by their measured seconds, longest first
# (``tests/durations.json``; a file not in it counts as long, so a new file is not left to the end),
# lets each worker take the next-longest file as it frees up. ``--no-loadscope-reorder`` in addopts keeps
# this order. Refresh the file with ``MEDLENS_TEST_DURATIONS=tests/durations.json python -m pytest``.
_DURATIONS = Path(__file__).with_name("durations.json")
_UNKNOWN_SECONDS = 60.0


def _file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(session, config, items) -> None:
    import json

    try:
        seconds = json.loads(_DURATIONS.read_text())
    except (OSError, ValueError):
        return
    # A stable sort: the tests of one file stay together and in their own order.
    items.sort(key=lambda item: -float(seconds.get(_file_of(item.nodeid), _UNKNOWN_SECONDS)))


_measured: dict[str, float] = {}


def pytest_runtest_logreport(report) -> None:
    if os.environ.get("MEDLENS_TEST_DURATIONS"):
        key = _file_of(report.nodeid)
        _measured[key] = _measured.get(key, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus) -> None:
    target = os.environ.get("MEDLENS_TEST_DURATIONS")
    if not target or hasattr(session.config, "workerinput") or not _measured:
        return  # a worker's reports also reach the controller, which writes the file once
    import json

    ordered = dict(sorted(((k, round(v, 1)) for k, v in _measured.items()), key=lambda kv: -kv[1]))
    path = Path(target)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(ordered, indent=1) + "\n")
    partial.replace(path)
