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
import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.faithfulness import resize_map
from medlens.pipelines.imaging import read_frames
from medlens.pipelines.methods import SUPERPIXEL, TITLES
from medlens.pipelines.overlay import colorize, save_png, to_rgb_uint8
from medlens.pipelines.rundir import RunDir, atomic_write_text

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
    # A multi-label output folder lists its findings: a case shows each present finding with its maps.
    findings = list((predictions or {}).get("findings") or [])
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
        if prediction is not None and findings:
            item.update(_finding_fields(prediction, findings, predictions.get("thresholds") or {}, margin))
            item["layers"] += _layers(files, case, root, prediction, (height, width), list(findings))
        elif prediction is not None:
            probabilities = {name: float(prediction.get(f"p_{name}", 0.0)) for name in class_names}
            item["label"] = prediction["label"]
            item["probability"] = probabilities[prediction["label"]]
            if len(class_names) == 2:
                positive = probabilities[class_names[1]]
                cut = 0.5 if threshold in (None, "") else float(threshold)
                item["positive"] = positive
                item["uncertain"] = abs(positive - cut) < margin
            else:
                item["uncertain"] = max(probabilities.values()) < 0.6
            item["probabilities"] = probabilities
            if predictions.get("grades"):  # an ordinal run: the referable call beside the grade
                referable = str(predictions.get("referable") or "")
                p_ref = prediction.get(f"p_ge_{referable.replace('grade ≥ ', '')}")
                if p_ref not in (None, ""):
                    item["note"] = (f"P({referable}) = {float(p_ref):.3f}: "
                                    f"{'referable' if str(prediction.get('referable')) == '1' else 'not referable'} "
                                    f"at threshold {float(prediction.get('threshold') or 0.5):.3f}")
            item["layers"] += _layers(files, case, root, prediction, (height, width))
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
    page = _html(title or f"medlens report: {root.resolve().name}", cases, class_names, threshold, run_info, margin,
                 time.strftime("%Y-%m-%d %H:%M"))
    atomic_write_text(out_path, page)
    for problem in problems:
        log.info("report: %s", problem)
    return ReportResult(out_path, len(cases), sum(bool(c.get("uncertain")) for c in cases), problems)


def _finding_fields(prediction: dict[str, Any], findings: list[str], thresholds: dict[str, Any],
                    margin: float) -> dict[str, Any]:
    """A multi-label case: the present findings, every probability, uncertain when one is near its threshold."""
    probabilities = {f: float(prediction.get(f"p_{f}", 0.0)) for f in findings}
    present = [f for f in findings if str(prediction.get(f"pos_{f}", "0")) in ("1", "1.0", "True")]
    return {
        "label": prediction["label"], "findings": present, "probabilities": probabilities,
        "probability": max((probabilities[f] for f in present), default=max(probabilities.values(), default=0.0)),
        "uncertain": any(abs(probabilities[f] - float(thresholds.get(f, 0.5))) < margin for f in findings),
    }


def _seg_summary(folder: Path) -> dict[str, Any]:
    summary = folder / "segmentation.json"
    try:
        return json.loads(summary.read_text()) if summary.is_file() else {}
    except ValueError:
        return {}


def _html(title: str, cases: list[dict], class_names: list[str], threshold: Any, run: dict[str, Any],
          margin: float, created: str) -> str:
    test = run.get("test", {})
    metrics = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in test.items())
    model = (f"Model: <code>{html.escape(str(run.get('run', 'unknown')))}</code> — "
             f"{html.escape(str(run.get('backbone') or ''))}, trained {html.escape(str(run.get('created') or ''))}. "
             f"Test: {html.escape(metrics) or 'n/a'}.")
    if run.get("temperature") not in (None, 1.0):
        model += f" Probabilities calibrated by temperature scaling (T = {float(run['temperature']):.3f})."
    data = json.dumps({"cases": cases, "classes": class_names, "threshold": threshold, "margin": margin})
    data = data.replace("</", "<\\/")  # never close the script element from inside the data
    return _TEMPLATE.replace("{{TITLE}}", html.escape(title)).replace("{{MODEL}}", model) \
        .replace("{{CREATED}}", html.escape(created)).replace("{{DATA}}", data)


