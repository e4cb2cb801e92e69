"""``medlens serve``: a trained run behind HTTP (FastAPI), for PACS gateways, viewers and scripts.

Endpoints (OpenAPI schema at ``/openapi.json``, interactive docs at ``/docs``):

- ``POST /predict`` (classification runs): one uploaded image (PNG, JPEG, TIFF, BMP, DICOM incl.
  multi-frame, NIfTI) → label, calibrated probabilities, threshold, and per frame the
  explanation overlays as base64 PNG (``?explain=gradcam,lime``; ``none`` for none);
- ``POST /segment`` (segmentation runs): → mask and overlay as base64 PNG, foreground
  fraction, components; ``?explain=true`` adds Seg-Grad-CAM;
- ``GET /health``, ``GET /model`` (model card and run facts), ``GET /`` (an upload page).

The model is loaded once; inference is serialised by a lock (Keras models and their compiled
gradient steps are not guaranteed thread-safe), while uploads are received and checked
concurrently. Every upload is size-limited while it streams (413), its content is sniffed
by the same readers as the CLI (an unreadable or unsupported file is a 415 with the
reason), its pixel count is limited (413), and it is written only to the service's own
temporary folder under a random name, deleted after the request. Errors are JSON:
``{"error": "...", "status": 4xx}``.
"""

from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse

from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.tasks import task_of_run

__all__ = ["create_app", "ServiceSettings"]

log = logging.getLogger(__name__)
_CHUNK = 1 << 20


class ServiceSettings:
    """Limits and defaults of one service.

    Args:
        max_upload_mb: Largest accepted upload.
        max_pixels: Largest accepted image (height × width × frames).
        explain: Default explanation methods for ``/predict`` (``()`` for none).
        lime_samples: LIME samples per explanation (the service trades a little for speed).
    """

    def __init__(self, max_upload_mb: float = 32.0, max_pixels: int = 40_000_000,
                 explain: tuple[str, ...] = ("gradcam",), lime_samples: int = 300):
        if max_upload_mb <= 0 or max_pixels <= 0:
            raise ConfigError("upload and pixel limits must be positive")
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_pixels = int(max_pixels)
        self.explain = tuple(explain)
        self.lime_samples = int(lime_samples)


class _Engine:
    """The loaded run and the lock that serialises inference on it."""

    def __init__(self, run_dir: Path, settings: ServiceSettings):
        self.run = RunDir(run_dir).require()
        self.state = self.run.read_state()
        self.spec = task_of_run(self.state, self.run.root)
        self.task = self.spec.name
        self.settings = settings
        self.lock = threading.Lock()
        self.workdir = Path(tempfile.mkdtemp(prefix="medlens-serve-"))
        self.explainers: dict[tuple[str, ...], Any] = {}
        self.model = self.spec.load(self.run.root)

    def require(self, endpoint: str) -> None:
        """409 unless this run's task is served at ``endpoint``."""
        if self.spec.endpoint != endpoint:
            raise _error(409, f"this service runs a {self.task} model: POST {self.spec.endpoint}")

    def explainer(self, methods: tuple[str, ...]) -> Any:
        from medlens.pipelines.explain import Explainer, ExplainOptions

        if methods not in self.explainers:
            options = ExplainOptions(methods=methods, lime_samples=self.settings.lime_samples)
            self.explainers[methods] = Explainer(self.model, options, self.workdir)
        return self.explainers[methods]

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)


# The explain query of each endpoint, as the upload page sends it (checkbox on, off).
_EXPLAIN_QUERY = {"/predict": ("default", "none"), "/segment": ("true", "false")}


