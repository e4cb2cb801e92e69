"""What `medlens train` and `medlens demo` show while a model trains.

One progress bar per phase (over that phase's batches, with the running loss) and one summary
line per epoch with the key metrics; Keras's own epoch lines only with ``--verbose``
(``history.csv`` keeps every metric either way). The bar goes to stderr and disappears when
stderr is not a terminal; the summary lines always go to stdout.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import keras

__all__ = ["TrainingProgress", "summary_line"]

# Metrics worth a glance, in the order they are shown (whichever the task logs).
_KEY_METRICS = ("loss", "auc", "accuracy", "dice", "val_loss", "val_auc", "val_accuracy", "val_dice")


def summary_line(phase: int, epoch: int, last_epoch: int, logs: dict[str, Any], seconds: float,
                 learning_rate: float | None = None) -> str:
    """``phase 1  epoch  3/10  loss 0.412  auc 0.871  val_loss 0.390  val_auc 0.902  lr 1e-03  4.1 s``."""
    parts = [f"phase {phase}", f"epoch {epoch:>{len(str(last_epoch))}}/{last_epoch}"]
    parts += [f"{key} {float(logs[key]):.4f}" for key in _KEY_METRICS if key in logs]
    if learning_rate is not None:
        parts.append(f"lr {learning_rate:.0e}")
    parts.append(f"{seconds:.1f} s")
    return "  ".join(parts)


class TrainingProgress(keras.callbacks.Callback):
    """A Keras callback: a tqdm bar per phase (one ``fit``) and a summary line per epoch."""

    def __init__(self, echo: Callable[[str], None] = print, bar: bool | None = None):
        super().__init__()
        self.echo = echo
        self.bar_enabled = sys.stderr.isatty() if bar is None else bar
        self.phase = 0
        self.bar: Any = None
        self.first_epoch: int | None = None
        self.epoch_started = 0.0

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.phase += 1
        self.first_epoch = None

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self.first_epoch is None:
            self.first_epoch = epoch
            if self.bar_enabled:
                from tqdm import tqdm

                steps = self.params.get("steps") or 0
                epochs = self.params.get("epochs", epoch + 1) - epoch
                self.bar = tqdm(total=steps * epochs or None, desc=f"phase {self.phase}", unit="batch",
                                file=sys.stderr, leave=False, dynamic_ncols=True)
        self.epoch_started = time.time()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.update(1)
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{float(logs['loss']):.4f}", refresh=False)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        try:
            rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        except Exception:  # no optimizer or an exotic schedule
            rate = None
        line = summary_line(self.phase, epoch + 1, int(self.params.get("epochs", epoch + 1)), logs or {},
                            time.time() - self.epoch_started, rate)
        if self.bar is not None:
            self.bar.clear()
        self.echo(line)
        if self.bar is not None:
            self.bar.refresh()

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
