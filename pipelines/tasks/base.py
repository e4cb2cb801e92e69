"""The interface every task implements (see :mod:`medlens.pipelines.tasks`).

Methods import their heavy modules (Keras, training, inference) when called, so that
reading a config or listing presets never starts a deep-learning backend.
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from typing import Any


def _named(module: str, name: str) -> Any:
    """``module.name``, the module imported when first needed."""
    return getattr(import_module(module), name)


class Task:
    """One kind of prediction: what it trains, how it is evaluated, what applies it.

    Attributes:
        name: the value of ``task:`` in a config and in ``run.json``.
        batch_command: the CLI command that applies a run of this task to files.
        endpoint: the service route that applies it to one upload.
        config_class: the name of its config dataclass in :mod:`medlens.pipelines.config`.
        evaluation: ``(module, evaluate, write_card)``: the module and names of its functions that
            score a run on a split (writing ``metrics.json``) and (re)write the run's model card.
        applier: ``"module:Class"`` applying a finished run (a ``Predictor`` or a ``SegModel``).
        output_kind: what its outputs are called (``classes``, ``findings``, ``grades``; the key
            ``predictions.json`` lists them under beside ``class_names``).
    """

    name: str = ""
    batch_command: str = ""
    endpoint: str = ""
    config_class: str = ""  # the config dataclass in medlens.pipelines.config
    evaluation: tuple[str, str, str] = ("", "", "")
    applier: str = ""
    output_kind: str = ""
    #: Why ``medlens evaluate RUN evaluate.KEY=VALUE`` cannot change how this task's runs are evaluated
    #: (empty: it can; the evaluation re-reads ``evaluate.*`` from the run's config).
    evaluate_settings_fixed: str = ""

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

    def evaluate_model(self, run_dir: str | Path, *, split: str, model: Any = None, dataset: Any = None,
                       cfg: Any = None) -> dict[str, Any]:
        """Score ``split`` (``metrics.json``) and rewrite the model card; the metrics.

        A just-trained run passes its ``model``, ``dataset`` and ``cfg``; a finished one is read
        from the run directory.
        """
        given = {k: v for k, v in {"model": model, "dataset": dataset, "cfg": cfg}.items() if v is not None}
        module, evaluate, write_card = self.evaluation
        metrics = _named(module, evaluate)(run_dir, split=split, **given)
        _named(module, write_card)(run_dir)
        return metrics

    def evaluate(self, run_dir: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
        """Evaluate a finished run on ``split``, rewrite its model card; ``(heading, metrics)`` to print."""
        return self.headline(split, self.evaluate_model(run_dir, split=split))

    def headline(self, split: str, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """What ``medlens evaluate`` prints of a split's metrics: ``(heading, metrics)`` pairs."""
        return [(split, metrics)]

    # inference ----------------------------------------------------------------------------
    def load(self, run_dir: str | Path, model: Any = None) -> Any:
        """The object that applies a finished run (a ``Predictor`` or a ``SegModel``)."""
        return _named(*self.applier.split(":"))(run_dir, model=model)

    def wrong_command(self, run_dir: Any, command: str) -> str:
        """The one-line message for applying a run of this task with another task's command."""
        return f"{run_dir}: a {self.name} run; use `medlens {self.batch_command}` to apply it, not `{command}`"
