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
from medlens.models.ordinal import decode_grades, grade_probabilities
from medlens.pipelines.data import prepare_image
from medlens.pipelines.errors import ConfigError, ImageReadError, MedlensError
from medlens.pipelines.evaluation.calibration import apply_temperature
from medlens.pipelines.evaluation.classification_run import load_run_model
from medlens.pipelines.evaluation.multilabel import positive_findings
from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.explain import Explainer, ExplainOptions, column_names, file_column_names
from medlens.pipelines.imaging import ImageRecord, list_images, read_frames, sniff_format
from medlens.pipelines.inference import OutputLayout, read_layout
from medlens.pipelines.methods import SUPERPIXEL
from medlens.pipelines.rundir import (
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    file_sha256,
    prepare_output_dir,
)
from medlens.pipelines.shards import select_shard, shard_folder, write_shard_manifest
from medlens.pipelines.tasks import require_command

__all__ = ["MultiLabelPredictor", "OrdinalPredictor", "PredictResult", "Predictor", "expand_inputs", "load_predictor", "parse_findings",
           "predict_paths", "read_records"]

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
    volumes: list[dict[str, Any]] = field(default_factory=list)


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

    def scores(self, output: np.ndarray) -> np.ndarray:
        """The model's raw output as uncalibrated ``N×K`` probabilities (what LIME and faithfulness perturb)."""
        return to_probabilities(np.asarray(output), len(self.class_names))

    def label_for(self, probabilities: np.ndarray) -> str:
        """The predicted class name: the validation threshold for binary runs, argmax otherwise."""
        if len(self.class_names) == 2:
            threshold = 0.5 if self.threshold is None else self.threshold
            return self.class_names[int(probabilities[1] >= threshold)]
        return self.class_names[int(np.argmax(probabilities))]

    # what a prediction writes (the task's output columns) ---------------------------------
    def columns(self) -> list[str]:
        """The ``predictions.csv`` columns a prediction fills, after ``path, frame, sha256``."""
        return ["label", *[f"p_{n}" for n in self.class_names], "threshold"]

    def fields(self, probabilities: np.ndarray) -> dict[str, Any]:
        """One image's values of :meth:`columns`."""
        row: dict[str, Any] = {"label": self.label_for(probabilities)}
        row.update({f"p_{name}": round(float(p), 6) for name, p in zip(self.class_names, probabilities, strict=True)})
        row["threshold"] = "" if self.threshold is None else round(float(self.threshold), 6)
        return row

    def summary(self) -> dict[str, Any]:
        """What ``predictions.json`` records about the outputs besides the rows."""
        return {"class_names": self.class_names, "threshold": self.threshold}

    # one volume from its slices ---------------------------------------------------------
    def row_probabilities(self, row: dict[str, Any]) -> np.ndarray:
        """The probabilities :meth:`fields` was given, read back from a written row."""
        return np.array([float(row[f"p_{n}"]) for n in self.class_names])

    def volume_probabilities(self, slices: np.ndarray) -> tuple[np.ndarray, int]:
        """A volume's probabilities from its slices' (``N×K``), and the slice that decides them.

        Binary: the most suspicious slice's (a lesion on any slice makes the volume positive);
        several classes: the mean over slices, decided by the most confident slice.
        """
        if len(self.class_names) == 2:
            k = int(np.argmax(slices[:, 1]))
            return slices[k], k
        return slices.mean(axis=0), int(np.argmax(slices.max(axis=1)))

    # what an explanation explains -------------------------------------------------------
    def chosen_targets(self, options: ExplainOptions) -> list[int] | None:
        """The outputs every image is explained for (``--class``), or None: per image, its label."""
        if options.class_name is None:
            return None
        if options.class_name not in self.class_names:
            raise ConfigError(f"class {options.class_name!r} is not one of this run's classes: "
                              f"{', '.join(self.class_names)}")
        return [self.class_names.index(options.class_name)]

    def explain_targets(self, probabilities: np.ndarray, chosen: list[int] | None) -> list[list[int]]:
        """Per image, the outputs to explain: the named class, else the reported label."""
        if chosen:
            return [list(chosen) for _ in probabilities]
        return [[self.class_names.index(self.label_for(p))] for p in probabilities]

    def target_name(self, index: int) -> str | None:
        """The column and file infix of target ``index``: None (one map per method and image)."""
        return None

    def explained_fields(self, targets: list[int]) -> dict[str, Any]:
        """The row fields naming what was explained."""
        return {"explained_class": self.class_names[targets[0]] if targets else ""}

    def explain_columns(self, options: ExplainOptions) -> list[str]:
        """The ``predictions.csv`` columns an explanation adds."""
        return column_names(options)

    def explain_file_columns(self, options: ExplainOptions) -> list[str]:
        """Those of :meth:`explain_columns` that name files (the layout records them)."""
        return file_column_names(options)

    # reading a written row back (service, report) ------------------------------------------
    def row_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        """What a row says beyond label and probabilities (nothing for single-label runs)."""
        return {}

    def explained_targets(self, row: dict[str, Any]) -> list[str | None]:
        """The targets a row's explanation columns are named by (None: unprefixed ``<method>_*``)."""
        return [None]


