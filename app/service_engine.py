"""The service's model side: its settings, the loaded run (:class:`Engine`) and the request batcher.

:class:`Batcher` gathers the images of concurrent requests into one forward pass, so a ward's
burst of uploads costs about one batch, not one pass each.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import HTTPException

from medlens.pipelines.errors import ConfigError
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.tasks import task_of_run

__all__ = ["ServiceSettings", "Engine", "Batcher", "http_error"]

log = logging.getLogger("medlens.service")


def http_error(status: int, message: str) -> HTTPException:
    """The HTTP error a request gets, its message one line."""
    return HTTPException(status_code=status, detail=message)


class ServiceSettings:
    """Limits and defaults of one service.

    Args:
        max_upload_mb: Largest accepted upload.
        max_pixels: Largest accepted image (height × width × frames).
        explain: Default explanation methods for ``/predict`` (``()`` for none).
        lime_samples: LIME samples per explanation (the service trades a little for speed).
        token: Bearer token the data endpoints require (``None``: no authentication).
        batch_wait_ms: How long a ``/predict`` request waits for others to share its model call.
        max_batch: Most images in one batched model call.
    """

    def __init__(self, max_upload_mb: float = 32.0, max_pixels: int = 40_000_000,
                 explain: tuple[str, ...] = ("gradcam",), lime_samples: int = 300, token: str | None = None,
                 batch_wait_ms: float = 20.0, max_batch: int = 32):
        if max_upload_mb <= 0 or max_pixels <= 0:
            raise ConfigError("upload and pixel limits must be positive")
        if token is not None and len(token) < 16:
            raise ConfigError("the service token must have at least 16 characters")
        if batch_wait_ms < 0 or max_batch < 1:
            raise ConfigError("batch_wait_ms must be ≥ 0 and max_batch ≥ 1")
        self.max_upload_bytes = int(max_upload_mb * 1024 * 1024)
        self.max_pixels = int(max_pixels)
        self.explain = tuple(explain)
        self.lime_samples = int(lime_samples)
        self.token = token
        self.batch_wait_s = float(batch_wait_ms) / 1000.0
        self.max_batch = int(max_batch)


class Engine:
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
        self.batcher = Batcher(self) if self.spec.endpoint == "/predict" else None

    def require(self, endpoint: str) -> None:
        """409 unless this run's task is served at ``endpoint``."""
        if self.spec.endpoint != endpoint:
            raise http_error(409, f"this service runs a {self.task} model: POST {self.spec.endpoint}")

    def explainer(self, methods: tuple[str, ...]) -> Any:
        from medlens.pipelines.explain import Explainer, ExplainOptions

        if methods not in self.explainers:
            options = ExplainOptions(methods=methods, lime_samples=self.settings.lime_samples)
            self.explainers[methods] = Explainer(self.model, options, self.workdir)
        return self.explainers[methods]

    def close(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Batcher:
    """Collects concurrent prediction requests into one model call (bounded wait, bounded size)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.queue: queue.Queue[tuple[list[np.ndarray], concurrent.futures.Future] | None] = queue.Queue()
        self.calls = 0
        self.images = 0
        self._arriving = 0  # requests received but not yet queued: worth waiting for
        self._count_lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, name="medlens-batcher", daemon=True)
        self.thread.start()

    def arriving(self, change: int) -> None:
        """A request starts (+1) or stops (-1) being on its way to :meth:`submit`."""
        with self._count_lock:
            self._arriving += change

    def submit(self, pixels: list[np.ndarray]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((pixels, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _collect(self, first: tuple[list[np.ndarray], concurrent.futures.Future]) -> tuple[list, bool]:
        items, count = [first], len(first[0])
        deadline = time.monotonic() + self.engine.settings.batch_wait_s
        while count < self.engine.settings.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (self._arriving <= 0 and self.queue.empty()):
                break  # nobody else is on the way: a lone request never waits
            try:
                item = self.queue.get(timeout=min(remaining, 0.002))
            except queue.Empty:
                continue
            if item is None:
                return items, True
            items.append(item)
            count += len(item[0])
        return items, False

    def _loop(self) -> None:
        while (first := self.queue.get()) is not None:
            items, stop = self._collect(first)
            pixels = [p for item, _ in items for p in item]
            size = 1 << (len(pixels) - 1).bit_length()  # a power of two: few distinct compiled shapes
            try:
                with self.engine.lock:
                    probabilities = self.engine.model.predict_pixels(pixels + [pixels[-1]] * (size - len(pixels)))
            except Exception as exc:  # noqa: BLE001 - every waiting request gets the error
                for _, future in items:
                    future.set_exception(exc)
            else:
                self.calls += 1
                self.images += len(pixels)
                start = 0
                for item, future in items:
                    future.set_result(probabilities[start:start + len(item)])
                    start += len(item)
            if stop:
                return


# The explain query of each endpoint, as the upload page sends it (checkbox on, off).
