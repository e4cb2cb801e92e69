"""Classification: one label per image (binary or K classes), a backbone and a dense head."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.pipelines.tasks.base import Task


class ClassificationTask(Task):
    name = "classification"
    batch_command = "predict"
    config_class = "RunConfig"
    endpoint = "/predict"

    def describe_model(self, cfg: Any) -> str:
        return f"{cfg.model.backbone} ({cfg.model.weights})"

    def describe_target(self, cfg: Any) -> str:
        return f"{len(cfg.data.class_names)} classes"

    def train(self, cfg: Any, run: Any, resume_state: dict[str, Any] | None, **options: Any) -> Any:
        from medlens.pipelines.train import train_classifier

        return train_classifier(cfg, run, resume_state, **options)

    def evaluate(self, run_dir: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
        from medlens.pipelines.run_eval import evaluate_run, write_model_card

        metrics = evaluate_run(run_dir, split=split)
        write_model_card(run_dir)
        return [(split, metrics)]

    def load(self, run_dir: str | Path, model: Any = None) -> Any:
        from medlens.pipelines.predict import Predictor

        return Predictor(run_dir, model=model)
