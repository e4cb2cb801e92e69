"""Batch segmentation with a trained run: files, folders, DICOM series, NIfTI volumes.

Every input is expanded to images (folders recursively, multi-frame DICOM and NIfTI to
their frames), predicted at its own size (sliding-window tiles with Gaussian blending, or a
resize for whole-image models, see :class:`~medlens.pipelines.segtrain.SegModel`), and
written under the output folder:

- ``masks/NAME-HASH.png`` (``NAME-HASH-fNNNN.png`` for a frame or slice; the one naming
  rule of :func:`~medlens.pipelines.inference.output_stem`): the thresholded mask, 0/255
  (class indices for multi-class runs), the same size as the input;
- ``probabilities/NAME-HASH.png``: the foreground probability as a 16-bit PNG (0..65535);
- ``overlays/NAME-HASH.png``: the mask tinted and outlined on the original (RGB);
- with ``explain``, ``explanations/NAME-HASH.SLUG.png`` and ``.npy``: each method's map of
  the predicted mask (Seg-Grad-CAM, ``seggradcam``, by default; the input-saliency methods
  on request), overlaid on the original;
- for each **volume** (a NIfTI volume, a multi-frame DICOM, or a DICOM series: single-frame
  files of one series, ordered by position, see :mod:`medlens.pipelines.volumes`):
  ``volumes/NAME-HASH.nii.gz`` (the label map on the input's voxel grid), for DICOM input
  ``volumes/NAME-HASH.seg.dcm`` (a DICOM SEG referencing every source instance) and
  ``volumes/NAME-HASH.sr.dcm`` (a TID 1500 measurement report of each segment's volume), with
  ``probability_volumes`` ``volumes/NAME-HASH.probability.nii.gz``; one row each in
  ``volumes.csv`` (:data:`VOLUME_COLUMNS`);
- ``segmentation.csv``: ``path, frame, sha256, mask, probability, overlay,
  foreground_fraction, foreground_pixels, components, largest_component, seconds`` (and
  ``explanation``, the first method's overlay, and ``SLUG_overlay, SLUG_map, SLUG_inside``
  per method); ``errors.csv``: every input that could not be read or segmented;
- ``segmentation.json``: counts, ``complete``, and the output ``layout``
  (:class:`~medlens.pipelines.inference.OutputLayout`: which columns name files), rewritten
  with every flush.

``resume`` keeps the rows of an earlier run into the same folder whose input file has the
same SHA-256 (content, not name) and whose outputs are still there, and segments the rest;
``segmentation.csv`` is rewritten every few files, so an interrupted batch loses little.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.dicom_results import write_dicom_seg
from medlens.pipelines.errors import MedlensError
from medlens.pipelines.explain.overlay import mask_overlay, save_png
from medlens.pipelines.explain.segmentation import MaskExplainer, segmentation_methods
from medlens.pipelines.imaging import ImageRecord
from medlens.pipelines.inference import OutputLayout, output_stem, volume_stem
from medlens.pipelines.inference.batch import (
    BatchResult,
    BatchWork,
    case_files,
    case_name,
    earlier_rows,
    read_summary,
    run_batch,
)
from medlens.pipelines.inference.inputs import expand_inputs, read_records
from medlens.pipelines.inference.masks import binarize, mask_stats, postprocess
from medlens.pipelines.rundir import atomic_write_csv, atomic_write_json, file_sha256, prepare_output_dir
from medlens.pipelines.scale import require_scale, scale_factor
from medlens.pipelines.seg_model import SegModel
from medlens.pipelines.shards import shard_folder
from medlens.pipelines.volumes import (
    Series,
    Volume,
    group_series,
    read_volume,
    volume_digest,
    voxel_ml,
    write_mask_volume,
)

__all__ = ["segment_paths", "segmentation_methods", "COLUMNS", "VOLUME_COLUMNS", "file_sha256"]

log = logging.getLogger(__name__)

COLUMNS = ["path", "frame", "sha256", "mask", "probability", "overlay", "foreground_fraction",
           "foreground_pixels", "components", "largest_component", "seconds"]
VOLUME_COLUMNS = ["path", "kind", "sha256", "first_file", "slices", "shape", "mask_volume", "seg", "report",
                  "probability_volume", "foreground_voxels", "foreground_ml", "slices_with_foreground", "note"]
VOLUME_FILE_COLUMNS = ["mask_volume", "seg", "report", "probability_volume"]


def layout(columns: Sequence[str], explanation_files: Sequence[str] = ()) -> OutputLayout:
    """``segment``'s output layout: a ``segmentation.csv`` with ``columns``, the explainer's file columns."""
    return OutputLayout("segment", "segmentation.csv", "segmentation.json", list(columns),
                        ["mask", "probability", "overlay", *explanation_files],
                        volume_columns=list(VOLUME_COLUMNS), volume_file_columns=list(VOLUME_FILE_COLUMNS))


def _previous_volumes(out: Path, current: OutputLayout, summary: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Rows of an earlier ``volumes.csv`` whose volume files all still exist, by their first file's real path.

    The first file is resolved against the folder the earlier batch ran from (``inputs_relative_to``),
    so a batch resumed from another folder keeps its volumes as it keeps its rows.
    """
    table = out / "volumes.csv"
    if not table.is_file():
        return {}
    base = summary.get("inputs_relative_to") or "."
    with open(table, newline="", encoding="utf-8") as handle:
        return {os.path.realpath(os.path.join(base, row["first_file"])): row for row in csv.DictReader(handle)
                if row.get("first_file") and current.outputs_present(row, out, volume=True)}


