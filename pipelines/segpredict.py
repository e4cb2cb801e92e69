"""Batch segmentation with a trained run: files, folders, DICOM series, NIfTI volumes.

Every input is expanded to images (folders recursively, multi-frame DICOM and NIfTI to
their frames), predicted at its own size (sliding-window tiles with Gaussian blending, or a
resize for whole-image models, see :class:`~medlens.pipelines.segtrain.SegModel`), and
written under the output folder:

- ``masks/NAME-HASH.png``: the thresholded mask, 0/255 (class indices for multi-class
  runs), the same size as the input;
- ``probabilities/NAME-HASH.png``: the foreground probability as a 16-bit PNG (0..65535);
- ``overlays/NAME-HASH.png``: the mask tinted and outlined on the original (RGB);
- with ``explain``, ``explanations/NAME-HASH.seg-gradcam.png``: Seg-Grad-CAM of the
  predicted mask;
- ``segmentation.csv``: ``path, frame, sha256, mask, probability, overlay,
  foreground_fraction, foreground_pixels, components, largest_component, seconds`` (and
  ``explanation``); ``errors.csv``: every input that could not be read or segmented.

``resume`` keeps the rows of an earlier run into the same folder whose input file has the
same SHA-256 (content, not name) and whose outputs are still there, and segments the rest;
``segmentation.csv`` is rewritten every few files, so an interrupted batch loses little.
"""

from __future__ import annotations

import csv
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.pipelines.errors import MedlensError
from medlens.pipelines.io import ImageRecord, read_image
from medlens.pipelines.overlay import heatmap_overlay, mask_overlay, save_png
from medlens.pipelines.predict import expand_inputs, read_records
from medlens.pipelines.rundir import atomic_write_csv, atomic_write_json, file_sha256, prepare_output_dir
from medlens.pipelines.segment import binarize, mask_stats, postprocess
from medlens.pipelines.segtrain import SegModel
from medlens.pipelines.shards import select_shard, shard_folder, write_shard_manifest

__all__ = ["SegmentResult", "segment_paths", "COLUMNS", "file_sha256"]

log = logging.getLogger(__name__)

COLUMNS = ["path", "frame", "sha256", "mask", "probability", "overlay", "foreground_fraction",
           "foreground_pixels", "components", "largest_component", "seconds"]
_EXPLAIN_SIDE = 1024  # Seg-Grad-CAM runs on a copy whose longer side is at most this


@dataclass
class SegmentResult:
    """What a segmentation batch produced."""

    out_dir: Path
    csv_path: Path
    errors_csv: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    skipped: int = 0


def _stem(record: ImageRecord, digest: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(record.path).stem)[:60] or "image"
    frame = "" if record.frame in (None, 0) else f"-f{int(record.frame):04d}"
    return f"{name}-{digest[:8]}{frame}"


def _previous_rows(out: Path) -> dict[str, list[dict[str, str]]]:
    """Rows of an earlier ``segmentation.csv`` whose outputs all still exist, by input path."""
    table = out / "segmentation.csv"
    if not table.is_file():
        return {}
    kept: dict[str, list[dict[str, str]]] = {}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            outputs = [row.get(k, "") for k in ("mask", "probability", "overlay", "explanation") if row.get(k)]
            if all((out / p).is_file() for p in outputs):
                kept.setdefault(os.path.realpath(row["path"]), []).append(row)
    return kept


