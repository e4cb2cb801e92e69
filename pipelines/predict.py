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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.explain import Explainer, ExplainOptions
from medlens.pipelines.explain.methods import SUPERPIXEL
from medlens.pipelines.imaging import ImageRecord, sniff_format
from medlens.pipelines.inference import OutputLayout
from medlens.pipelines.inference.batch import BatchResult, BatchWork, earlier_rows, run_batch
from medlens.pipelines.inference.inputs import expand_inputs, read_records
from medlens.pipelines.predictors import Predictor, load_predictor
from medlens.pipelines.rundir import atomic_write_csv, atomic_write_json, prepare_output_dir
from medlens.pipelines.scale import field_box, field_pixels, require_scale
from medlens.pipelines.shards import shard_folder
from medlens.pipelines.tasks import task_of_run

__all__ = ["predict_paths", "layout", "volume_rows"]

log = logging.getLogger(__name__)



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
    expanded: tuple[list[Path], list[tuple[str, str]]] | None = None,
    match_scale: bool = False,
) -> BatchResult:
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
        expanded: ``expand_inputs(inputs)`` already computed by the caller (the CLI sizes its
            progress bar with it), so the inputs are walked once.
        match_scale: predict each image on the part of it that shows what a training image showed
            (:func:`~medlens.pipelines.scale.field_box`: the run's training scale by pixel spacing,
            else the fundus field of view), explanation maps put back in the image's own frame;
            rows gain ``scale`` and ``scale_method``.

    Raises:
        ConfigError: ``match_scale`` with a run that recorded no training scale.
    """
    predictor = predictor or load_predictor(run_dir)
    scale = require_scale(predictor.run.root, predictor.state.get("input_scale"), field=True) if match_scale else None
    out = prepare_output_dir(shard_folder(out_dir, shard), overwrite=overwrite or resume)
    if explainer is not None:
        explainer.retarget(out)
    elif explain is not None:
        explainer = Explainer(predictor, explain, out)
    files, errors = expand_inputs(inputs) if expanded is None else (list(expanded[0]), list(expanded[1]))
    work = _PredictWork(out, predictor, explainer, errors, batch_size=batch_size, flush_every=flush_every,
                        scale=scale)
    return run_batch(work, files, errors, shard=shard, resume=resume, progress=progress)


class _PredictWork(BatchWork):
    """``predict``'s work: a file's images batched through the classifier (and its explainer)."""

    command = "predict"

    def __init__(self, out: Path, predictor: Predictor, explainer: Explainer | None, errors: list[tuple[str, str]],
                 *, batch_size: int, flush_every: int, scale: dict[str, Any] | None = None) -> None:
        super().__init__(out)
        self.predictor, self.explainer, self.errors = predictor, explainer, errors
        self.explain = explainer.options if explainer is not None else None
        self.batch_size, self.flush_every = batch_size, flush_every
        self.scale = scale  # --match-scale: the run's training scale
        self.header = ["path", "frame", "sha256", *predictor.columns(), *(["scale", "scale_method"] if scale else [])]
        if self.explain is not None:
            self.header += predictor.explain_columns(self.explain)
        self.layout = layout(self.header, predictor.explain_file_columns(self.explain) if self.explain else [],
                             predictor.columns())
        self.digests: dict[str, str] = {}
        self.pending: list[ImageRecord] = []
        self.batches = 0
        self.files: list[Path] = []  # the cases reached, in input order

    def earlier(self) -> dict[str, list[dict[str, Any]]]:
        return _previous_rows(self.out, self.explain, self.layout, self.scale is not None)

    def keep(self, case: Any, rows: list[dict[str, Any]], digests: Mapping[str, str]) -> bool:
        self.files.append(case)
        return super().keep(case, rows, digests)

    def process(self, case: Any, digests: Mapping[str, str], errors: list[tuple[str, str]]) -> None:
        self.files.append(case)
        self.digests.update(digests)
        for record in read_records([case], errors):
            if self.scale is not None:
                record.meta["field_box"], factor, method = field_box(record, self.scale)
                record.meta["scale"] = {"scale": round(factor, 4), "scale_method": method}
            self.pending.append(record)
            if len(self.pending) >= self.batch_size:
                self._flush()

    def checkpoint(self) -> None:
        if self.batches >= self.flush_every:
            self._flush()  # a file's last frames too: a table never holds part of a file
            self.batches = 0
            self._write_tables()

    def _flush(self) -> None:
        """Predict (and explain) the pending images: one batch."""
        pending, predictor, explainer = self.pending, self.predictor, self.explainer
        if not pending:
            return
        extra: list[dict[str, Any]] = [{} for _ in pending]
        probabilities = None
        if explainer is not None:
            try:
                probabilities, extra = explainer.explain(pending, self.digests)
            except Exception as exc:  # an explanation bug must not cost the predictions
                log.exception("explaining a batch failed")
                reason = f"explanation failed: {getattr(exc, 'reason', exc)}".splitlines()[0]
                self.errors.extend((r.path if r.frame is None else f"{r.path}#{r.frame}", reason) for r in pending)
        if probabilities is None:
            probabilities = predictor.predict_pixels([field_pixels(r) for r in pending])
        for record, probs, fields in zip(pending, probabilities, extra, strict=True):
            row: dict[str, Any] = {
                "path": record.path,
                "frame": "" if record.frame is None else record.frame,
                "sha256": self.digests.get(record.path, ""),
            }
            row.update(predictor.fields(probs))
            row.update(record.meta.get("scale", {}))
            row.update(fields)
            self.rows.append(row)
        pending.clear()
        self.batches += 1

    def _write_tables(self) -> Path:
        rows, header = self.rows, self.header
        order = {str(path): index for index, path in enumerate(self.files)}
        rows.sort(key=lambda r: (order.get(str(r["path"]), len(order)), int(r["frame"] or 0)))
        table = atomic_write_csv(self.out / "predictions.csv", header, ([r.get(h, "") for h in header] for r in rows))
        _write_json(self.out, self.predictor, self.explain, self.explainer, rows, self.errors, self.layout,
                    match_scale=self.scale is not None)
        return table

    def finish(self) -> Path:
        self._flush()
        table = self._write_tables()
        self.volumes = volume_rows(self.predictor, self.rows, self.files)
        columns = self.layout.volume_columns
        atomic_write_csv(self.out / self.layout.volume_table, columns,
                         ([v.get(c, "") for c in columns] for v in self.volumes))
        return table


def volume_rows(predictor: Predictor, rows: list[dict[str, Any]], files: list[Path]) -> list[dict[str, Any]]:
    """One result per volume: a NIfTI or multi-frame DICOM file, or a DICOM series among ``files``.

    The per-slice rows stay in ``predictions.csv``; a volume's probabilities come from them by
    :meth:`Predictor.volume_probabilities`, with the slice that decides them.
    """
    from medlens.pipelines.volumes import Series, group_series

    by_path: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_path.setdefault(str(row["path"]), []).append(row)
    groups: list[tuple[str, str, list[dict[str, Any]], list[str]]] = []
    cases, _ = group_series(list(files))  # a broken series stays per-slice rows; its files were predicted
    for case in cases:
        if isinstance(case, Series):
            members = [(str(p), by_path.get(str(p), [])) for p in case.files]
            if all(len(r) == 1 for _, r in members):
                groups.append((case.path, "dicom-series", [r[0] for _, r in members], [p for p, _ in members]))
        else:
            slices = sorted(by_path.get(str(case), []), key=lambda r: int(r["frame"] or 0))
            if len(slices) > 1:
                kind = "nifti" if sniff_format(case) == "nifti" else "dicom-frames"
                groups.append((str(case), kind, slices, [str(case)] * len(slices)))
    out = []
    for path, kind, slices, sources in groups:
        probabilities, k = predictor.volume_probabilities(np.stack([predictor.row_probabilities(r) for r in slices]))
        out.append({"path": path, "kind": kind, "slices": len(slices),
                    "deciding_slice": k if kind == "dicom-series" else slices[k]["frame"],
                    "deciding_file": sources[k], **predictor.fields(probabilities)})
    return out


def _previous_rows(out: Path, explain: ExplainOptions | None, current: OutputLayout,
                   match_scale: bool = False) -> dict[str, list[dict[str, Any]]]:
    """Rows of an earlier ``predictions.json`` in ``out`` whose explanation files still exist, by input path.

    Rows explained with other methods than now, or made with(out) ``--match-scale`` when this batch
    is not, are not reused (their columns or their pixels differ).
    The earlier folder's recorded layout says which columns name files; a folder written before
    layouts were recorded is read with this run's layout.
    """
    table = out / "predictions.json"
    if not table.is_file():
        return {}
    try:
        earlier = json.loads(table.read_text())
    except ValueError:
        return {}
    if not isinstance(earlier, dict):
        return {}
    methods = sorted((earlier.get("explain") or {}).get("methods") or [])
    if methods != sorted(explain.methods if explain else []) or bool(earlier.get("match_scale")) != match_scale:
        return {}
    return earlier_rows(out, current, earlier.get("rows", []), earlier)


def layout(header: list[str], file_columns: list[str], result_columns: list[str]) -> OutputLayout:
    """``predict``'s output layout: ``predictions.csv`` with ``header``, one ``volumes.csv`` row per volume."""
    return OutputLayout("predict", "predictions.csv", "predictions.json", header, file_columns,
                        volume_columns=["path", "kind", "slices", "deciding_slice", "deciding_file", *result_columns])


def _write_json(out: Path, predictor: Predictor, explain: ExplainOptions | None, explainer: Explainer | None,
                rows: list[dict[str, Any]], errors: list[tuple[str, str]], written: OutputLayout, *,
                match_scale: bool = False) -> None:
    atomic_write_json(out / "predictions.json", {
        "layout": written.to_json(),
        "run": str(predictor.run.root.resolve()),
        "task": task_of_run(predictor.state, predictor.run.root).name,
        "match_scale": match_scale,
        "inputs_relative_to": str(Path.cwd()),
        **predictor.summary(),
        "explain": None if explainer is None else {
            "methods": list(explain.methods),
            "class": explain.class_name,
            "findings": predictor.explained_choice(explain),
            "lime_samples": explain.lime_samples if SUPERPIXEL & set(explain.methods) else None,
            "seed": explain.seed,
            "seconds": {m: round(t, 3) for m, t in explainer.seconds.items()},
        },
        "rows": rows,
        "errors": [{"path": p, "error": e} for p, e in errors],
    })