def write_volume_outputs(volume: Volume, slices: list[tuple[np.ndarray, np.ndarray] | None], out: Path,
                         digest: str, model: SegModel, *, probability: bool, first_file: str,
                         deidentifier: Any = None) -> dict[str, Any]:
    """Write a volume case's mask (NIfTI; DICOM SEG for DICOM input) and return its ``volumes.csv`` row.

    A slice that failed leaves the volume incomplete: no volume file is written and ``note``
    says which slices are missing (their errors are in ``errors.csv``).
    """
    shape = volume.records[0].pixels.shape[:2]
    row: dict[str, Any] = dict.fromkeys(VOLUME_COLUMNS, "")
    row.update(path=volume.path, kind=volume.kind, sha256=digest, first_file=first_file, slices=len(volume.records),
               shape=f"{shape[0]}x{shape[1]}x{len(volume.records)}")
    missing = [k for k, item in enumerate(slices) if item is None]
    if missing:
        row["note"] = f"no volume written: slice(s) {', '.join(map(str, missing[:10]))} failed"
        return row
    masks = [mask for mask, _ in slices]
    stem = volume_stem(volume.path, digest, series=volume.kind == "dicom-series")
    row["mask_volume"] = write_mask_volume(volume, masks, out / "volumes" / f"{stem}.nii.gz").relative_to(out).as_posix()
    if probability:
        path = write_mask_volume(volume, [p for _, p in slices], out / "volumes" / f"{stem}.probability.nii.gz",
                                 dtype=np.float32, intent="estimate")
        row["probability_volume"] = path.relative_to(out).as_posix()
    if volume.sources:
        name = str(model.state.get("name") or model.run.root.name)
        labels = [name] if model.num_classes <= 1 else [f"{name} class {k}" for k in range(1, model.num_classes)]
        try:
            written = write_dicom_seg(volume, masks, out / "volumes" / f"{stem}.seg.dcm", labels=labels,
                                      model_name=name, identity=model.run.identity(), deidentifier=deidentifier,
                                      report=out / "volumes" / f"{stem}.sr.dcm")
            row["seg"] = written.seg.relative_to(out).as_posix()
            row["report"] = written.report.relative_to(out).as_posix() if written.report else ""
            row["note"] = written.note
        except MedlensError as exc:
            row["note"] = str(exc).split(": ", 1)[-1]
            log.warning("%s", exc)
    voxels = int(sum(int(np.count_nonzero(m)) for m in masks))
    ml = voxel_ml(volume)
    row.update(foreground_voxels=voxels, foreground_ml="" if ml is None else round(voxels * ml, 4),
               slices_with_foreground=sum(1 for m in masks if np.any(m)))
    return row