class _Explainer:
    """Seg-Grad-CAM of the predicted mask, on a copy no larger than ``_EXPLAIN_SIDE``."""

    def __init__(self, model: SegModel):
        from medlens.pipelines.seg_gradcam import SegGradCAM

        self.model = model
        self.cam = SegGradCAM(model.model, threshold=model.threshold)

    def __call__(self, pixels: np.ndarray, mask: np.ndarray) -> np.ndarray:
        x = self.model.model_input(pixels)
        height, width = x.shape[:2]
        scale = min(1.0, _EXPLAIN_SIDE / max(height, width))
        multiple = self.model.multiple
        new_h = max(multiple, int(round(height * scale / multiple)) * multiple)
        new_w = max(multiple, int(round(width * scale / multiple)) * multiple)
        small = cv2.resize(x, (new_w, new_h), interpolation=cv2.INTER_AREA)
        small = small[..., None] if small.ndim == 2 else small
        region = cv2.resize((mask > 0).astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return self.cam(small[None], region[None]).maps[0]


def segment_paths(
    run_dir: str | Path,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    explain: bool = False,
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
    model: SegModel | None = None,
    flush_every: int = 10,
    shard: tuple[int, int] | None = None,
    expanded: tuple[list[Path], list[tuple[str, str]]] | None = None,
) -> SegmentResult:
    """Segment every image under ``inputs`` and write masks, probabilities, overlays and CSVs.

    Args:
        run_dir: A finished segmentation run.
        inputs: Image files, folders (searched recursively), DICOM or NIfTI files.
        out_dir: Output folder: new or empty, or any with ``overwrite`` or ``resume``.
        overwrite: Write into a non-empty folder (files of the same name are replaced).
        resume: Keep earlier results for inputs whose content is unchanged; do the rest.
        explain: Also write a Seg-Grad-CAM overlay of each predicted mask.
        threshold: Override the run's probability threshold.
        progress: Called with 1 for every input file finished.
        model: Reuse an already loaded :class:`SegModel`.
        flush_every: Rewrite ``segmentation.csv`` after this many files.
        shard: ``(I, N)``: only shard I of N, into ``out_dir/shard-I-of-N`` (see
            :mod:`medlens.pipelines.shards`).
        expanded: ``expand_inputs(inputs)`` already computed by the caller (the CLI sizes its
            progress bar with it), so the inputs are walked once.

    Raises:
        RunDirError: Not a finished segmentation run, or ``out_dir`` is not empty.
    """
    model = model or SegModel(run_dir)
    threshold = model.threshold if threshold is None else float(threshold)
    out = prepare_output_dir(shard_folder(out_dir, shard), overwrite=overwrite or resume)
    previous = _previous_rows(out) if resume else {}
    explainer = _Explainer(model) if explain else None
    everything, errors = expand_inputs(inputs) if expanded is None else (list(expanded[0]), list(expanded[1]))
    files, positions = select_shard(everything, shard)
    columns = COLUMNS + (["explanation"] if explain else [])
    rows: list[dict[str, Any]] = []
    skipped = 0

    def flush() -> Path:
        return atomic_write_csv(out / "segmentation.csv", columns, ([r.get(c, "") for c in columns] for r in rows))

    for count, path in enumerate(files, start=1):
        try:
            if not path.is_file():  # a FIFO would block the hash; the reader names the problem
                read_image(path)
            digest = file_sha256(path)
        except (OSError, MedlensError) as exc:
            errors.append((str(path), getattr(exc, "reason", None) or f"cannot read: {exc.strerror or exc}"))
            if progress:
                progress(1)
            continue
        earlier = previous.get(os.path.realpath(path), [])
        if earlier and all(r.get("sha256") == digest for r in earlier) and (not explain or all(
                r.get("explanation") for r in earlier)):
            rows.extend(earlier)
            skipped += 1
            if progress:
                progress(1)
            continue
        for record in read_records([path], errors):
            try:
                rows.append(_segment_one(model, record, digest, out, threshold, explainer))
            except (MedlensError, ValueError) as exc:
                errors.append((record.path if record.frame in (None, 0) else f"{record.path}#{record.frame}",
                               str(getattr(exc, "reason", exc)).splitlines()[0]))
            except Exception as exc:  # a model failure on one image must not lose the batch
                log.exception("segmenting %s failed", record.path)
                errors.append((record.path, f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]))
        if progress:
            progress(1)
        if count % flush_every == 0:
            flush()
    csv_path = flush()
    errors_csv = atomic_write_csv(out / "errors.csv", ["path", "error"], errors)
    atomic_write_json(out / "segmentation.json", {"run": str(model.run.root.resolve()),
                                                  "inputs_relative_to": str(Path.cwd()), "threshold": threshold,
                                                  "images": len(rows), "errors": len(errors), "kept": skipped})
    if shard is not None:
        write_shard_manifest(out, shard, files, positions, len(everything), "segment")
    if errors:
        log.warning("%d input(s) could not be segmented; see %s", len(errors), errors_csv)
    return SegmentResult(out, csv_path, errors_csv, rows, errors, skipped)


def _segment_one(model: SegModel, record: ImageRecord, digest: str, out: Path, threshold: float,
                 explainer: _Explainer | None) -> dict[str, Any]:
    started = time.perf_counter()
    prob = model.probability(record.pixels)
    if prob.ndim == 3:  # several classes: the argmax is the mask, "foreground" is not background
        indices = prob.argmax(axis=-1).astype(np.uint8)
        foreground = 1.0 - prob[..., 0]
        binary = postprocess(indices > 0, model.min_size)
        mask_image = indices * binary
    else:
        foreground = prob
        binary = postprocess(binarize(prob, threshold), model.min_size)
        mask_image = binary * np.uint8(255)
    stem = _stem(record, digest)
    mask_path = save_png(out / "masks" / f"{stem}.png", mask_image.astype(np.uint8))
    prob_path = save_png(out / "probabilities" / f"{stem}.png",
                         np.rint(np.clip(foreground, 0, 1) * 65535).astype(np.uint16))
    overlay_path = save_png(out / "overlays" / f"{stem}.png", mask_overlay(record.pixels, binary))
    row: dict[str, Any] = {
        "path": record.path,
        "frame": "" if record.frame is None else record.frame,
        "sha256": digest,
        "mask": mask_path.relative_to(out).as_posix(),
        "probability": prob_path.relative_to(out).as_posix(),
        "overlay": overlay_path.relative_to(out).as_posix(),
        **mask_stats(binary),
    }
    row["foreground_fraction"] = round(row["foreground_fraction"], 6)
    if explainer is not None:
        cam = explainer(record.pixels, binary)
        explanation = save_png(out / "explanations" / f"{stem}.seg-gradcam.png", heatmap_overlay(record.pixels, cam))
        row["explanation"] = explanation.relative_to(out).as_posix()
    row["seconds"] = round(time.perf_counter() - started, 4)
    return row