class MultiLabelPredictor(Predictor):
    """A multi-label run: one probability per finding and a threshold per finding.

    A finding is called present when its probability reaches its threshold (chosen on
    validation, ``run.json`` ``thresholds``). Rows carry ``label`` (present findings joined
    by ``|``, or ``none``), ``findings`` (how many), ``p_<finding>`` and ``pos_<finding>`` (0/1).
    Explanations are made per finding (``--findings positive|all|NAME,...``), all of a
    batch in one call per method, in columns ``<method>_<finding>_<field>``.
    """

    def __init__(self, run_dir: str | Path, model: keras.Model | None = None):
        super().__init__(run_dir, model=model)
        self.findings: list[str] = list(self.state.get("findings") or self.class_names)
        self.thresholds: dict[str, float] = {f: float(v) for f, v in (self.state.get("thresholds") or {}).items()}
        self.threshold = None

    def calibrate(self, output: np.ndarray) -> np.ndarray:
        return self.scores(output)

    def scores(self, output: np.ndarray) -> np.ndarray:
        values = np.asarray(output, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.findings):
            raise ValueError(f"expected N×{len(self.findings)} finding probabilities, got shape {values.shape}")
        return values

    def present(self, probabilities: np.ndarray) -> list[str]:
        """The findings called present for one image."""
        return positive_findings(probabilities, self.findings, self.thresholds)

    def label_for(self, probabilities: np.ndarray) -> str:
        return "|".join(self.present(probabilities)) or "none"

    def columns(self) -> list[str]:
        return ["label", "findings", *[f"p_{f}" for f in self.findings], *[f"pos_{f}" for f in self.findings]]

    def fields(self, probabilities: np.ndarray) -> dict[str, Any]:
        present = self.present(probabilities)
        row: dict[str, Any] = {"label": "|".join(present) or "none", "findings": len(present)}
        row.update({f"p_{f}": round(float(p), 6) for f, p in zip(self.findings, probabilities, strict=True)})
        row.update({f"pos_{f}": int(f in present) for f in self.findings})
        return row

    def row_probabilities(self, row: dict[str, Any]) -> np.ndarray:
        return np.array([float(row[f"p_{f}"]) for f in self.findings])

    def volume_probabilities(self, slices: np.ndarray) -> tuple[np.ndarray, int]:
        """Per finding, the highest probability over slices (a finding on any slice is in the volume)."""
        return slices.max(axis=0), int(np.argmax(slices.max(axis=1)))

    def summary(self) -> dict[str, Any]:
        return {"class_names": self.findings, "findings": self.findings, "thresholds": self.thresholds,
                "threshold": None}

    def chosen_targets(self, options: ExplainOptions) -> list[int] | None:
        if options.class_name is not None:  # --class names one finding
            return [self.findings.index(n) for n in parse_findings(options.class_name, self.findings)]
        if options.findings == "positive":
            return None
        return [self.findings.index(n) for n in parse_findings(options.findings, self.findings)]

    def explain_targets(self, probabilities: np.ndarray, chosen: list[int] | None) -> list[list[int]]:
        if chosen is not None:
            return [list(chosen) for _ in probabilities]
        return [[self.findings.index(f) for f in self.present(p)] for p in probabilities]

    def target_name(self, index: int) -> str | None:
        return self.findings[index]

    def explained_fields(self, targets: list[int]) -> dict[str, Any]:
        return {"explained_findings": "|".join(self.findings[t] for t in targets)}

    def row_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"findings": [f for f in self.findings if str(row.get(f"pos_{f}")) in ("1", "True")],
                "thresholds": self.thresholds}

    def explained_targets(self, row: dict[str, Any]) -> list[str | None]:
        return [name for name in str(row.get("explained_findings") or "").split("|") if name]

    def explain_columns(self, options: ExplainOptions) -> list[str]:
        chosen = self.chosen_targets(options)
        names = self.findings if chosen is None else [self.findings[k] for k in chosen]
        return ["explained_findings", *[c for name in names for c in column_names(options, target=name)]]

    def explain_file_columns(self, options: ExplainOptions) -> list[str]:
        chosen = self.chosen_targets(options)
        names = self.findings if chosen is None else [self.findings[k] for k in chosen]
        return [c for name in names for c in file_column_names(options, target=name)]


