"""``medlens serve``: a trained run behind HTTP (FastAPI), for PACS gateways, viewers and scripts.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /predict`` (classification runs): one uploaded image (PNG, JPEG, TIFF, BMP, DICOM incl.
  multi-frame, NIfTI) → label, calibrated probabilities, threshold, and per frame the
  explanation overlays as base64 PNG (``?explain=gradcam,lime``; ``none`` for none);
- ``POST /segment`` (segmentation runs): → mask and overlay as base64 PNG, foreground
  fraction, components; ``?explain=true`` adds Seg-Grad-CAM;
- ``GET /health``, ``GET /model`` (model card and run facts), ``GET /`` (an upload page).

**Security and audit.** With a token (``--token-file`` or ``MEDLENS_TOKEN``) ``/predict``,
``/segment`` and ``/model`` need ``Authorization: Bearer TOKEN`` (compared in constant time;
401 otherwise); ``/health``, the upload page and the API docs hold no data and stay open. Every
request writes one JSON audit line (time, request id — also sent back as ``X-Request-ID`` —,
client address, method, endpoint, status, seconds, the upload's size and SHA-256) to the
``medlens.audit`` logger (``--audit-log FILE`` appends them to a file); never a file name,
patient name or ID.

**Dynamic batching.** ``/predict`` without explanations goes through a batcher: concurrent
requests wait at most ``batch_wait_ms`` (default 20 ms) to share one model call of up to
``max_batch`` images (padded to a power of two, so the compiled step is reused). Requests with
explanations run one at a time (the explainers keep per-call state).

**Volumes.** ``/segment`` also takes a NIfTI volume, or a zip of a DICOM series, and returns the
volume mask (``volume``: NIfTI as base64, and for DICOM a DICOM SEG) besides the per-slice frames.

The model is loaded once; inference is serialised by a lock (Keras models and their compiled
gradient steps are not guaranteed thread-safe), while uploads are received and checked
concurrently. Every upload is size-limited while it streams (413), its content is sniffed
by the same readers as the CLI (an unreadable or unsupported file is a 415 with the
reason), its pixel count is limited (413), and it is written only to the service's own
temporary folder under a random name, deleted after the request. Errors are JSON:
``{"error": "...", "status": 4xx}``.
"""

from __future__ import annotations

import asyncio
import datetime
import hmac
import json
import logging
import shutil
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from medlens.app.service_engine import Engine, ServiceSettings, http_error
from medlens.app.service_uploads import ZIP_MAGIC, b64, check_readable, receive, unzip_series
from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.explain.methods import METHODS

__all__ = ["create_app", "ServiceSettings"]

log = logging.getLogger(__name__)
audit_log = logging.getLogger("medlens.audit")
#: Endpoints that return data; with a token they need it. The rest (health, page, docs) hold none.
_PROTECTED = frozenset({"/predict", "/segment", "/model"})
_EXPLAIN_QUERY = {"/predict": ("default", "none"), "/segment": ("true", "false")}


