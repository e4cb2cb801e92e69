"""Batch inference's shared parts: the output layout every batch command writes and records."""

from __future__ import annotations

from medlens.pipelines.inference.layout import (
    OutputLayout,
    content_digest,
    output_stem,
    read_layout,
    volume_stem,
)

__all__ = ["OutputLayout", "content_digest", "output_stem", "read_layout", "volume_stem"]