def segment_paths(
    run_dir: str | Path,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    overwrite: bool = False,
    resume: bool = False,
    explain: bool | str | Sequence[str] = False,
    threshold: float | None = None,
    progress: Callable[[int], None] | None = None,
    model: SegModel | None = None,
    flush_every: int = 10,
    shard: tuple[int, int] | None = None,
    expanded: tuple[list[Path], list[tuple[str, str]]] | None = None,
    probability_volumes: bool = False,
    deidentifier: Any = None,
    match_scale: bool = False,
    explain_samples: int | None = None,
) -> BatchResult:
    """Segment every image under ``inputs`` and write masks, probabilities, overlays and CSVs.

    Args:
        run_dir: A finished segmentation run.
        inputs: Image files, folders (searched recursively), DICOM or NIfTI files.
        out_dir: Output folder: new or empty, or any with ``overwrite`` or ``resume``.
        overwrite: Write into a non-empty folder (files of the same name are replaced).
        resume: Keep earlier results for inputs whose content is unchanged; do the rest.
        explain: Also explain each predicted mask: True for Seg-Grad-CAM, or names from
            :data:`~medlens.pipelines.explain.methods.SEGMENTATION_METHODS` (``"seg-gradcam,ig"``); each
            writes an overlay PNG and the map (``.npy``) under ``explanations/``, with the
            share of the map's energy inside the predicted region (``SLUG_inside``).
        explain_samples: LIME / Kernel SHAP perturbed samples per image (default 1000).
        threshold: Override the run's probability threshold.
        progress: Called with the number of files of every case finished (1, or a series' slices).
        model: Reuse an already loaded :class:`SegModel`.
        flush_every: Rewrite ``segmentation.csv`` after this many segmented cases (kept ones do not count).
        shard: ``(I, N)``: only shard I of N, into ``out_dir/shard-I-of-N`` (see
            :mod:`medlens.pipelines.shards`).
        expanded: ``expand_inputs(inputs)`` already computed by the caller (the CLI sizes its
            progress bar with it), so the inputs are walked once.
        probability_volumes: For volume cases, also write the foreground probability as a
            ``float32`` NIfTI volume.
        deidentifier: A :class:`~medlens.pipelines.deidentify.Deidentifier` applied to every
            DICOM SEG written (default: SEGs keep the source's patient and study).
        match_scale: Resample each input to the run's training scale (pixel spacing, else FOV
            diameter; :mod:`medlens.pipelines.scale`) and the outputs back; rows get ``scale``
            and ``scale_method``.

    Raises:
        ConfigError: ``match_scale`` with a run that recorded no training scale.

    Raises:
        RunDirError: Not a finished segmentation run, or ``out_dir`` is not empty.
    """
    model = model or SegModel(run_dir)
    if match_scale:
        require_scale(model.run.root, model.input_scale)
    threshold = model.threshold if threshold is None else float(threshold)
    out = prepare_output_dir(shard_folder(out_dir, shard), overwrite=overwrite or resume)
    methods = segmentation_methods(explain)
    explainer = MaskExplainer(model, methods, explain_samples) if methods else None
    files, errors = expand_inputs(inputs) if expanded is None else (list(expanded[0]), list(expanded[1]))
    work = _SegmentWork(out, model, explainer, errors, threshold=threshold, flush_every=flush_every,
                        scale=model.input_scale if match_scale else None,
                        probability_volumes=probability_volumes, deidentifier=deidentifier)
    return run_batch(work, files, errors, shard=shard, resume=resume, progress=progress)


