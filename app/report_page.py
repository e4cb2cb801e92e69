"""The report's one self-contained HTML page: its template and how a report's data fills it.

No external resources: the cases' images are files beside the page and the data is inlined
as JSON, so the folder can be zipped and opened anywhere, offline.
"""

from __future__ import annotations

import html
import json
from typing import Any

__all__ = ["render_page"]


def render_page(title: str, cases: list[dict], class_names: list[str], threshold: Any, run: dict[str, Any],
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
    if (l.stability !== undefined) note += ` — max-sensitivity ${Number(l.stability).toFixed(3)} (lower is steadier)`;
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