_TEMPLATE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{TITLE}}</title>
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#14324a;color:#fff;padding:14px 22px}
header h1{margin:0 0 4px;font-size:20px}
header p{margin:2px 0;font-size:13px;opacity:.92}
.warning{background:#fff3cd;color:#5c4400;padding:8px 22px;font-size:13px;border-bottom:1px solid #e6d48a}
main{display:flex;gap:18px;padding:16px 22px;align-items:flex-start}
#list{flex:1 1 55%;min-width:420px;overflow-x:auto}
#case{flex:1 1 45%;position:sticky;top:10px;background:#fff;border:1px solid #d8dde3;border-radius:6px;padding:12px}
.controls{display:flex;gap:10px;margin-bottom:8px;font-size:13px;align-items:center;flex-wrap:wrap}
table{border-collapse:collapse;width:100%;background:#fff;font-size:13px}
th,td{border-bottom:1px solid #e3e6ea;padding:4px 6px;text-align:left}
th{cursor:pointer;background:#eef1f4;user-select:none;position:sticky;top:0}
th.sorted-asc::after{content:" \\25B2"}th.sorted-desc::after{content:" \\25BC"}
tr.selected{background:#e3f0ff}tr:hover{background:#f2f7ff;cursor:pointer}
td img{width:48px;height:48px;object-fit:contain;background:#000;display:block}
.flag{color:#a4161a;font-weight:600}
.stack{position:relative;display:block;width:100%;margin:4px 0}
.stack img{display:block;width:100%;height:auto;image-rendering:pixelated}
.stack img.layer{position:absolute;left:0;top:0;width:100%;height:100%}
.layers{display:flex;flex-wrap:wrap;gap:10px}
.layers figure{margin:0;flex:1 1 45%;min-width:180px}
figcaption{font-size:12px;color:#444}
</style></head>
<body data-ready="0">
<header><h1>{{TITLE}}</h1><p>{{MODEL}}</p><p>Report written {{CREATED}}.</p></header>
<div class="warning"><b>Decision support only.</b> These outputs are not a diagnosis and the model is not cleared
for clinical use. Heatmaps show what influenced the model, not where disease is.</div>
<main>
<section id="list">
<div class="controls">
<input id="filter" type="search" placeholder="filter by file or label" aria-label="filter">
<select id="label" aria-label="predicted label or finding"><option value="">all labels</option></select>
<label><input id="uncertain" type="checkbox"> uncertain only</label>
<span id="count"></span>
</div>
<table id="cases"><thead><tr id="head"></tr></thead><tbody></tbody></table>
</section>
<section id="case"><p>Select a case.</p></section>
</main>
<script id="data" type="application/json">{{DATA}}</script>
<script>
"use strict";
const DATA = JSON.parse(document.getElementById("data").textContent);
const cases = DATA.cases;
const hasPred = cases.some(c => c.label !== undefined);
const hasSeg = cases.some(c => c.foreground !== undefined);
const hasTruth = cases.some(c => c.truth);
const methods = [...new Set(cases.flatMap(c => c.layers.filter(l => l.deletion_auc !== undefined).map(l => l.name)))];
const columns = [{key: "thumb", title: "", sortable: false}, {key: "file", title: "file"}, {key: "frame", title: "frame"}];
if (hasPred) columns.push({key: "label", title: "predicted"}, {key: "probability", title: "probability"});
if (hasTruth) columns.push({key: "truth", title: "ground truth"});
if (hasPred) columns.push({key: "uncertain", title: "uncertain"});
for (const m of methods) columns.push({key: "del:" + m, title: m + " deletion AUC"});
if (hasSeg) columns.push({key: "foreground", title: "segmented %"});
let sortKey = null, sortDir = 1, selected = null;
function value(c, key) {
  if (key.startsWith("del:")) { const l = c.layers.find(x => x.name === key.slice(4)); return l ? Number(l.deletion_auc) : null; }
  const v = c[key]; return v === undefined ? null : v;
}
function fmt(c, key) {
  const v = value(c, key);
  if (v === null || v === "") return "";
  if (key === "uncertain") return v ? "<span class=flag>uncertain</span>" : "";
  if (key === "foreground") return (100 * v).toFixed(2);
  if (typeof v === "number") return v.toFixed(3);
  return String(v).replace(/[&<>"]/g, s => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[s]));
}
// A single-label case has its label; a multi-label case each finding called present.
function labelsOf(c) { return c.findings || (c.label ? [c.label] : []); }
function visible() {
  const text = document.getElementById("filter").value.toLowerCase();
  const label = document.getElementById("label").value;
  const onlyUncertain = document.getElementById("uncertain").checked;
  let rows = cases.filter(c => (!text || (c.file + " " + (c.label || "") + " " + c.truth).toLowerCase().includes(text))
    && (!label || labelsOf(c).includes(label)) && (!onlyUncertain || c.uncertain));
  if (sortKey) rows.sort((a, b) => {
    const x = value(a, sortKey), y = value(b, sortKey);
    if (x === y) return 0; if (x === null) return 1; if (y === null) return -1;
    return (x < y ? -1 : 1) * sortDir;
  });
  return rows;
}
function render() {
  const head = document.getElementById("head");
  head.innerHTML = columns.map(c => `<th data-key="${c.key}" class="${c.key === sortKey ? (sortDir > 0 ? "sorted-asc" : "sorted-desc") : ""}">${c.title}</th>`).join("");
  for (const th of head.children) th.onclick = () => { const k = th.dataset.key; if (k === "thumb") return; sortDir = (sortKey === k) ? -sortDir : 1; sortKey = k; render(); };
  const rows = visible();
  document.querySelector("#cases tbody").innerHTML = rows.map(c => `<tr data-id="${c.id}" class="${c.id === selected ? "selected" : ""}">` +
    columns.map(col => col.key === "thumb" ? `<td><img src="${c.thumb}" alt="${fmt(c, "file")}"></td>` : `<td>${fmt(c, col.key)}</td>`).join("") + "</tr>").join("");
  for (const tr of document.querySelectorAll("#cases tbody tr")) tr.onclick = () => show(tr.dataset.id);
  document.getElementById("count").textContent = `${rows.length} of ${cases.length} cases`;
}
function show(id) {
  selected = id; const c = cases.find(x => x.id === id); render();
  const probs = c.probabilities ? Object.entries(c.probabilities).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ") : "";
  let out = `<h2 style="font-size:16px;margin:0 0 6px">${fmt(c, "file")}${c.frame ? " (frame " + c.frame + ")" : ""}</h2>`;
  if (c.findings) out += `<p>Findings present: <b>${c.findings.length ? c.findings.join(", ") : "none"}</b> (${probs})${c.uncertain ? " — <span class=flag>a finding is near its threshold</span>" : ""}${c.truth ? "; ground truth " + fmt(c, "truth") : ""}.</p>`;
  else if (c.label !== undefined) out += `<p>Predicted <b>${fmt(c, "label")}</b> (${probs})${c.uncertain ? " — <span class=flag>near the decision threshold</span>" : ""}${c.truth ? "; ground truth " + fmt(c, "truth") : ""}.</p>`;
  if (c.note) out += `<p id="note">${String(c.note).replace(/[&<>"]/g, s => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[s]))}</p>`;
  out += `<label>layer opacity <input id="opacity" type="range" min="0" max="100" value="45"></label>`;
  out += `<div class="layers"><figure><a href="${c.original}" target="_blank"><div class="stack"><img src="${c.original}" alt="original" width="${c.width}" height="${c.height}"></div></a><figcaption>original, ${c.width}×${c.height} px (click for full resolution)</figcaption></figure>`;
  for (const l of c.layers) {
    let note = l.deletion_auc !== undefined ? ` — deletion AUC ${Number(l.deletion_auc).toFixed(3)}, insertion AUC ${Number(l.insertion_auc).toFixed(3)}` : "";
    if (l.pointing !== undefined) note += ` — peak ${Number(l.pointing) ? "inside" : "outside"} the given mask`;
    out += `<figure><div class="stack"><img src="${c.original}" alt="original" width="${c.width}" height="${c.height}"><img class="layer" src="${l.src}" alt="${l.name}" style="opacity:0.45"></div><figcaption>${l.name}${note}</figcaption></figure>`;
  }
  out += "</div>";
  const panel = document.getElementById("case"); panel.innerHTML = out;
  document.getElementById("opacity").oninput = e => { for (const img of panel.querySelectorAll("img.layer")) img.style.opacity = e.target.value / 100; };
  checkImages();
}
function checkImages() {
  const images = [...document.images];
  Promise.all(images.map(img => img.complete ? Promise.resolve() : new Promise(r => { img.onload = img.onerror = r; }))).then(() => {
    document.body.dataset.broken = String(images.filter(img => !img.naturalWidth).length);
    document.body.dataset.images = String(images.length);
    document.body.dataset.ready = "1";
  });
}
for (const l of [...new Set(cases.flatMap(labelsOf))].sort()) document.getElementById("label").insertAdjacentHTML("beforeend", `<option>${l}</option>`);
for (const id of ["filter", "label", "uncertain"]) document.getElementById(id).addEventListener("input", render);
// #sort=KEY[:desc]&case=ID opens the page sorted and with a case shown (bookmarks, tests).
const params = new URLSearchParams(location.hash.slice(1));
if (params.get("sort")) { const [k, d] = params.get("sort").split(":"); sortKey = k; sortDir = d === "desc" ? -1 : 1; }
render();
const first = params.get("case") || (visible()[0] || {}).id;
if (first) show(first); else checkImages();
</script>
</body></html>
"""
