"""Classification: one label per image (binary or K classes), a backbone and a dense head."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medlens.pipelines.tasks.base import Task


class ClassificationTask(Task):
    name = "classification"
    batch_command = "predict"
    config_class = "RunConfig"
    endpoint = "/predict"
    output_kind = "classes"
    evaluation = ("medlens.pipelines.evaluation.classification_run", "evaluate_run", "write_model_card")
    applier = "medlens.pipelines.predictors:Predictor"

    def describe_model(self, cfg: Any) -> str:
        return f"{cfg.model.backbone} ({cfg.model.weights})"

    # the report ----------------------------------------------------------------------------
    def report_targets(self, summary: dict[str, Any]) -> list[str] | None:
        """The explanation targets a report case shows maps for (``None``: the one explained class)."""
        return None

    def report_case(self, row: dict[str, Any], summary: dict[str, Any], margin: float) -> dict[str, Any]:
        """One ``predictions.json`` row as the report shows it: label, probabilities, uncertain.

        A binary case is uncertain within ``margin`` of the run's threshold; a K-class case when
        no class reaches 0.6.
        """
        class_names = list(summary.get("class_names") or [])
        probabilities = {name: float(row.get(f"p_{name}", 0.0)) for name in class_names}
        case: dict[str, Any] = {"label": row["label"], "probability": probabilities[row["label"]],
                                "probabilities": probabilities}
        if len(class_names) == 2:
            threshold = summary.get("threshold")
            cut = 0.5 if threshold in (None, "") else float(threshold)
            case["positive"] = probabilities[class_names[1]]
            case["uncertain"] = abs(case["positive"] - cut) < margin
        else:
            case["uncertain"] = max(probabilities.values()) < 0.6
        return case

    def describe_target(self, cfg: Any) -> str:
        return f"{len(cfg.data.class_names)} classes"

    def train(self, cfg: Any, run: Any, resume_state: dict[str, Any] | None, **options: Any) -> Any:
        from medlens.pipelines.train import train_classifier

        return train_classifier(cfg, run, resume_state, **options)

    # the pieces train_classifier asks for ---------------------------------------------------
    def load_data(self, data_cfg: Any, seed: int) -> Any:
        """The run's :class:`~medlens.pipelines.data.Dataset` (class names, splits, report)."""
        from medlens.pipelines.data import load_dataset

        return load_dataset(data_cfg, seed=seed)

    def build_model(self, cfg: Any, num_outputs: int, *, multilabel: bool = False) -> Any:
        """The uncompiled classifier: backbone plus the head of ``cfg.model``."""
        from medlens.models.classifier import build_classifier

        return build_classifier(backbone=cfg.model.backbone, num_classes=num_outputs,
                                input_shape=(*cfg.data.image_size, 3), weights=cfg.model.weights,
                                pooling=cfg.model.pooling, dropout=cfg.model.dropout,
                                dense_units=cfg.model.dense_units, head_norm=cfg.model.head_norm,
                                multilabel=multilabel)

    def objectives(self, cfg: Any, dataset: Any) -> Callable[[], tuple[Any, list]]:
        """A factory of ``(loss, metrics)`` for each compile (metric objects are fresh each time)."""
        import keras

        binary = dataset.num_classes == 2

        def make() -> tuple[Any, list]:
            accuracy = (keras.metrics.BinaryAccuracy(name="accuracy") if binary
                        else keras.metrics.CategoricalAccuracy(name="accuracy"))
            return ("binary_crossentropy" if binary else "categorical_crossentropy",
                    [accuracy, keras.metrics.AUC(name="auc")])

        return make

    def class_weight(self, cfg: Any, dataset: Any) -> dict[int, float] | None:
        """``fit(class_weight=...)`` when ``data.class_weights`` asks for balanced classes."""
        from medlens.pipelines.data import class_weights

        return class_weights(dataset.splits["train"].labels, dataset.num_classes) if cfg.data.class_weights else None

    def run_facts(self, cfg: Any, dataset: Any) -> dict[str, Any]:
        """Task-specific ``run.json`` fields (besides ``class_names``)."""
        return {}
