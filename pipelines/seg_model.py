"""A trained segmentation run, ready to predict: probability maps at each image's own size.

:class:`SegModel` loads a run's model and settings and predicts whole images (sliding-window
tiles with Gaussian blending in patch mode, a resize in whole mode); batch segmentation, the
service, the evaluator and the explainers all apply a run through it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.models.backbones import preprocess_function
from medlens.pipelines.data import (
    to_model_channels,
)
from medlens.pipelines.inference.tiling import sliding_window_predict, whole_image_predict
from medlens.pipelines.rundir import RunDir
from medlens.pipelines.tasks import require_command

__all__ = ["SegModel", "encoder_preprocess"]

log = logging.getLogger(__name__)


def encoder_preprocess(encoder: str) -> Callable[[np.ndarray], np.ndarray] | None:
    """The encoder's ``preprocess_input`` for pretrained encoders; None scales to [0, 1]."""
    return preprocess_function(encoder) if encoder in ("vgg16", "resnet50") else None


class SegModel:
    """A trained segmentation model with the settings to predict whole images of any size.

    Args:
        run_dir: A finished segmentation run (``run.json`` says ``task: segmentation``).
        model: An already loaded model (default: ``run_dir/model.keras``).

    Raises:
        RunDirError: Not a finished segmentation run.
    """

    def __init__(self, run_dir: str | Path, model: keras.Model | None = None):
        self.run = RunDir(run_dir).require()
        self.state = self.run.read_state()
        require_command(self.state, self.run.root, "segment")
        self.model = model if model is not None else keras.saving.load_model(self.run.model_path, compile=False)
        self.channels = int(self.state["channels"])
        self.num_classes = int(self.state["num_classes"])
        self.mode = self.state["mode"]
        self.image_size = tuple(self.state["image_size"])
        self.tile = int(self.state["tile"])
        self.overlap = float(self.state["overlap"])
        self.batch_size = int(self.state.get("batch_size", 16))
        self.multiple = int(self.state["multiple"])
        self.threshold = float(self.state.get("threshold", 0.5))
        self.min_size = int(self.state.get("min_size", 0))
        self.preprocess = encoder_preprocess(self.state.get("encoder", "none"))
        self.input_scale: dict[str, Any] | None = self.state.get("input_scale")
        self.tta = str(self.state.get("tta", "none"))  # runs written before TTA existed: none

    def model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Reader pixels (``[0, 1]``) → the model's ``H×W×channels`` input."""
        image = to_model_channels(np.asarray(pixels, dtype=np.float32), self.channels)
        return self.preprocess(image[None])[0] if self.preprocess else image / np.float32(255.0)

    def _predict(self, batch: np.ndarray) -> np.ndarray:
        """``(B, H, W, C)`` probabilities; with ``tta: flips`` the mean over the batch's four flips."""
        if self.tta != "flips":
            return np.asarray(self.model.predict_on_batch(batch))
        views = ((), (2,), (1,), (1, 2))  # as is, left-right, up-down, both
        stacked = np.concatenate([np.flip(batch, axis) if axis else batch for axis in views])
        out = np.asarray(self.model.predict_on_batch(stacked)).reshape(len(views), len(batch), *batch.shape[1:3], -1)
        return np.mean([np.flip(part, axis) if axis else part for part, axis in zip(out, views, strict=True)], axis=0)

    def probability(self, pixels: np.ndarray, factor: float = 1.0) -> np.ndarray:
        """Foreground probability ``H×W`` (``H×W×C`` for several classes) at the image's own size.

        ``factor`` ≠ 1 resamples the image by it first (``--match-scale``: to the training scale)
        and the probabilities back to the image's size.
        """
        import cv2

        if factor != 1.0:
            height, width = pixels.shape[:2]
            size = (max(1, round(width * factor)), max(1, round(height * factor)))
            resized = cv2.resize(np.asarray(pixels, np.float32), size,
                                 interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC)
            resized = np.clip(resized, 0.0, 1.0)
            prob = self.probability(resized[..., None] if resized.ndim == 2 else resized)
            return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = self.model_input(pixels)
        height, width = x.shape[:2]
        if self.mode == "whole":
            resized = cv2.resize(x, self.image_size[::-1], interpolation=cv2.INTER_AREA
                                 if height * width > self.image_size[0] * self.image_size[1] else cv2.INTER_LINEAR)
            if resized.ndim == 2:
                resized = resized[..., None]
            prob = whole_image_predict(self._predict, resized, multiple=self.multiple)
            return cv2.resize(prob, (width, height), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        if min(height, width) < self.tile:
            return whole_image_predict(self._predict, x, multiple=self.multiple)
        return sliding_window_predict(self._predict, x, tile=self.tile, overlap=self.overlap,
                                      batch_size=self.batch_size, multiple=self.multiple)


# --------------------------------------------------------------------------- thresholds and metrics
