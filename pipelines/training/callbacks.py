"""The callbacks of a training phase: history rows, the epoch pin, checkpoints and the best model.

:class:`PhaseController` keeps the best epoch across both phases (by ``train.monitor``),
stops early, and checkpoints after every epoch (model, optimizer and random state) so a
killed run resumes as an uninterrupted one would; :class:`HistoryWriter` appends
``history.csv``; :class:`EpochSync` pins a dataset's epoch to Keras's own epoch index;
:class:`OnWholeModel` lets callbacks see the whole model while a frozen part trains apart.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np

from medlens.pipelines.config import RunConfig
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.rundir import RunDir, atomic_write_csv, atomic_write_json

__all__ = ["HistoryWriter", "EpochSync", "PhaseController", "OnWholeModel", "rng_state", "restore_rng_state",
           "save_model", "monitor_mode"]

log = logging.getLogger(__name__)


def monitor_mode(monitor: str) -> str:
    return "max" if any(k in monitor for k in ("auc", "accuracy", "precision", "recall", "dice", "iou")) else "min"


class HistoryWriter(keras.callbacks.Callback):
    """Rewrites ``history.csv`` atomically after every epoch, with the phase and learning rate."""

    def __init__(self, path: Path, rows: list[dict[str, Any]], phase: int):
        super().__init__()
        self.path = path
        self.rows = rows
        self.phase = phase

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        row: dict[str, Any] = {"epoch": epoch + 1, "phase": self.phase}
        try:
            row["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # pragma: no cover - exotic schedules
            row["learning_rate"] = ""
        row.update({key: float(value) for key, value in (logs or {}).items() if key != "learning_rate"})
        self.rows.append(row)
        columns: list[str] = []
        for item in self.rows:
            columns.extend(key for key in item if key not in columns)
        atomic_write_csv(self.path, columns, ([item.get(c, "") for c in columns] for item in self.rows))


class EpochSync(keras.callbacks.Callback):
    """Pins a dataset's shuffling and augmentation to Keras's epoch index (resume-safe)."""

    def __init__(self, dataset: Any):
        super().__init__()
        self.dataset = dataset

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self.dataset.set_epoch(epoch)


def rng_variables(model: keras.Model) -> list[Any]:
    # Dropout's random state lives in SeedGenerator variables that `.keras` files do not keep.
    return [v for v in model.non_trainable_variables if v.path.endswith("seed_generator_state")]


def rng_state(model: keras.Model) -> list[list[int]]:
    """The model's random-number states (dropout masks), as JSON-ready lists."""
    return [np.asarray(keras.ops.convert_to_numpy(v)).tolist() for v in rng_variables(model)]


def restore_rng_state(model: keras.Model, states: list[list[int]]) -> None:
    """Put back states saved by :func:`rng_state` (same architecture, same order)."""
    variables = rng_variables(model)
    if len(variables) != len(states):
        log.warning("random state of %d generators cannot be restored into %d; dropout masks will differ",
                    len(states), len(variables))
        return
    for variable, value in zip(variables, states, strict=True):
        variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def save_model(model: keras.Model, path: Path) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.keras")
    model.save(tmp)
    os.replace(tmp, path)


