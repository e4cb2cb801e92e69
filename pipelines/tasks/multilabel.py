"""Multi-label findings: any number of findings per image, one sigmoid each (NIH ChestX-ray14 style)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from medlens.pipelines.tasks.classification import ClassificationTask


class MultiLabelTask(ClassificationTask):
    """The classifier's backbone and two phases; targets, head, loss, metrics and outputs per finding."""

    name = "multilabel"
    config_class = "MultiLabelRunConfig"
    evaluation = ("medlens.pipelines.evaluation.multilabel_run",
                  "evaluate_multilabel_run", "write_multilabel_card")
    applier = "medlens.pipelines.predictors:MultiLabelPredictor"
    output_kind = "findings"

    def describe_target(self, cfg: Any) -> str:
        return f"{len(cfg.data.findings)} findings" if cfg.data.findings else "findings from the manifest"

    def load_data(self, data_cfg: Any, seed: int) -> Any:
        from medlens.pipelines.data import load_findings

        return load_findings(data_cfg, seed=seed)

    def build_model(self, cfg: Any, num_outputs: int, *, multilabel: bool = True) -> Any:
        return super().build_model(cfg, num_outputs, multilabel=True)

    def _positive_weights(self, cfg: Any, dataset: Any) -> list[float] | None:
        from medlens.models.multilabel import positive_weights

        return positive_weights(dataset.splits["train"].labels) if cfg.data.positive_weights else None

    def objectives(self, cfg: Any, dataset: Any) -> Callable[[], tuple[Any, list]]:
        from medlens.models.multilabel import MaskedAUC, MaskedBinaryCrossentropy

        weights = self._positive_weights(cfg, dataset)
        return lambda: (MaskedBinaryCrossentropy(pos_weight=weights), [MaskedAUC(name="auc")])

    def class_weight(self, cfg: Any, dataset: Any) -> None:
        return None

    def run_facts(self, cfg: Any, dataset: Any) -> dict[str, Any]:
        weights = self._positive_weights(cfg, dataset)
        return {"findings": list(dataset.class_names),
                "positive_weights": None if weights is None else [round(w, 4) for w in weights]}

    def report_targets(self, summary: dict[str, Any]) -> list[str] | None:
        return list(summary.get("findings") or [])  # a map per finding

    def report_case(self, row: dict[str, Any], summary: dict[str, Any], margin: float) -> dict[str, Any]:
        """The present findings, every probability; uncertain when one is within ``margin`` of its threshold."""
        findings = list(summary.get("findings") or [])
        thresholds = summary.get("thresholds") or {}
        probabilities = {f: float(row.get(f"p_{f}", 0.0)) for f in findings}
        present = [f for f in findings if str(row.get(f"pos_{f}", "0")) in ("1", "1.0", "True")]
        return {
            "label": row["label"], "findings": present, "probabilities": probabilities,
            "probability": max((probabilities[f] for f in present), default=max(probabilities.values(), default=0.0)),
            "uncertain": any(abs(probabilities[f] - float(thresholds.get(f, 0.5))) < margin for f in findings),
        }

    def headline(self, split: str, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        summary = {k: metrics[k] for k in ("n", "macro_auc", "micro_auc", "mean_average_precision", "exact_match")}
        per = {f"auc {f}": m["auc"] for f, m in metrics["findings"].items()}
        return [(split, {**summary, **per})]
