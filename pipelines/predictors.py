"""The per-task appliers of a classifier run: one image batch in, probabilities and row fields out.

:class:`Predictor` (single-label), :class:`MultiLabelPredictor` (one sigmoid per finding) and
:class:`OrdinalPredictor` (``P(grade ≥ k)``) say what a prediction writes (``columns``,
``fields``, ``summary``), what an explanation explains (``chosen_targets``, ``explain_targets``,
``target_name``, ``explain_columns``, ``explain_file_columns``) and how to read a written row back
(``row_summary``, ``row_findings``, ``explained_targets``). :func:`load_predictor` picks the one a run's task names.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.models.ordinal import decode_grades, grade_probabilities
from medlens.pipelines.data import prepare_image
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.calibration import apply_temperature
from medlens.pipelines.evaluation.classification_run import load_run_model
from medlens.pipelines.evaluation.multilabel import positive_findings
from medlens.pipelines.evaluation.probabilities import to_probabilities
from medlens.pipelines.explain import ExplainOptions, column_names, file_column_names
from medlens.pipelines.rundir import (
    RunDir,
)
from medlens.pipelines.tasks import require_command

__all__ = ["MultiLabelPredictor", "OrdinalPredictor", "Predictor", "load_predictor", "parse_findings"]

log = logging.getLogger(__name__)


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

    def explained_choice(self, options: ExplainOptions) -> str | None:
        """The target choice ``predictions.json`` records beside ``class`` (``--findings`` for findings)."""
        return None

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

    def row_findings(self, row: dict[str, Any]) -> list[tuple[str, float, bool]]:
        """A written row as ``(finding, probability, present)`` triples (the DICOM findings report).

        Single-label: each class, present when it is the row's label.
        """
        return [(name, float(row[f"p_{name}"]), str(row.get("label")) == name) for name in self.class_names]

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

    def explained_choice(self, options: ExplainOptions) -> str | None:
        return options.findings

    def row_summary(self, row: dict[str, Any]) -> dict[str, Any]:
        return {"findings": [f for f in self.findings if str(row.get(f"pos_{f}")) in ("1", "True")],
                "thresholds": self.thresholds}

    def explained_targets(self, row: dict[str, Any]) -> list[str | None]:
        return [name for name in str(row.get("explained_findings") or "").split("|") if name]

    def row_findings(self, row: dict[str, Any]) -> list[tuple[str, float, bool]]:
        """Each finding, present when its probability reached its own validation threshold."""
        present = set(self.row_summary(row)["findings"])
        return [(f, float(row[f"p_{f}"]), f in present) for f in self.findings]

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
        # Cut points on the expected grade chosen on validation (evaluate.grade_cuts); None: the 0.5 rule.
        self.grade_cuts = self.state.get("grade_cuts") or None

    def calibrate(self, output: np.ndarray) -> np.ndarray:
        return self.scores(output)

    def scores(self, output: np.ndarray) -> np.ndarray:
        values = np.asarray(output, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(self.class_names) - 1:
            raise ValueError(f"expected N×{len(self.class_names) - 1} cumulative probabilities, got {values.shape}")
        return values

    def label_for(self, probabilities: np.ndarray) -> str:
        return self.class_names[int(decode_grades(probabilities[None], self.grade_cuts)[0])]

    def columns(self) -> list[str]:
        return ["label", "grade", *[f"p_{n}" for n in self.class_names],
                *[f"p_ge_{n}" for n in self.class_names[1:]], "referable", "threshold"]

    def fields(self, probabilities: np.ndarray) -> dict[str, Any]:
        grade = int(decode_grades(probabilities[None], self.grade_cuts)[0])
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
                "referable": f"grade ≥ {self.class_names[self.referable]}",
                "grade_cuts": self.grade_cuts, "grade_cuts_method": self.state.get("grade_cuts_method", "0.5")}

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

    def row_findings(self, row: dict[str, Any]) -> list[tuple[str, float, bool]]:
        """Each cut ``grade ≥ K`` with ``P(grade ≥ K)``, present when the predicted grade reaches it."""
        grade = int(row["grade"])
        return [(f"grade ≥ {name}", float(row[f"p_ge_{name}"]), grade >= k)
                for k, name in enumerate(self.class_names[1:], start=1)]


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
