"""Segmentation: a mask per image (binary or K classes), a U-Net or a segmentation GAN."""

from __future__ import annotations

from typing import Any

from medlens.pipelines.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"
    batch_command = "segment"
    config_class = "SegRunConfig"
    endpoint = "/segment"
    evaluation = ("medlens.pipelines.evaluation.segmentation_run",
                  "evaluate_segmentation", "write_seg_model_card")
    applier = "medlens.pipelines.seg_model:SegModel"
    evaluate_settings_fixed = "a segmentation run's threshold and TTA are fixed when it is trained (run.json)"

    def describe_model(self, cfg: Any) -> str:
        encoder = "" if cfg.model.backbone == "none" else f", {cfg.model.backbone} encoder ({cfg.model.weights})"
        return f"{cfg.model.architecture}{encoder}"

    def describe_target(self, cfg: Any) -> str:
        return "segmentation"

    def train(self, cfg: Any, run: Any, resume_state: dict[str, Any] | None, **options: Any) -> Any:
        from medlens.pipelines.segtrain import train_segmentation

        return train_segmentation(cfg, run, resume_state=resume_state, **options)

    def headline(self, split: str, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        return [(f"{split} (pooled over pixels)", {"n": metrics["n"], **metrics["pooled"]}),
                (f"{split} (mean per image)", metrics["mean"])]
