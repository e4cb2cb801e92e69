"""Ordinal grades: ordered classes (diabetic retinopathy 0-4, tumour grade), a cumulative head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medlens.pipelines.tasks.classification import ClassificationTask


class OrdinalTask(ClassificationTask):
    """The classifier's data, backbone and phases; a rank-consistent head, QWK and a referable call."""

    name = "ordinal"
    config_class = "OrdinalRunConfig"
    evaluation = ("medlens.pipelines.evaluation.ordinal_run", "evaluate_ordinal_run", "write_ordinal_card")
    applier = "medlens.pipelines.predictors:OrdinalPredictor"
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

    def report_case(self, row: dict[str, Any], summary: dict[str, Any], margin: float) -> dict[str, Any]:
        """The grade's case, with the referable call beside it: ``P(grade ≥ k)``, its decision and threshold."""
        case = super().report_case(row, summary, margin)
        referable = str(summary.get("referable") or "")
        p_referable = row.get(f"p_ge_{referable.replace('grade ≥ ', '')}")
        if p_referable not in (None, ""):
            decision = "referable" if str(row.get("referable")) == "1" else "not referable"
            case["note"] = (f"P({referable}) = {float(p_referable):.3f}: {decision} at threshold "
                            f"{float(row.get('threshold') or 0.5):.3f}")
        return case

    def headline(self, split: str, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        ref = metrics["referable"]
        return [(split, {k: metrics[k] for k in ("n", "qwk", "mae", "accuracy", "auc")}),
                (f"{split} referable (grade {ref['grade']})",
                 {k: ref[k] for k in ("auc", "sensitivity", "specificity", "threshold")})]
