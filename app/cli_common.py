"""What the ``medlens`` commands share: a quiet backend start, progress bars, metric lines."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NO_BACKEND", "quiet_backend", "progress_bar", "fit_verbosity", "training_callbacks", "default_run_dir",
           "print_metrics"]

NO_BACKEND = frozenset({"presets", "merge", "report", "pacs"})


def quiet_backend() -> None:
    """Import Keras with TensorFlow's C++ start-up chatter kept off the user's terminal.

    TensorFlow 2.21 writes absl/CUDA notices straight to file descriptor 2, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says, so stderr is pointed at a temporary file during the
    import and replayed only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                # Device discovery (CUDA probing: "failed call to cuInit …") prints on first use, which
                # for the explanation gradients comes later, outside this redirect: do it now, inside.
                import tensorflow as tf

                tf.config.list_physical_devices()
            elif importlib.util.find_spec("tensorflow") is not None:
                # On JAX or torch, Keras still imports an installed TensorFlow (set_random_seed, saving a
                # .keras file), and its oneDNN/CUDA notices came out mid-training: take them here.
                import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr)


def fit_verbosity(args: argparse.Namespace) -> int:
    """Keras's own epoch lines only with --verbose; otherwise :func:`training_callbacks` reports."""
    if not args.verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


def training_callbacks(args: argparse.Namespace) -> list[Any]:
    if args.verbose:
        return []
    from medlens.app.progress import TrainingProgress

    return [TrainingProgress(lambda line: print(line, flush=True))]


def default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def print_metrics(metrics: dict, header: str) -> None:
    keys = ("n", "dice", "iou", "qwk", "mae", "accuracy", "auc", "macro_auc", "micro_auc", "mean_average_precision", "sensitivity",
            "specificity", "precision", "f1", "ece", "threshold")
    # Then a multi-label evaluation's per-finding AUCs ("auc Effusion", ...), in its order.
    keys += tuple(k for k in metrics if k.startswith("auc "))
    parts = []
    for key in keys:
        value = metrics.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    print(f"{header}: " + ", ".join(parts))

