"""Segmentation: a mask per image (binary or K classes), a U-Net or a segmentation GAN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medlens.pipelines.tasks.base import Task


class SegmentationTask(Task):
    name = "segmentation"
    batch_command = "segment"
    config_class = "SegRunConfig"
    endpoint = "/segment"

    def describe_model(self, cfg: Any) -> str:
        encoder = "" if cfg.model.backbone == "none" else f", {cfg.model.backbone} encoder ({cfg.model.weights})"
        return f"{cfg.model.architecture}{encoder}"

    def describe_target(self, cfg: Any) -> str:
        return "segmentation"

    def train(self, cfg: Any, run: Any, resume_state: dict[str, Any] | None, **options: Any) -> Any:
        from medlens.pipelines.segtrain import train_segmentation

        return train_segmentation(cfg, run, resume_state=resume_state, **options)

    def evaluate(self, run_dir: str | Path, split: str) -> list[tuple[str, dict[str, Any]]]:
        from medlens.pipelines.evaluation.segmentation_run import evaluate_segmentation, write_seg_model_card

        result = evaluate_segmentation(run_dir, split=split)
        write_seg_model_card(run_dir)
        return [(f"{split} (pooled over pixels)", {"n": result["n"], **result["pooled"]}),
                (f"{split} (mean per image)", result["mean"])]

    def load(self, run_dir: str | Path, model: Any = None) -> Any:
        from medlens.pipelines.seg_model import SegModel

        return SegModel(run_dir, model=model)
