"""Batch prediction with a trained run: files, folders, DICOM series, NIfTI volumes.

Every input is expanded to images (a folder to its image files, a multi-frame
DICOM or a NIfTI volume to its frames), read, predicted in batches, and
written to ``predictions.csv``. A file that cannot be read is listed in
``errors.csv`` with the reason and the rest of the batch goes on: one bad
study never costs the good ones.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.calibration import apply_temperature
from medlens.pipelines.data import prepare_image
from medlens.pipelines.errors import ImageReadError, MedlensError
from medlens.pipelines.evaluate import to_probabilities
from medlens.pipelines.explain import Explainer, ExplainOptions, column_names
from medlens.pipelines.io import ImageRecord, list_images, read_frames, sniff_format
from medlens.pipelines.run_eval import load_run_model
from medlens.pipelines.rundir import (
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    file_sha256,
    prepare_output_dir,
)
from medlens.pipelines.shards import select_shard, shard_folder, write_shard_manifest
from medlens.pipelines.tasks import require_command

__all__ = ["PredictResult", "Predictor", "expand_inputs", "predict_paths", "read_records"]

log = logging.getLogger(__name__)

_MULTI_FRAME_FORMATS = ("dicom", "nifti")


@dataclass
class PredictResult:
    """What a prediction batch produced."""

    out_dir: Path
    predictions_csv: Path
    errors_csv: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0


def expand_inputs(inputs: Iterable[str | Path]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Turn files and folders into a sorted, de-duplicated list of image files.

    Returns:
        ``(files, errors)``; ``errors`` lists inputs that do not exist or hold no images.
    """
    files: list[Path] = []
    errors: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            try:
                found = list_images(path)
            except MedlensError as exc:
                errors.append((str(path), str(exc)))
                continue
            if not found:
                errors.append((str(path), "folder contains no supported image files"))
            candidates = found
        elif path.is_file() or path.is_symlink() or path.exists():
            candidates = [path]  # a link loop, a FIFO…: the reader says what is wrong with it
        else:
            errors.append((str(path), "no such file or folder"))
            continue
        for candidate in candidates:
            key = Path(os.path.realpath(candidate))  # unlike Path.resolve, never raises on a link loop
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files, errors


class Predictor:
    """A loaded run, ready to predict batches of images.

    Example:
        predictor = Predictor("runs/demo")
        probabilities = predictor.predict_pixels([record.pixels])
    """

    def __init__(self, run_dir: str | Path, model: keras.Model | None = None):
        self.run = RunDir(run_dir).require()
        self.state = self.run.read_state()
        require_command(self.state, self.run.root, "predict")
        self.model = model if model is not None else load_run_model(self.run.root)
        self.class_names: list[str] = list(self.state["class_names"])
        self.image_size = tuple(self.state["image_size"])
        self.threshold: float | None = self.state.get("threshold")
        # Runs from before calibration existed have no temperature: their outputs are used as they are.
        self.temperature = float(self.state.get("temperature", 1.0))
        self.preprocess = preprocess_function(self.state["backbone"])

    def resize(self, pixels_list: list[np.ndarray]) -> np.ndarray:
        """Images (``H×W×C`` in [0, 1]) at the model size as one ``N×H×W×3`` batch in ``0..255``."""
        return np.stack([prepare_image(p, self.image_size) for p in pixels_list]).astype(np.float32)

    def prepare(self, pixels_list: list[np.ndarray]) -> np.ndarray:
        """Resize and preprocess images (``H×W×C`` in [0, 1]) into one model batch."""
        return self.preprocess(self.resize(pixels_list))

    def calibrate(self, output: np.ndarray) -> np.ndarray:
        """The model's raw output (N×1 or N×K) as calibrated ``N×K`` probabilities."""
        return apply_temperature(to_probabilities(np.asarray(output), len(self.class_names)), self.temperature)

    def predict_pixels(self, pixels_list: list[np.ndarray]) -> np.ndarray:
        """Calibrated probabilities ``N×K`` for a list of images."""
        return self.calibrate(self.model.predict_on_batch(self.prepare(pixels_list)))

    def label_for(self, probabilities: np.ndarray) -> str:
        """The predicted class name: the validation threshold for binary runs, argmax otherwise."""
        if len(self.class_names) == 2:
            threshold = 0.5 if self.threshold is None else self.threshold
            return self.class_names[int(probabilities[1] >= threshold)]
        return self.class_names[int(np.argmax(probabilities))]