def _error(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


async def _receive(upload: UploadFile, engine: _Engine) -> tuple[Path, Path]:
    """Stream the upload into a fresh folder of the service's temp dir, enforcing the size limit."""
    folder = engine.workdir / uuid.uuid4().hex
    folder.mkdir()
    target = folder / "upload"  # never the client's file name: no path ever comes from the request
    size = 0
    with open(target, "wb") as handle:
        while chunk := await upload.read(_CHUNK):
            size += len(chunk)
            if size > engine.settings.max_upload_bytes:
                handle.close()
                shutil.rmtree(folder, ignore_errors=True)
                raise _error(413, f"upload is larger than {engine.settings.max_upload_bytes // (1024 * 1024)} MB")
            handle.write(chunk)
    if size == 0:
        shutil.rmtree(folder, ignore_errors=True)
        raise _error(400, "upload is empty (0 bytes)")
    return folder, target


def _check_readable(target: Path, name: str, engine: _Engine) -> None:
    """Sniff and decode the upload once (as the CLI would); unreadable or too large is a 4xx."""
    from medlens.pipelines.io import read_frames

    try:
        records = read_frames(target)
    except MedlensError as exc:
        reason = getattr(exc, "reason", str(exc))
        status = 413 if "limit" in reason or "too large" in reason else 415
        raise _error(status, f"{name}: {reason}") from None
    pixels = sum(int(r.pixels.shape[0] * r.pixels.shape[1]) for r in records)
    if pixels > engine.settings.max_pixels:
        raise _error(413, f"{name}: {pixels} pixels, above this service's limit of {engine.settings.max_pixels}")


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def create_app(run_dir: str | Path, settings: ServiceSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``run_dir``.

    Raises:
        RunDirError: ``run_dir`` is not a finished run.
    """
    settings = settings or ServiceSettings()
    engine = _Engine(Path(run_dir), settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        engine.close()

    app = FastAPI(title="medlens", version="0.1.0", lifespan=lifespan,
                  description="Decision support only: predictions and heatmaps are not a diagnosis.")
    app.state.engine = engine

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse({"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code)

    @app.exception_handler(MedlensError)
    async def medlens_error(_: Request, exc: MedlensError) -> JSONResponse:
        return JSONResponse({"error": str(exc), "status": 400}, status_code=400)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "task": engine.task, "run": engine.run.root.name}

    @app.get("/model")
    def model() -> dict[str, Any]:
        card = engine.run.card_path.read_text() if engine.run.card_path.is_file() else ""
        keys = ("task", "class_names", "findings", "thresholds", "backbone", "architecture", "image_size", "threshold",
                "temperature", "created", "keras_version")
        return {"run": engine.run.root.name, **{k: engine.state[k] for k in keys if k in engine.state},
                "model_card": card}

    @app.post("/predict")
    async def predict(file: UploadFile = File(...),  # noqa: B008 - FastAPI's declaration style
                      explain: str = Query("default", description="gradcam, gradcam++, lime, gradient, smoothgrad, ig "
                                                                  "(comma-separated), or none")
                      ) -> dict[str, Any]:
        engine.require("/predict")
        methods = _methods(explain, settings)
        folder, target = await _receive(file, engine)
        name = Path(file.filename or "upload").name
        try:
            _check_readable(target, name, engine)
            started = time.perf_counter()
            result = _predict_locked(engine, target, folder, methods)
            if not result.rows:
                reason = result.errors[0][1] if result.errors else "no image in the upload"
                raise _error(415, f"{name}: {reason}")
            frames = []
            for row in result.rows:
                item: dict[str, Any] = {"frame": row["frame"] if row["frame"] != "" else None, "label": row["label"],
                                        "probabilities": {c: row[f"p_{c}"] for c in engine.model.class_names},
                                        **engine.model.row_summary(row)}
                if methods:
                    targets = engine.model.explained_targets(row)
                    if targets == [None]:
                        item["explained_class"] = row.get("explained_class")
                        item["explanations"] = _explanations(row, methods, folder / "out", None)
                    else:  # one set of maps per finding explained
                        item["explanations"] = {t: _explanations(row, methods, folder / "out", t) for t in targets}
                frames.append(item)
            return {"file": name, "label": frames[0]["label"], "probabilities": frames[0]["probabilities"],
                    "threshold": engine.model.threshold, "frames": frames,
                    "seconds": round(time.perf_counter() - started, 3),
                    "notice": "Decision support only; not a diagnosis."}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.post("/segment")
    async def segment(file: UploadFile = File(...),  # noqa: B008
                      explain: bool = Query(False, description="add a Seg-Grad-CAM overlay")) -> dict[str, Any]:
        engine.require("/segment")
        folder, target = await _receive(file, engine)
        name = Path(file.filename or "upload").name
        try:
            _check_readable(target, name, engine)
            from medlens.pipelines.segpredict import segment_paths

            started = time.perf_counter()
            with engine.lock:
                result = segment_paths(engine.run.root, [target], folder / "out", model=engine.model, explain=explain)
            if not result.rows:
                raise _error(415, f"{name}: {result.errors[0][1] if result.errors else 'no image in the upload'}")
            frames = []
            for row in result.rows:
                item = {"frame": row["frame"] if row["frame"] != "" else None,
                        "foreground_fraction": row["foreground_fraction"], "components": row["components"],
                        "mask_png_base64": _b64(folder / "out" / row["mask"]),
                        "overlay_png_base64": _b64(folder / "out" / row["overlay"])}
                if explain:
                    item["seg_gradcam_png_base64"] = _b64(folder / "out" / row["explanation"])
                frames.append(item)
            return {"file": name, "threshold": engine.model.threshold, "frames": frames,
                    "seconds": round(time.perf_counter() - started, 3),
                    "notice": "Decision support only; not a diagnosis."}
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        explain_on, explain_off = _EXPLAIN_QUERY[engine.spec.endpoint]
        return (_PAGE.replace("{{TASK}}", engine.task).replace("{{RUN}}", engine.run.root.name)
                .replace("{{ENDPOINT}}", engine.spec.endpoint).replace("{{EXPLAIN_ON}}", explain_on)
                .replace("{{EXPLAIN_OFF}}", explain_off))

    return app


def _explanations(row: dict[str, Any], methods: tuple[str, ...], out: Path, target: str | None) -> dict[str, Any]:
    """Overlay (base64 PNG) and peak of each method for one target of a row."""
    keys = [(method, slug if target is None else f"{slug}_{target}") for method, slug in _slugs(methods)]
    return {method: {"overlay_png_base64": _b64(out / row[f"{key}_overlay"]),
                     "peak": [row[f"{key}_peak_row"], row[f"{key}_peak_col"]]} for method, key in keys}


def _slugs(methods: tuple[str, ...]) -> list[tuple[str, str]]:
    from medlens.pipelines.explain import METHODS

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
        raise _error(400, str(exc)) from None


def _predict_locked(engine: _Engine, target: Path, folder: Path, methods: tuple[str, ...]) -> Any:
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
  const response = await fetch(url, {method: "POST", body: data});
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
