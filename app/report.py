"""``medlens report``: one self-contained HTML page of cases for a clinician.

Built from the output folder of ``medlens predict --explain`` (``predictions.json``) and/or
``medlens segment`` (``segmentation.csv``), matched by file and frame. The page:

- a header naming the model (run directory, backbone, date, test metrics, calibration) and
  saying that this is decision support;
- a table of cases, sortable by any column and filterable (text, predicted label,
  "uncertain only"): thumbnail, file, predicted label, calibrated probability, ground truth
  when a ``--truth`` CSV gives it, an *uncertain* flag (probability within ``--margin`` of
  the decision threshold, or a top-class probability below 0.6 for several classes), the
  deletion AUC of each explanation when it was measured, and the segmented fraction;
- for the selected case, the original at full resolution with each explanation (Grad-CAM,
  Grad-CAM++, LIME) and the segmentation as a layer over it, with an opacity slider.

Everything the page shows lies beside it in ``report_files/`` (and the existing
``explanations/`` folder), linked by relative paths, so the folder opens from disk with no
server and no internet, and can be zipped and handed on.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.app.report_page import render_page
from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.explain.faithfulness import resize_map
from medlens.pipelines.explain.methods import SUPERPIXEL, TITLES
from medlens.pipelines.explain.overlay import colorize, save_png, to_rgb_uint8
from medlens.pipelines.imaging import read_frames
from medlens.pipelines.rundir import RunDir, atomic_write_text
from medlens.pipelines.tasks import task_of_outputs

__all__ = ["write_report", "ReportResult"]

log = logging.getLogger(__name__)

_METHODS = tuple(TITLES.items())
_THUMB = 96


@dataclass
class ReportResult:
    """Where the report went and what it holds."""

    path: Path
    cases: int
    uncertain: int
    problems: list[str] = field(default_factory=list)


def _read_predictions(folder: Path) -> dict[str, Any] | None:
    path = folder / "predictions.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None


def _read_segmentation(folder: Path) -> list[dict[str, str]] | None:
    path = folder / "segmentation.csv"
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _absolute(path: str, base: str | None) -> str:
    """Input paths are written as the user gave them: relative ones are relative to where the batch ran."""
    candidate = Path(path)
    if not candidate.is_absolute() and base:
        candidate = Path(base) / candidate
    return str(candidate.resolve())


def _key(path: str, frame: Any, base: str | None) -> tuple[str, str]:
    return _absolute(path, base), "" if frame in (None, "", 0, "0") else str(frame)


def _read_truth(path: Path) -> dict[str, str]:
    """``path``/``image`` → ``label``/``class_name`` from a CSV; keys are resolved paths and bare names."""
    if not path.is_file():
        raise ConfigError(f"{path}: truth file not found")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return {}
    path_column = next((c for c in ("path", "image", "file") if c in rows[0]), None)
    label_column = next((c for c in ("class_name", "label", "truth", "diagnosis") if c in rows[0]), None)
    if path_column is None or label_column is None:
        raise ConfigError(f"{path}: needs a path (or image) column and a class_name (or label) column; "
                          f"has {', '.join(rows[0])}")
    truth = {}
    for row in rows:
        file_path = Path(row[path_column])
        if not file_path.is_absolute():
            file_path = path.parent / file_path
        truth[str(file_path.resolve())] = row[label_column]
        truth.setdefault(file_path.name, row[label_column])
    return truth


def _run_summary(run_dir: str | None) -> dict[str, Any]:
    if not run_dir:
        return {}
    run = RunDir(run_dir)
    summary: dict[str, Any] = {"run": str(run.root)}
    try:
        state = run.read_state()
    except MedlensError:
        return summary
    summary.update(task=state.get("task"), backbone=state.get("backbone") or state.get("architecture"),
                   created=state.get("created"), temperature=state.get("temperature"),
                   threshold=state.get("threshold"))
    checks = run.root / "explanation_checks.json"
    if checks.is_file():
        try:
            checks_data = json.loads(checks.read_text())
            methods = checks_data.get("methods", {})
            data = checks_data.get("data_randomisation", {}).get("methods", {})
            failed: dict[str, list[str]] = {}  # method title → the checks it failed
            for kind, items in (("weight-randomisation", methods), ("data-randomisation", data)):
                for item in items.values():
                    if item.get("verdict") == "fail":
                        failed.setdefault(item["title"], []).append(kind)
            summary["failed_checks"] = failed
        except ValueError:
            log.warning("%s: not valid JSON; explanation checks not shown", checks)
    if run.metrics_path.is_file():
        test = run.read_metrics().get("test", {})
        pooled = test.get("pooled", test)
        summary["test"] = {k: pooled.get(k) for k in ("n", "accuracy", "auc", "macro_auc", "micro_auc", "sensitivity",
                                                      "specificity", "dice", "ece") if pooled.get(k) is not None}
        summary["test"].setdefault("n", test.get("n"))
    return summary


class _Files:
    """Writes the page's images under ``report_files/`` and returns their relative paths."""

    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "report_files"

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def png(self, name: str, image: np.ndarray) -> str:
        return self._rel(save_png(self.folder / name, image))

    def rgba(self, name: str, rgb: np.ndarray, alpha: np.ndarray) -> str:
        bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), alpha.astype(np.uint8)])
        ok, encoded = cv2.imencode(".png", bgra)
        if not ok:  # pragma: no cover - OpenCV fails only on invalid arrays
            raise ValueError(f"could not encode {name}")
        from medlens.pipelines.rundir import atomic_write_bytes

        return self._rel(atomic_write_bytes(self.folder / name, encoded.tobytes()))


