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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.explain import Explainer, ExplainOptions
from medlens.pipelines.explain.methods import SUPERPIXEL
from medlens.pipelines.imaging import ImageRecord, sniff_format
from medlens.pipelines.inference import OutputLayout
from medlens.pipelines.inference.batch import BatchResult, earlier_rows, finish_batch, reusable
from medlens.pipelines.inference.inputs import expand_inputs, read_records
from medlens.pipelines.predictors import MultiLabelPredictor, Predictor, load_predictor
from medlens.pipelines.rundir import (
    atomic_write_csv,
    atomic_write_json,
    file_sha256,
    prepare_output_dir,
)
from medlens.pipelines.shards import select_shard, shard_folder

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
    """
    predictor = predictor or load_predictor(run_dir)
    out = prepare_output_dir(shard_folder(out_dir, shard), overwrite=overwrite or resume)
    if explainer is not None:
        explainer.retarget(out)
        explain = explainer.options
    elif explain is not None:
        explainer = Explainer(predictor, explain, out)
    everything, errors = expand_inputs(inputs) if expanded is None else (list(expanded[0]), list(expanded[1]))
    files, positions = select_shard(everything, shard)  # sorted: the same order sharded or not
    order = {str(path): index for index, path in enumerate(files)}
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
                probabilities, extra = explainer.explain(pending, digests)
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
            }
            row.update(predictor.fields(probs))
            row.update(fields)
            rows.append(row)
        pending.clear()

    header = ["path", "frame", "sha256", *predictor.columns()]
    if explain is not None:
        header += predictor.explain_columns(explain)
    written = layout(header, predictor.explain_file_columns(explain) if explain is not None else [],
                     predictor.columns())

    def write_tables() -> Path:
        rows.sort(key=lambda r: (order.get(str(r["path"]), len(order)), int(r["frame"] or 0)))
        table = atomic_write_csv(out / "predictions.csv", header, ([r.get(h, "") for h in header] for r in rows))
        _write_json(out, predictor, explain, explainer, rows, errors, written)
        return table

    previous = _previous_rows(out, explain, written) if resume else {}

    batches = 0
    for path in files:
        try:
            digests[str(path)] = file_sha256(path) if path.is_file() else ""
        except OSError:
            digests[str(path)] = ""
        earlier = reusable(previous, {str(path): digests[str(path)]})
        if earlier is not None:
            rows.extend(earlier)
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
    volumes = volume_rows(predictor, rows, files)
    atomic_write_csv(out / written.volume_table, written.volume_columns,
                     ([v.get(c, "") for c in written.volume_columns] for v in volumes))
    errors_csv = finish_batch(out, "predict", errors, shard=shard, cases=files, positions=positions,
                              total=len(everything), kept=kept)
    return BatchResult(out, predictions_csv, errors_csv, rows, errors, kept, volumes)


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


def _previous_rows(out: Path, explain: ExplainOptions | None, current: OutputLayout) -> dict[str, list[dict[str, Any]]]:
    """Rows of an earlier ``predictions.json`` in ``out`` whose explanation files still exist, by input path.

    Rows explained with other methods than now are not reused (their columns would be missing).
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
    methods = sorted((earlier.get("explain") or {}).get("methods") or [])
    if methods != sorted(explain.methods if explain else []):
        return {}
    return earlier_rows(out, current, earlier.get("rows", []))


def layout(header: list[str], file_columns: list[str], result_columns: list[str]) -> OutputLayout:
    """``predict``'s output layout: ``predictions.csv`` with ``header``, one ``volumes.csv`` row per volume."""
    return OutputLayout("predict", "predictions.csv", "predictions.json", header, file_columns,
                        volume_columns=["path", "kind", "slices", "deciding_slice", "deciding_file", *result_columns])


def _write_json(out: Path, predictor: Predictor, explain: ExplainOptions | None, explainer: Explainer | None,
                rows: list[dict[str, Any]], errors: list[tuple[str, str]], written: OutputLayout) -> None:
    atomic_write_json(out / "predictions.json", {
        "layout": written.to_json(),
        "run": str(predictor.run.root.resolve()),
        "inputs_relative_to": str(Path.cwd()),
        **predictor.summary(),
        "explain": None if explainer is None else {
            "methods": list(explain.methods),
            "class": explain.class_name,
            "findings": explain.findings if isinstance(predictor, MultiLabelPredictor) else None,
            "lime_samples": explain.lime_samples if SUPERPIXEL & set(explain.methods) else None,
            "seed": explain.seed,
            "seconds": {m: round(t, 3) for m, t in explainer.seconds.items()},
        },
        "rows": rows,
        "errors": [{"path": p, "error": e} for p, e in errors],
    })