def create_app(run_dir: str | Path, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``run_dir``.

    Raises:
        RunDirError: ``run_dir`` is not a finished run.
    """
    settings = settings or ServiceSettings()
    engine = Engine(Path(run_dir), settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="medlens", version="0.1.0", lifespan=lifespan,
                  description="Decision support only: predictions and heatmaps are not a diagnosis.")
    app.state.engine = engine

    @app.middleware("http")
    async def guard_and_audit(request: Request, call_next):
        request_id = uuid.uuid4().hex[:16]
        request.state.request_id = request_id
        request.state.input_sha256, request.state.input_bytes = "", 0
        started = time.perf_counter()
        if settings.token is not None and request.url.path in _PROTECTED and not _authorised(request, settings.token):
            response = JSONResponse({"error": "missing or wrong bearer token", "status": 401}, status_code=401,
                                    headers={"WWW-Authenticate": 'Bearer realm="medlens"'})
        else:
            response = await call_next(request)
        response.headers["X-Request-ID"] = request_id
        audit_log.info(json.dumps({
            "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": request_id, "client": request.client.host if request.client else "",
            "method": request.method, "endpoint": request.url.path, "status": response.status_code,
            "seconds": round(time.perf_counter() - started, 4), "input_bytes": request.state.input_bytes,
            "input_sha256": request.state.input_sha256}))
        return response

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(MedlensError)
    async def medlens_error(_: Request, exc: MedlensError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 400}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        reply: dict[str, Any] = {"status": "ok", "task": engine.task, "run": engine.run.root.name}
        if engine.batcher is not None:
            reply["batching"] = {"model_calls": engine.batcher.calls, "images": engine.batcher.images,
                                 "wait_ms": settings.batch_wait_s * 1000, "max_batch": settings.max_batch}
        return reply

    @app.get("/model")
    def model() -> dict[str, Any]:
        card = engine.run.card_path.read_text() if engine.run.card_path.is_file() else ""
        keys = ("task", "class_names", "findings", "thresholds", "backbone", "architecture", "image_size", "threshold",
                "temperature", "referable_grade", "grade_cuts", "grade_cuts_method", "created", "keras_version")
        return {"run": engine.run.root.name, **{k: engine.state[k] for k in keys if k in engine.state},
                "model_card": card}

    @app.post("/predict")
    async def predict(request: Request, file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
                      explain: str = Query("default", description=", ".join(METHODS)
                                                                  + " (comma-separated), or none")
                      ) -> dict[str, Any]:
        engine.require("/predict")
        methods = _methods(explain, settings)
        batched = not methods
        if batched:
            engine.batcher.arriving(+1)
        try:
            folder, target = await receive(file, engine, request)
        except BaseException:
            if batched:
                engine.batcher.arriving(-1)
            raise
        name = Path(file.filename or "upload").name
        try:
            try:
                records = await run_in_threadpool(check_readable, target, name, engine)
            finally:
                if batched:
                    engine.batcher.arriving(-1)
            started = time.perf_counter()
            if methods:
                result = await run_in_threadpool(_predict_locked, engine, target, folder, methods)
                rows = result.rows
                if not rows:
                    raise http_error(415, f"{name}: {result.errors[0][1] if result.errors else 'no image in the upload'}")
            else:  # batched with concurrent requests
                probabilities = await asyncio.wrap_future(engine.batcher.submit([r.pixels for r in records]))
                rows = [{"frame": "" if r.frame is None else r.frame, **engine.model.fields(p)}
                        for r, p in zip(records, probabilities, strict=True)]
            frames = [_frame(engine, row, methods, folder / "out") for row in rows]
            return {"file": name, "label": frames[0]["label"], "probabilities": frames[0]["probabilities"],
                    "threshold": engine.model.threshold, "frames": frames,
                    "seconds": round(time.perf_counter() - started, 3),
                    "notice": "Decision support only; not a diagnosis."}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.post("/segment")
    async def segment(request: Request, file: UploadFile = File(...),  # noqa: B008
                      explain: bool = Query(False, description="add a Seg-Grad-CAM overlay")) -> dict[str, Any]:
        engine.require("/segment")
        folder, target = await receive(file, engine, request)
        name = Path(file.filename or "upload").name
        try:
            with open(target, "rb") as handle:
                zipped = handle.read(4) == ZIP_MAGIC
            if zipped:
                target = await run_in_threadpool(unzip_series, target, name, engine)
            else:
                await run_in_threadpool(check_readable, target, name, engine)
            started = time.perf_counter()
            result = await run_in_threadpool(_segment_locked, engine, target, folder, explain)
            if not result.rows:
                raise http_error(415, f"{name}: {result.errors[0][1] if result.errors else 'no image in the upload'}")
            out = folder / "out"
            frames = []
            for row in result.rows:
                item = {"frame": row["frame"] if row["frame"] != "" else None,
                        "foreground_fraction": row["foreground_fraction"], "components": row["components"],
                        "mask_png_base64": b64(out / row["mask"]),
                        "overlay_png_base64": b64(out / row["overlay"])}
                if explain:
                    item["seg_gradcam_png_base64"] = b64(out / row["explanation"])
                frames.append(item)
            reply: dict[str, Any] = {"file": name, "threshold": engine.model.threshold, "frames": frames}
            if result.volumes:
                volume = result.volumes[0]
                reply["volume"] = {
                    "kind": volume["kind"], "slices": volume["slices"], "shape": volume["shape"],
                    "foreground_voxels": volume.get("foreground_voxels", ""),
                    "foreground_ml": volume.get("foreground_ml", ""), "note": volume.get("note", ""),
                    "mask_nifti_base64": b64(out / volume["mask_volume"]) if volume.get("mask_volume") else None,
                    "seg_dicom_base64": b64(out / volume["seg"]) if volume.get("seg") else None,
                    "report_dicom_base64": b64(out / volume["report"]) if volume.get("report") else None}
            if zipped and result.errors:
                reply["skipped"] = len(result.errors)  # files of the zip that were not DICOM slices
            reply.update(seconds=round(time.perf_counter() - started, 3),
                         notice="Decision support only; not a diagnosis.")
            return reply
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        explain_on, explain_off = _EXPLAIN_QUERY[engine.spec.endpoint]
        return (_PAGE.replace("{{TASK}}", engine.task).replace("{{RUN}}", engine.run.root.name)
                .replace("{{ENDPOINT}}", engine.spec.endpoint).replace("{{EXPLAIN_ON}}", explain_on)
                .replace("{{EXPLAIN_OFF}}", explain_off))

    return app


def _authorised(request: Request, token: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())


def _frame(engine: Engine, row: dict[str, Any], methods: tuple[str, ...], out: Path) -> dict[str, Any]:
    """One frame of a ``/predict`` reply: label, probabilities, the task's summary, and its maps."""
    item: dict[str, Any] = {"frame": row["frame"] if row["frame"] != "" else None, "label": row["label"],
                            "probabilities": {c: row[f"p_{c}"] for c in engine.model.class_names},
                            **engine.model.row_summary(row)}
    if methods:
        targets = engine.model.explained_targets(row)
        if targets == [None]:
            item["explained_class"] = row.get("explained_class")
            item["explanations"] = _explanations(row, methods, out, None)
        else:  # one set of maps per finding explained
            item["explanations"] = {t: _explanations(row, methods, out, t) for t in targets}
    return item


def _segment_locked(engine: Engine, target: Path, folder: Path, explain: bool) -> Any:
    from medlens.pipelines.segpredict import segment_paths

    with engine.lock:
        return segment_paths(engine.run.root, [target], folder / "out", model=engine.model, explain=explain)


def _explanations(row: dict[str, Any], methods: tuple[str, ...], out: Path, target: str | None) -> dict[str, Any]:
    """Overlay (base64 PNG) and peak of each method for one target of a row."""
    keys = [(method, slug if target is None else f"{slug}_{target}") for method, slug in _slugs(methods)]
    return {method: {"overlay_png_base64": b64(out / row[f"{key}_overlay"]),
                     "peak": [row[f"{key}_peak_row"], row[f"{key}_peak_col"]]} for method, key in keys}


def _slugs(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(m, METHODS[m]) for m in methods]


def _methods(text: str, settings: ServiceSettings) -> tuple[str, ...]:
    if text == "default":
        return settings.explain
    if text.strip().lower() in ("", "none"):
        return ()
    from medlens.pipelines.explain import parse_methods

    try:
        return parse_methods(text)
    except ConfigError as exc:
        raise http_error(400, str(exc)) from None


def _predict_locked(engine: Engine, target: Path, folder: Path, methods: tuple[str, ...]) -> Any:
    from medlens.pipelines.predict import predict_paths

    with engine.lock:
        explainer = engine.explainer(methods) if methods else None
        return predict_paths(engine.run.root, [target], folder / "out", predictor=engine.model, explainer=explainer)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>medlens</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;max-width:980px;color:#1b1f24}
.warning{background:#fff3cd;padding:8px 12px;border:1px solid #e6d48a;font-size:14px}
#result img{max-width:300px;margin:6px;border:1px solid #ccc;image-rendering:pixelated}
#error{color:#a4161a}</style></head>
<body data-state="idle">
<h1>medlens</h1>
<p>Run <code>{{RUN}}</code> ({{TASK}}). <a href="/docs">API documentation</a></p>
<p class="warning"><b>Decision support only.</b> Not a diagnosis; the model is not cleared for clinical use.</p>
<form id="form"><input id="file" type="file" name="file" required>
<label><input id="explain" type="checkbox" checked> explanations</label>
<label>token <input id="token" type="password" autocomplete="off" placeholder="if the service needs one"></label>
<button id="send" type="submit">Send</button></form>
<p id="error"></p><div id="result"></div>
<script>
"use strict";

async function send(file) {
  document.body.dataset.state = "busy";
  const data = new FormData(); data.append("file", file);
  const explain = document.getElementById("explain").checked;
  const url = `{{ENDPOINT}}?explain=${explain ? "{{EXPLAIN_ON}}" : "{{EXPLAIN_OFF}}"}`;
  const out = document.getElementById("result"), error = document.getElementById("error");
  out.innerHTML = ""; error.textContent = "";
  const token = document.getElementById("token").value.trim();
  const headers = token ? {"Authorization": `Bearer ${token}`} : {};
  const response = await fetch(url, {method: "POST", body: data, headers});
  const body = await response.json();
  if (!response.ok) { error.textContent = body.error; document.body.dataset.state = "error"; return; }
  for (const frame of body.frames) {
    let html = "";
    if (frame.label !== undefined) {
      const said = frame.findings ? `Findings present <b>${frame.findings.join(", ") || "none"}</b>` : `Predicted <b>${frame.label}</b>`;
      html += `<p id="label">${said}: ` + Object.entries(frame.probabilities).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ") + "</p>";
      const maps = frame.findings ? Object.entries(frame.explanations || {}).flatMap(([f, per]) => Object.entries(per).map(([m, e]) => [`${m}: ${f}`, e]))
                                  : Object.entries(frame.explanations || {});
      for (const [name, e] of maps) html += `<img alt="${name}" title="${name}" src="data:image/png;base64,${e.overlay_png_base64}">`;
    } else {
      html += `<p id="label">Segmented ${(100 * frame.foreground_fraction).toFixed(2)} % (${frame.components} region(s))</p>`;
      html += `<img alt="overlay" src="data:image/png;base64,${frame.overlay_png_base64}">`;
      if (frame.seg_gradcam_png_base64) html += `<img alt="Seg-Grad-CAM" src="data:image/png;base64,${frame.seg_gradcam_png_base64}">`;
    }
    out.insertAdjacentHTML("beforeend", html);
  }
  document.body.dataset.state = "done";
}
document.getElementById("form").addEventListener("submit", event => {
  event.preventDefault(); send(document.getElementById("file").files[0]);
});
// ?image=URL sends that image as if it had been chosen (links from a viewer, and the browser test).
const preset = new URLSearchParams(location.search).get("image");
if (preset) fetch(preset).then(r => r.blob()).then(blob => send(new File([blob], "image", {type: blob.type})));
</script></body></html>
"""