class _SegmentWork(BatchWork):
    """``segment``'s work: a case (an image, a volume, a DICOM series) slice by slice through the model."""

    command = "segment"

    def __init__(self, out: Path, model: SegModel, explainer: MaskExplainer | None, errors: list[tuple[str, str]],
                 *, threshold: float, flush_every: int, scale: dict[str, Any] | None, probability_volumes: bool,
                 deidentifier: Any) -> None:
        super().__init__(out)
        self.model, self.explainer, self.errors, self.threshold = model, explainer, errors, threshold
        self.flush_every, self.scale = flush_every, scale
        self.probability_volumes, self.deidentifier = probability_volumes, deidentifier
        self.file_columns = explainer.file_columns() if explainer else []
        self.columns = (COLUMNS + (explainer.columns() if explainer else [])
                        + (["scale", "scale_method"] if scale else []))
        self.layout = layout(self.columns, self.file_columns)
        self.previous_volumes: dict[str, dict[str, str]] = {}
        self.done = 0
        self.kept = 0

    def cases(self, files: list[Path], errors: list[tuple[str, str]]) -> list[Any]:
        cases, series_errors = group_series(files)
        errors.extend(series_errors)
        return cases

    def earlier(self) -> dict[str, list[dict[str, Any]]]:
        summary = read_summary(self.out, self.layout)
        self.previous_volumes = _previous_volumes(self.out, self.layout, summary)
        return earlier_rows(self.out, self.layout, summary=summary)

    def keep(self, case: Any, rows: list[dict[str, Any]], digests: Mapping[str, str]) -> bool:
        if not all(r.get(c) for r in rows for c in self.file_columns):
            return False  # explained with fewer methods than now
        volume = self.previous_volumes.get(os.path.realpath(case_files(case)[0]))
        if volume is not None:  # a volume case: its volume must be whole and made from this content
            if volume.get("sha256") != volume_digest(list(digests.values())) or not volume.get("mask_volume"):
                return False  # changed, or a slice failed last time (no volume written): segment it again
        elif isinstance(case, Series) or len(rows) > 1:
            return False
        self.rows.extend(rows)
        if volume is not None:
            self.volumes.append({**volume, "path": case_name(case), "first_file": str(case_files(case)[0])})
        self.kept += 1
        return True

    def process(self, case: Any, digests: Mapping[str, str], errors: list[tuple[str, str]]) -> None:
        self.done += 1
        name, digest = case_name(case), volume_digest(list(digests.values()))
        try:
            volume = read_volume(case)
        except MedlensError as exc:
            errors.append((name, getattr(exc, "reason", None) or str(exc).splitlines()[0]))
            return
        except Exception as exc:  # a reader bug must not lose the rest of the batch
            log.exception("reading %s as a volume failed", name)
            errors.append((name, f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]))
            return
        records = volume.records if volume is not None else list(read_records([case], errors))
        per_file = list(digests.values())
        slices: list[tuple[np.ndarray, np.ndarray] | None] = []
        for k, record in enumerate(records):
            file_digest = per_file[k] if isinstance(case, Series) else digest
            try:
                row, mask, foreground = _segment_one(self.model, record, file_digest, self.out, self.threshold,
                                                     self.explainer, self.scale)
                self.rows.append(row)
                slices.append((mask, foreground))
            except (MedlensError, ValueError) as exc:
                errors.append((record.path if record.frame in (None, 0) else f"{record.path}#{record.frame}",
                               str(getattr(exc, "reason", exc)).splitlines()[0]))
                slices.append(None)
            except Exception as exc:  # a model failure on one image must not lose the batch
                log.exception("segmenting %s failed", record.path)
                errors.append((record.path, f"unexpected {type(exc).__name__}: {exc}".splitlines()[0]))
                slices.append(None)
        if volume is not None:
            self.volumes.append(write_volume_outputs(volume, slices, self.out, digest, self.model,
                                                     probability=self.probability_volumes,
                                                     first_file=str(case_files(case)[0]),
                                                     deidentifier=self.deidentifier))

    def checkpoint(self) -> None:
        # Counted over segmented cases only: the kept part of a resume rewrites nothing.
        if self.done >= self.flush_every:
            self.done = 0
            self._write_tables()

    def _write_tables(self, complete: bool = False) -> Path:
        out = self.out
        atomic_write_csv(out / "volumes.csv", VOLUME_COLUMNS,
                         ([r.get(c, "") for c in VOLUME_COLUMNS] for r in self.volumes))
        table = atomic_write_csv(out / "segmentation.csv", self.columns,
                                 ([r.get(c, "") for c in self.columns] for r in self.rows))
        # Written with every flush, so an interrupted batch's tables always sit beside their layout.
        atomic_write_json(out / "segmentation.json", {
            "run": str(self.model.run.root.resolve()), "inputs_relative_to": str(Path.cwd()),
            "threshold": self.threshold, "images": len(self.rows), "volumes": len(self.volumes),
            "errors": len(self.errors), "kept": self.kept, "complete": complete, "layout": self.layout.to_json()})
        return table

    def finish(self) -> Path:
        return self._write_tables(complete=True)


def _segment_one(model: SegModel, record: ImageRecord, digest: str, out: Path, threshold: float,
                 explainer: MaskExplainer | None, scale: dict[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Segment one image; returns its row, its label map (0 background) and foreground probability."""
    started = time.perf_counter()
    factor, method = scale_factor(record, scale) if scale else (1.0, "")
    prob = model.probability(record.pixels, factor)
    if prob.ndim == 3:  # several classes: the argmax is the mask, "foreground" is not background
        indices = prob.argmax(axis=-1).astype(np.uint8)
        foreground = 1.0 - prob[..., 0]
        binary = postprocess(indices > 0, model.min_size)
        mask_image = indices * binary
    else:
        foreground = prob
        binary = postprocess(binarize(prob, threshold), model.min_size)
        indices = binary.astype(np.uint8)
        mask_image = binary * np.uint8(255)
    stem = output_stem(record.path, digest, record.frame)
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
    if scale:
        row["scale"], row["scale_method"] = round(factor, 4), method
    if explainer is not None:
        row.update(explainer.write(out, stem, record.pixels, binary))
    row["seconds"] = round(time.perf_counter() - started, 4)
    labels = (indices * (binary > 0)).astype(np.uint8)
    return row, labels, np.clip(foreground, 0, 1).astype(np.float32)