class OrdinalPredictor(Predictor):
    """An ordinal run: the model gives ``P(grade ≥ k)``; rows show the grade and the referable call.

    Rows carry ``label`` (the grade's name), ``grade`` (its index), ``p_<grade>`` (``P(grade = k)``),
    ``p_ge_<grade>`` (``P(grade ≥ k)``, k ≥ 1), ``referable`` (0/1: ``P(grade ≥ referable)`` at or
    above the validation threshold) and ``threshold``. Explanations explain ``P(grade ≥ referable)``
    (``--class NAME``: ``P(grade ≥ NAME)``).
    """

    def __init__(self, run_dir: str | Path, model: keras.Model | None = None):
        super().__init__(run_dir, model=model)
        self.referable = int(self.state.get("referable_grade", 1))

    def calibrate(self, output: np.ndarray) -> np.ndarray:
        return self.scores(output)

    def scores(self, output: np.ndarray) -> np.ndarray:
        values = np.asarray(output, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.class_names) - 1:
            raise ValueError(f"expected N×{len(self.class_names) - 1} cumulative probabilities, got {values.shape}")
        return values

    def label_for(self, probabilities: np.ndarray) -> str:
        return self.class_names[int(decode_grades(probabilities[None])[0])]

    def columns(self) -> list[str]:
        return ["label", "grade", *[f"p_{n}" for n in self.class_names],
                *[f"p_ge_{n}" for n in self.class_names[1:]], "referable", "threshold"]

    def fields(self, probabilities: np.ndarray) -> dict[str, Any]:
        grade = int(decode_grades(probabilities[None])[0])
        row: dict[str, Any] = {"label": self.class_names[grade], "grade": grade}
        row.update({f"p_{n}": round(float(p), 6)
                    for n, p in zip(self.class_names, grade_probabilities(probabilities[None])[0], strict=True)})
        row.update({f"p_ge_{n}": round(float(p), 6) for n, p in zip(self.class_names[1:], probabilities, strict=True)})
        cut = 0.5 if self.threshold is None else float(self.threshold)
        row["referable"] = int(probabilities[self.referable - 1] >= cut)
        row["threshold"] = round(cut, 6)
        return row

    def row_probabilities(self, row: dict[str, Any]) -> np.ndarray:
        return np.array([float(row[f"p_ge_{n}"]) for n in self.class_names[1:]])

    def volume_probabilities(self, slices: np.ndarray) -> tuple[np.ndarray, int]:
        """Per cut ``grade ≥ k``, the highest probability over slices (still non-increasing in k)."""
        return slices.max(axis=0), int(np.argmax(slices.sum(axis=1)))

    def summary(self) -> dict[str, Any]:
        return {"class_names": self.class_names, "grades": self.class_names, "threshold": self.threshold,
                "referable": f"grade ≥ {self.class_names[self.referable]}"}

    def chosen_targets(self, options: ExplainOptions) -> list[int] | None:
        if options.class_name is None:
            return None
        if options.class_name not in self.class_names[1:]:
            raise ConfigError(f"--class {options.class_name!r}: explain P(grade ≥ NAME) for one of "
                              f"{', '.join(self.class_names[1:])}")
        return [self.class_names.index(options.class_name) - 1]

    def explain_targets(self, probabilities: np.ndarray, chosen: list[int] | None) -> list[list[int]]:
        return [list(chosen) if chosen else [self.referable - 1] for _ in probabilities]

    def explained_fields(self, targets: list[int]) -> dict[str, Any]:
        return {"explained_class": f"grade ≥ {self.class_names[targets[0] + 1]}" if targets else ""}

    def row_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"grade": row.get("grade"), "referable": row.get("referable"),
                "p_referable": row.get(f"p_ge_{self.class_names[self.referable]}")}


def load_predictor(run_dir: str | Path) -> Predictor:
    """The predictor of a finished classifier run, of its task's kind (single- or multi-label)."""
    run = RunDir(run_dir).require()
    return require_command(run.read_state(), run.root, "predict").load(run.root)


def parse_findings(text: str, findings: list[str]) -> list[str]:
    """``--findings``: ``positive``, ``all`` or comma-separated names; one-line error for an unknown name."""
    if text in ("positive", "all"):
        return list(findings)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in findings]
    if unknown or not names:
        raise ConfigError(f"--findings {text!r}: {repr(unknown[0]) if unknown else 'no name'} is not one of this "
                          f"run's findings ({', '.join(findings)}), positive or all")
    return names


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
    expanded: tuple[list[Path], list[tuple[str, str]]] | None = None,
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
    volumes = volume_rows(predictor, rows, files)
    atomic_write_csv(out / written.volume_table, written.volume_columns,
                     ([v.get(c, "") for c in written.volume_columns] for v in volumes))
    if shard is not None:
        write_shard_manifest(out, shard, files, positions, len(everything), "predict")
    errors_csv = atomic_write_csv(out / "errors.csv", ["path", "error"], errors)
    if errors:
        log.warning("%d input(s) could not be read; see %s", len(errors), errors_csv)
    if kept:
        log.info("%d file(s) unchanged since the last run into %s: kept", kept, out)
    return PredictResult(out, predictions_csv, errors_csv, rows, errors, kept, volumes)


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
    base = earlier.get("inputs_relative_to") or "."
    recorded = read_layout(out, ["predictions.json"]) or current
    kept: dict[str, list[dict[str, Any]]] = {}
    for row in earlier.get("rows", []):
        if recorded.outputs_present(row, out):
            path = row["path"] if os.path.isabs(row["path"]) else os.path.join(base, row["path"])
            kept.setdefault(os.path.realpath(path), []).append(row)
    return kept


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