def _layers(files: _Files, case: str, folder: Path, row: dict[str, Any], shape: tuple[int, int],
            targets: list[str | None] | None = None, *, of_mask: bool = False) -> list[dict]:
    """Explanation maps as coloured RGBA layers at the original's size (one per method and target).

    ``of_mask``: the row is a segmentation's, its maps explain the predicted mask (named so)."""
    layers = []
    height, width = shape
    for (method_slug, method_title), target in ((m, t) for t in (targets or [None]) for m in _METHODS):
        slug = method_slug if target is None else f"{method_slug}_{target}"
        title = method_title if target is None else f"{method_title}: {target}"
        if of_mask and method_slug != "seggradcam":
            title += " of the mask"
        map_path = row.get(f"{slug}_map")
        if not map_path or not (folder / map_path).is_file():
            continue
        saliency = resize_map(np.load(folder / map_path), (height, width))
        if method_slug in SUPERPIXEL:  # signed superpixel weights: green for, red against
            positive, negative = np.clip(saliency, 0, 1), np.clip(-saliency, 0, 1)
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[..., 1] = 255 * (positive > 0)
            rgb[..., 0] = 255 * (negative > 0)
            alpha = 255 * np.maximum(positive, negative)
        else:
            rgb = colorize(saliency)
            alpha = np.full((height, width), 255, np.uint8)
        name = f"{case}.{'mask-' if of_mask else ''}{slug}.png"
        layer = {"name": title, "src": files.rgba(name, rgb, alpha), "target": target or ""}
        deletion = row.get(f"{slug}_deletion_auc")
        if deletion not in (None, ""):
            layer["deletion_auc"] = deletion
            layer["insertion_auc"] = row.get(f"{slug}_insertion_auc")
        if row.get(f"{slug}_pointing") not in (None, ""):
            layer["pointing"] = row.get(f"{slug}_pointing")
        if row.get(f"{slug}_stability") not in (None, ""):
            layer["stability"] = row.get(f"{slug}_stability")
        layers.append(layer)
    return layers