class PhaseController(keras.callbacks.Callback):
    """Early stopping, reduce-on-plateau, best-model keeping and per-epoch checkpoints in one place.

    Keras's own EarlyStopping and ReduceLROnPlateau keep their counters in memory, so a
    resumed run could not continue them; this controller's whole state is a small dict
    written to ``checkpoints/state.json`` after every epoch, next to the checkpoint it
    belongs to, so ``--resume`` continues exactly where the run stopped.
    """

    def __init__(self, run: RunDir, cfg: RunConfig, phase: int, phase_start: int, state: dict[str, Any],
                 rows: list[dict[str, Any]], saved: keras.Model | None = None):
        super().__init__()
        # What checkpoints hold: the fitted model, or the whole classifier when only its
        # trainable top is fitted on cached activations (the two share every weight).
        self.saved = saved
        self.run = run
        self.train_cfg = cfg.train
        self.monitor = cfg.train.monitor
        self.mode = monitor_mode(self.monitor)
        self.phase = phase
        self.phase_start = phase_start
        self.state = state
        self.rows = rows
        self.state.setdefault("phase_best", None)
        self.state.setdefault("wait", 0)
        self.state.setdefault("lr_wait", 0)

    def _better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.mode == "max" else value < best)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        value = (logs or {}).get(self.monitor)
        if value is None:
            raise ConfigError(
                f"train.monitor {self.monitor!r} is not among the logged metrics: {', '.join(sorted(logs or {}))}"
            )
        value = float(value)
        state = self.state
        saved = self.saved or self.model
        if math.isfinite(value) and self._better(value, state.get("best")):
            state.update(best=value, best_epoch=epoch + 1)
            save_model(saved, self.run.checkpoints / "best.keras")
        if math.isfinite(value) and self._better(value, state["phase_best"]):
            state.update(phase_best=value, wait=0, lr_wait=0)
            saved.save_weights(self.run.checkpoints / "phase_best.weights.h5")
        else:
            state["wait"] += 1
            state["lr_wait"] += 1
            if state["lr_wait"] >= self.train_cfg.reduce_lr_patience:
                rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                self.model.optimizer.learning_rate = max(rate * self.train_cfg.reduce_lr_factor, 1e-7)
                state["lr_wait"] = 0
            if state["wait"] >= self.train_cfg.early_stopping_patience:
                self.model.stop_training = True
        self._checkpoint(epoch + 1, complete=False)

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        # Like EarlyStopping(restore_best_weights=True): the phase hands on its best epoch.
        best_weights = self.run.checkpoints / "phase_best.weights.h5"
        if best_weights.is_file():
            (self.saved or self.model).load_weights(best_weights)
        last = self.rows[-1]["epoch"] if self.rows else self.phase_start
        self._checkpoint(last, complete=True)

    def _checkpoint(self, epoch: int, *, complete: bool) -> None:
        # The model file is named by epoch and written before the state that points at it,
        # so a kill at any instant leaves a state.json whose checkpoint is complete.
        name = f"last-e{epoch:03d}{'-end' if complete else ''}.keras"
        saved = self.saved or self.model
        save_model(saved, self.run.checkpoints / name)
        self.state.update(phase=self.phase, phase_start=self.phase_start, epochs_done=epoch,
                          phase_complete=complete, checkpoint=name, history=self.rows,
                          rng=rng_state(saved))
        atomic_write_json(self.run.checkpoints / "state.json", self.state)
        for old in self.run.checkpoints.glob("last-e*.keras"):
            if old.name != name:
                old.unlink(missing_ok=True)


class OnWholeModel(keras.callbacks.Callback):
    """Hands callbacks the whole classifier while only its trainable top is fitted (cached activations).

    A caller's callback reads ``self.model`` (weights, layers such as ``backbone``) and may set
    ``self.model.stop_training``; it sees the model it passed to training, and a stop it asks for
    reaches the fit that is running.
    """

    _HOOKS = ("on_epoch_begin", "on_epoch_end", "on_train_begin", "on_train_end", "on_train_batch_begin",
              "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin", "on_test_batch_end",
              "on_predict_begin", "on_predict_end", "on_predict_batch_begin", "on_predict_batch_end")

    def __init__(self, callbacks: list[keras.callbacks.Callback], whole: keras.Model):
        super().__init__()
        self.inner = callbacks
        self.whole = whole
        for hook in self._HOOKS:
            setattr(self, hook, self._forward(hook))

    def _forward(self, hook: str) -> Callable[..., None]:
        def call(*args: Any, **kwargs: Any) -> None:
            for callback in self.inner:
                getattr(callback, hook)(*args, **kwargs)
            if getattr(self.whole, "stop_training", False):
                self.whole.stop_training = False
                self.model.stop_training = True

        return call

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        self.whole.stop_training = False
        for callback in self.inner:
            callback.set_model(self.whole)

    def set_params(self, params: dict[str, Any]) -> None:
        super().set_params(params)
        for callback in self.inner:
            callback.set_params(params)


