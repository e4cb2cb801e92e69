"""Ordinal grades: ordered classes (diabetic retinopathy 0-4, tumour grade), a cumulative head."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.pipelines.tasks.classification import ClassificationTask


class OrdinalTask(ClassificationTask):
    """The classifier's data, backbone and phases; a rank-consistent head, QWK and a referable call."""

    name = "ordinal"
    config_class = "OrdinalRunConfig"
    output_kind = "grades"

    def describe_target(self, cfg: Any) -> str:
        return f"{len(cfg.data.class_names) or 'K'} ordered grades, referable ≥ {cfg.evaluate.referable}"

    def load_data(self, data_cfg: Any, seed: int) -> Any:
        from medlens.pipelines.errors import ConfigError

        dataset = super().load_data(data_cfg, seed)
        if dataset.num_classes < 3:
            raise ConfigError(f"{dataset.report.get('source')}: {dataset.num_classes} grades; an ordinal run needs "
                              "at least 3 (use task: classification for two)")
        return dataset

    def build_model(self, cfg: Any, num_outputs: int, *, multilabel: bool = False) -> Any:
        from medlens.models.classifier import build_classifier

        if cfg.evaluate.referable >= num_outputs:
            from medlens.pipelines.errors import ConfigError

            raise ConfigError(f"config key 'evaluate.referable' is {cfg.evaluate.referable}; the data has "
                              f"{num_outputs} grades (0..{num_outputs - 1})")
        return build_classifier(backbone=cfg.model.backbone, num_classes=num_outputs,
                                input_shape=(*cfg.data.image_size, 3), weights=cfg.model.weights,
                                pooling=cfg.model.pooling, dropout=cfg.model.dropout,
                                dense_units=cfg.model.dense_units, head_norm=cfg.model.head_norm, ordinal=True)

    def objectives(self, cfg: Any, dataset: Any) -> Callable[[], tuple[Any, list]]:
        from medlens.models.ordinal import OrdinalAUC, OrdinalCrossentropy

        return lambda: (OrdinalCrossentropy(), [OrdinalAUC(name="auc")])

    def run_facts(self, cfg: Any, dataset: Any) -> dict[str, Any]:
        return {"grades": list(dataset.class_names), "referable_grade": int(cfg.evaluate.referable)}

    def evaluate_model(self, run_dir: str | Path, *, split: str, model: Any, dataset: Any, cfg: Any) -> dict[str, Any]:
        from medlens.pipelines.evaluation.ordinal_run import evaluate_ordinal_run, write_ordinal_card

        metrics = evaluate_ordinal_run(run_dir, split=split, model=model, dataset=dataset, cfg=cfg)
        write_ordinal_card(run_dir)
        return metrics

    def evaluate(self, run_dir: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
        from medlens.pipelines.evaluation.ordinal_run import evaluate_ordinal_run, write_ordinal_card

        metrics = evaluate_ordinal_run(run_dir, split=split)
        write_ordinal_card(run_dir)
        ref = metrics["referable"]
        return [(split, {k: metrics[k] for k in ("n", "qwk", "mae", "accuracy", "auc")}),
                (f"{split} referable (grade {ref['grade']})",
                 {k: ref[k] for k in ("auc", "sensitivity", "specificity", "threshold")})]

    def load(self, run_dir: str | Path, model: Any = None) -> Any:
        from medlens.pipelines.predictors import OrdinalPredictor

        return OrdinalPredictor(run_dir, model=model)