def write_report(
    folder: str | Path,
    *,
    segmentation: str | Path | None = None,
    truth: str | Path | None = None,
    out: str | Path | None = None,
    margin: float = 0.1,
    title: str | None = None,
    overwrite: bool = False,
) -> ReportResult:
    """Write the HTML report for an output folder of ``predict``/``explain`` and/or ``segment``.

    Args:
        folder: The folder holding ``predictions.json`` or ``segmentation.csv``.
        segmentation: Another folder holding ``segmentation.csv`` for the same images.
        truth: CSV with a path/image column and a class_name/label column.
        out: The HTML file (default ``folder/report.html``); it must lie in ``folder``.
        margin: Binary cases whose probability is within this of the threshold are *uncertain*.
        title: Page title.
        overwrite: Replace an existing report.

    Raises:
        ConfigError: Nothing to report, or a bad truth file or output path.
        RunDirError: The report exists and ``overwrite`` is False.
    """
    from medlens.pipelines.errors import RunDirError

    root = Path(folder)
    predictions = _read_predictions(root)
    seg_folder = Path(segmentation) if segmentation else root
    seg_rows = _read_segmentation(seg_folder)
    if predictions is None and seg_rows is None:
        raise ConfigError(f"{root}: no predictions.json or segmentation.csv here; run medlens predict or "
                          "medlens segment with --out pointing at it")
    out_path = Path(out) if out else root / "report.html"
    if out_path.resolve().parent != root.resolve():
        raise ConfigError(f"{out_path}: the report must be written inside {root}, beside the images it links")
    if out_path.exists() and not overwrite:
        raise RunDirError(f"{out_path}: exists; use --overwrite to replace it")
    truth_map = _read_truth(Path(truth)) if truth else {}
    files = _Files(root)
    problems: list[str] = []

    class_names = list(predictions["class_names"]) if predictions else []
    threshold = predictions.get("threshold") if predictions else None
    # What a prediction is (a class, findings with a map each, a grade) is the task's to say.
    task = task_of_outputs(predictions or {}, root / "predictions.json")
    by_key: dict[tuple[str, str], dict[str, Any]] = {}
    base = (predictions or {}).get("inputs_relative_to")
    seg_base = _seg_summary(seg_folder).get("inputs_relative_to")
    for row in (predictions or {}).get("rows", []):
        by_key[_key(row["path"], row.get("frame"), base)] = {"prediction": row}
    for row in seg_rows or []:
        by_key.setdefault(_key(row["path"], row.get("frame"), seg_base), {})["segmentation"] = row

    cases = []
    for index, ((resolved, frame), parts) in enumerate(sorted(by_key.items())):
        prediction, seg = parts.get("prediction"), parts.get("segmentation")
        path = resolved
        case = f"case{index:05d}"
        try:
            records = read_frames(path)
            pixels = next((r for r in records if str(r.frame or "") == frame), records[0]).pixels
        except (MedlensError, ValueError, IndexError) as exc:
            problems.append(f"{path}: cannot show the original ({exc})")
            continue
        rgb = to_rgb_uint8(pixels)
        height, width = rgb.shape[:2]
        scale = _THUMB / max(height, width)
        thumb = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                           interpolation=cv2.INTER_AREA)
        item: dict[str, Any] = {
            "id": case, "file": Path(path).name, "path": (prediction or seg)["path"], "frame": frame, "width": width, "height": height,
            "original": files.png(f"{case}.original.png", rgb), "thumb": files.png(f"{case}.thumb.png", thumb),
            "truth": truth_map.get(resolved) or truth_map.get(Path(path).name) or "",
            "layers": [],
        }
        if prediction is not None:
            item.update(task.report_case(prediction, predictions, margin))
            item["layers"] += _layers(files, case, root, prediction, (height, width), task.report_targets(predictions))
        if seg is not None:
            mask = cv2.imread(str(seg_folder / seg["mask"]), cv2.IMREAD_UNCHANGED)
            if mask is not None and mask.shape[:2] == (height, width):
                inside = (mask > 0).astype(np.uint8)
                red = np.zeros((height, width, 3), np.uint8)
                red[..., 0] = 255
                item["layers"].append({"name": "Segmentation", "src": files.rgba(f"{case}.segmentation.png", red,
                                                                                  inside * 200)})
                item["foreground"] = float(seg["foreground_fraction"])
                item["layers"] += _layers(files, case, seg_folder, seg, (height, width), of_mask=True)
            else:
                problems.append(f"{seg_folder / seg['mask']}: missing or not the image's size")
        cases.append(item)

    run_info = _run_summary((predictions or {}).get("run") or _seg_summary(seg_folder).get("run"))
    failing = run_info.get("failed_checks", {})
    for item in cases:  # a method that failed a randomisation check is labelled on every map it drew
        for layer in item["layers"]:
            for title, kinds in failing.items():
                if layer["name"] == title or layer["name"].startswith(f"{title}:"):
                    layer["name"] += f" (failed the {' and '.join(kinds)} check: do not rely on it)"
    page = render_page(title or f"medlens report: {root.resolve().name}", cases, class_names, threshold, run_info, margin,
                 time.strftime("%Y-%m-%d %H:%M"))
    atomic_write_text(out_path, page)
    for problem in problems:
        log.info("report: %s", problem)
    return ReportResult(out_path, len(cases), sum(bool(c.get("uncertain")) for c in cases), problems)


def _seg_summary(folder: Path) -> dict[str, Any]:
    summary = folder / "segmentation.json"
    try:
        return json.loads(summary.read_text()) if summary.is_file() else {}
    except ValueError:
        return {}
