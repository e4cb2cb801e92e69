"""What every task's run evaluation and model card start with."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.pipelines.config import load_config
from medlens.pipelines.rundir import RunDir

__all__ = ["card_opening", "fmt", "run_parts"]


def run_parts(run_dir: str | Path, model: Any, cfg: Any, dataset: Any,
              load_data: Callable[[Any, int], Any]) -> tuple[RunDir, Any, Any, Any]:
    """The run, its model, config and dataset: the ones given, else loaded from the run directory."""
    from medlens.pipelines.run_eval import load_run_model

    run = RunDir(run_dir)
    if model is None:
        run.require()
        model = load_run_model(run.root)
    cfg = cfg or load_config(run.read_config())
    dataset = dataset or load_data(cfg.data, cfg.seed)
    return run, model, cfg, dataset


def fmt(value: Any) -> str:
    """A metric for a model card: 3 decimals, ``n/a`` when undefined."""
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def card_opening(cfg: dict[str, Any], run: RunDir) -> list[str]:
    """The title and the decision-support notice every model card opens with."""
    return [f"# Model card: {cfg.get('name', run.root.name)}", "",
            "**Decision support only.** This model has not been cleared for clinical use; every output must be",
            "reviewed by a qualified clinician.", ""]
