"""Run directories and atomic file writes.

A run directory holds everything one training run produced::

    RUN/config.yaml  model.keras  history.csv  metrics.json  model_card.md
        plots/  checkpoints/  predictions/

Every file is written to a temporary name in its own folder and renamed into
place, so a crash never leaves a half-written file where a complete one was.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

from medlens.pipelines.errors import RunDirError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2  # of run.json and metrics.json; readers accept every earlier one

__all__ = [
    "SCHEMA_VERSION",
    "threshold_record",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_write_csv",
    "prepare_output_dir",
    "RunDir",
]


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (how batch commands recognise unchanged inputs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write strict JSON (no NaN) atomically, indented for people to read."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


def atomic_write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Write a CSV file atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def prepare_output_dir(path: str | Path, *, overwrite: bool = False, what: str = "output folder") -> Path:
    """Create ``path`` for new outputs, refusing to clobber a non-empty folder.

    Raises:
        RunDirError: the folder exists, is not empty and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{path}: exists and is not a folder")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise RunDirError(
            f"{path}: {what} already exists and is not empty; pass --overwrite to replace it "
            "or choose another --out"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunDir:
    """Paths inside one run directory, and checks that it is complete.

    Example:
        >>> run = RunDir("runs/demo")
        >>> run.model_path.name
        'model.keras'
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def config_path(self) -> Path:
        return self.root / "config.yaml"

    @property
    def model_path(self) -> Path:
        return self.root / "model.keras"

    @property
    def history_path(self) -> Path:
        return self.root / "history.csv"

    @property
    def metrics_path(self) -> Path:
        return self.root / "metrics.json"

    @property
    def card_path(self) -> Path:
        return self.root / "model_card.md"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def state_path(self) -> Path:
        """Facts later commands need: class names, threshold, backbone, image size."""
        return self.root / "run.json"

    def create(self, *, overwrite: bool = False) -> RunDir:
        prepare_output_dir(self.root, overwrite=overwrite, what="run directory")
        self.plots.mkdir(exist_ok=True)
        self.checkpoints.mkdir(exist_ok=True)
        return self

    def require(self) -> RunDir:
        """Raise :class:`RunDirError` unless this is a finished run directory."""
        if not self.root.is_dir():
            raise RunDirError(f"{self.root}: run directory not found")
        for needed in (self.config_path, self.model_path, self.state_path):
            if not needed.is_file():
                raise RunDirError(
                    f"{self.root}: not a finished run directory ({needed.name} is missing); "
                    "train one with `medlens train`"
                )
        return self

    def write_config(self, config: dict[str, Any]) -> None:
        atomic_write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config_path.read_text()) or {}

    def write_state(self, state: dict[str, Any]) -> None:
        atomic_write_json(self.state_path, {"schema": SCHEMA_VERSION, **state})

    def read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self.state_path.read_text())
        except (OSError, ValueError) as exc:
            raise RunDirError(f"{self.state_path}: unreadable ({exc})") from None

    def identity(self) -> str:
        """Names this trained model in derived UIDs: its folder and when it was trained.

        DICOM objects made from the same input by the same run get the same UIDs, so pushing a
        re-run to a PACS adds no duplicates; a retrained run (new ``created``) makes new ones.
        """
        created = self.read_state().get("created", "") if self.state_path.is_file() else ""
        return f"{self.root.resolve()}|{created}"

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` in the current shape (``{}`` when absent); older shapes are upgraded.

        Schema 1 (medlens 0.1) wrote a segmentation run's threshold as a bare number; every
        schema-2 file has ``threshold: {value, method, chosen_on}`` whatever the task.
        """
        if not self.metrics_path.is_file():
            return {}
        try:
            metrics = json.loads(self.metrics_path.read_text())
        except ValueError:
            log.warning("%s was unreadable and is rewritten", self.metrics_path)
            return {}
        if metrics.get("schema", 1) < 2:
            threshold = metrics.get("threshold")
            if threshold is None or isinstance(threshold, (int, float)):
                method = self.read_state().get("threshold_method", "") if self.state_path.is_file() else ""
                metrics["threshold"] = threshold_record(threshold, method)
            metrics["schema"] = SCHEMA_VERSION
        return metrics

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        """Write ``metrics.json`` with the current ``schema`` number first."""
        atomic_write_json(self.metrics_path, {"schema": SCHEMA_VERSION,
                                              **{k: v for k, v in metrics.items() if k != "schema"}})


def threshold_record(value: float | None, method: str) -> dict[str, Any]:
    """``{value, method, chosen_on}`` from a threshold and how it was chosen.

    ``method`` is a task's own wording ("youden", "best_dice on validation", "fixed"):
    a fixed threshold comes from the config, every other one from the validation split.
    """
    name = (method or "unknown").replace(" on validation", "")
    chosen_on = "config" if name in ("fixed", "0.5") else "val"
    return {"value": value, "method": name, "chosen_on": chosen_on}
