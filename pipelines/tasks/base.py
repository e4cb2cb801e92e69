"""The interface every task implements (see :mod:`medlens.pipelines.tasks`).

Methods import their heavy modules (Keras, training, inference) when called, so that
reading a config or listing presets never starts a deep-learning backend.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Task:
    """One kind of prediction: what it trains, how it is evaluated, what applies it.

    Attributes:
        name: the value of ``task:`` in a config and in ``run.json``.
        batch_command: the CLI command that applies a run of this task to files.
        endpoint: the service route that applies it to one upload.
        config_class: the name of its config dataclass in :mod:`medlens.pipelines.config`.
    """

    name: str = ""
    batch_command: str = ""
    endpoint: str = ""
    config_class: str = ""  # the config dataclass in medlens.pipelines.config

    # configuration ------------------------------------------------------------------------
    def build_config(self, tree: dict[str, Any]) -> Any:
        """The task's validated config dataclass from a config tree."""
        from medlens.pipelines import config

        return config.build_and_validate(getattr(config, self.config_class), tree)

    def describe_model(self, cfg: Any) -> str:
        """A short description of the model a config trains (CLI ``train`` and ``presets``)."""
        raise NotImplementedError

    def describe_target(self, cfg: Any) -> str:
        """What the config predicts, for ``medlens presets`` (e.g. ``2 classes``)."""
        raise NotImplementedError

    # training and evaluation ------------------------------------------------------------
    def train(self, cfg: Any, run: Any, resume_state: dict[str, Any] | None, **options: Any) -> Any:
        """Train ``cfg`` into the run directory ``run``; returns a ``TrainResult``."""
        raise NotImplementedError

    def evaluate(self, run_dir: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
        """Evaluate a finished run on ``split``, rewrite its model card; ``(heading, metrics)`` to print."""
        raise NotImplementedError

    # inference ----------------------------------------------------------------------------
    def load(self, run_dir: str | Path, model: Any = None) -> Any:
        """The object that applies a finished run (a ``Predictor`` or a ``SegModel``)."""
        raise NotImplementedError

    def wrong_command(self, run_dir: Any, command: str) -> str:
        """The one-line message for applying a run of this task with another task's command."""
        return f"{run_dir}: a {self.name} run; use `medlens {self.batch_command}` to apply it, not `{command}`"