def read_records(files: list[Path], errors: list[tuple[str, str]]) -> Iterator[ImageRecord]:
    """Read each file (every frame of DICOM and NIfTI volumes); unreadable ones go to ``errors``."""
    for path in files:
        try:
            fmt = sniff_format(path)
            if fmt == "npz":
                raise ImageReadError(path, "an .npz dataset is not an image; train or evaluate on it instead")
            records = read_frames(path) if fmt in _MULTI_FRAME_FORMATS else read_frames(path)[:1]
        except MedlensError as exc:
            errors.append((str(path), getattr(exc, "reason", str(exc))))
            continue
        except Exception as exc:  # a reader bug must not lose the rest of the batch
            log.exception("unexpected error reading %s", path)
            errors.append((str(path), f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        yield from records


def predict_paths(
    run_dir: str | Path,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    batch_size: int = 32,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
    predictor: Predictor | None = None,
    explain: ExplainOptions | None = None,
    explainer: Explainer | None = None,
    resume: bool = False,
    flush_every: int = 20,
    shard: tuple[int, int] | None = None,
) -> PredictResult:
    """Predict every image under ``inputs`` and write ``predictions.csv`` and ``errors.csv``.

    ``predictions.csv`` columns: ``path, frame, sha256, label, p_<class>…, threshold``.
    ``errors.csv`` columns: ``path, error`` (header only when nothing failed).
    ``predictions.json`` holds the same rows plus, with ``explain``, per-image details
    (LIME superpixel weights and top regions) and the time each method took.
    With ``explain``, overlays and maps go to ``out_dir/explanations/`` and their
    paths and summaries are added as columns (see :func:`medlens.pipelines.explain.column_names`).

    Args:
        run_dir: a finished run directory.
        inputs: image files, folders (searched recursively), DICOM or NIfTI files.
        out_dir: output folder; must be new or empty unless ``overwrite``.
        batch_size: images per forward pass.
        overwrite: allow writing into a non-empty ``out_dir``.
        progress: called with the number of files finished since the last call.
        predictor: reuse an already loaded :class:`Predictor`.
        explain: also explain every image (Grad-CAM, Grad-CAM++, LIME).
        explainer: reuse an already built :class:`Explainer` (its options replace ``explain``).
        resume: keep the rows of an earlier run into ``out_dir`` whose input file has the same
            SHA-256 (content, not name) and whose explanation files are still there; predict the rest.
        flush_every: rewrite the tables after this many batches, so an interrupted batch can resume.
        shard: ``(I, N)``: process only shard I of N and write to ``out_dir/shard-I-of-N``
            (see :mod:`medlens.pipelines.shards`; ``medlens merge`` joins the shards).
    """
    predictor = predictor or Predictor(run_dir)
    out = prepare_output_dir(shard_folder(out_dir, shard), overwrite=overwrite or resume)
    if explainer is not None:
        explainer.retarget(out)
        explain = explainer.options
    elif explain is not None:
        explainer = Explainer(predictor, explain, out)
    everything, errors = expand_inputs(inputs)
    files, positions = select_shard(everything, shard)  # sorted: the same order sharded or not
    order = {str(path): index for index, path in enumerate(files)}
    previous = _previous_rows(out, explain) if resume else {}
    digests: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    pending: list[ImageRecord] = []
    kept = 0

    def flush() -> None:
        if not pending:
            return
        extra: list[dict[str, Any]] = [{} for _ in pending]
        probabilities = None
        if explainer is not None:
            try:
                probabilities, extra = explainer.explain(pending)
            except Exception as exc:  # an explanation bug must not cost the predictions
                log.exception("explaining a batch failed")
                reason = f"explanation failed: {getattr(exc, 'reason', exc)}".splitlines()[0]
                errors.extend((r.path if r.frame is None else f"{r.path}#{r.frame}", reason) for r in pending)
        if probabilities is None:
            probabilities = predictor.predict_pixels([r.pixels for r in pending])
        for record, probs, fields in zip(pending, probabilities, extra, strict=True):
            row: dict[str, Any] = {
                "path": record.path,
                "frame": "" if record.frame is None else record.frame,
                "sha256": digests.get(record.path, ""),
                "label": predictor.label_for(probs),
            }
            row.update({f"p_{name}": round(float(p), 6) for name, p in zip(predictor.class_names, probs, strict=True)})
            row["threshold"] = "" if predictor.threshold is None else round(float(predictor.threshold), 6)
            row.update(fields)
            rows.append(row)
        pending.clear()

    header = ["path", "frame", "sha256", "label", *[f"p_{n}" for n in predictor.class_names], "threshold"]
    if explain is not None:
        header += column_names(explain)

    def write_tables() -> Path:
        rows.sort(key=lambda r: (order.get(str(r["path"]), len(order)), int(r["frame"] or 0)))
        table = atomic_write_csv(out / "predictions.csv", header, ([r.get(h, "") for h in header] for r in rows))
        _write_json(out, predictor, explain, explainer, rows, errors)
        return table

    batches = 0
    for path in files:
        try:
            digests[str(path)] = file_sha256(path) if path.is_file() else ""
        except OSError:
            digests[str(path)] = ""
        earlier = previous.get(os.path.realpath(path), [])
        if earlier and digests[str(path)] and all(r.get("sha256") == digests[str(path)] for r in earlier):
            rows.extend({**row, "path": str(path)} for row in earlier)  # named as in this run
            kept += 1
            if progress:
                progress(1)
            continue
        for record in read_records([path], errors):
            pending.append(record)
            if len(pending) >= batch_size:
                flush()
                batches += 1
                if batches % flush_every == 0:
                    write_tables()
        if progress:
            progress(1)
    flush()
    predictions_csv = write_tables()
    if shard is not None:
        write_shard_manifest(out, shard, files, positions, len(everything), "predict")
    errors_csv = atomic_write_csv(out / "errors.csv", ["path", "error"], errors)
    if errors:
        log.warning("%d input(s) could not be read; see %s", len(errors), errors_csv)
    if kept:
        log.info("%d file(s) unchanged since the last run into %s: kept", kept, out)
    return PredictResult(out, predictions_csv, errors_csv, rows, errors, kept)


def _previous_rows(out: Path, explain: ExplainOptions | None) -> dict[str, list[dict[str, Any]]]:
    """Rows of an earlier ``predictions.json`` in ``out`` whose explanation files still exist, by input path.

    Rows explained with other methods than now are not reused (their columns would be missing).
    """
    table = out / "predictions.json"
    if not table.is_file():
        return {}
    try:
        earlier = json.loads(table.read_text())
    except ValueError:
        return {}
    methods = sorted((earlier.get("explain") or {}).get("methods") or [])
    if methods != sorted(explain.methods if explain else []):
        return {}
    base = earlier.get("inputs_relative_to") or "."
    kept: dict[str, list[dict[str, Any]]] = {}
    for row in earlier.get("rows", []):
        files = [v for k, v in row.items() if k.endswith(("_overlay", "_map")) and v]
        if all((out / f).is_file() for f in files):
            path = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
            kept.setdefault(os.path.realpath(path), []).append(row)
    return kept


def _write_json(out: Path, predictor: Predictor, explain: ExplainOptions | None, explainer: Explainer | None,
                rows: list[dict[str, Any]], errors: list[tuple[str, str]]) -> None:
    atomic_write_json(out / "predictions.json", {
        "run": str(predictor.run.root.resolve()),
        "inputs_relative_to": str(Path.cwd()),
        "class_names": predictor.class_names,
        "threshold": predictor.threshold,
        "explain": None if explainer is None else {
            "methods": list(explain.methods),
            "class": explain.class_name,
            "lime_samples": explain.lime_samples if "lime" in explain.methods else None,
            "seed": explain.seed,
            "seconds": {m: round(t, 3) for m, t in explainer.seconds.items()},
        },
        "rows": rows,
        "errors": [{"path": p, "error": e} for p, e in errors],
    })
