"""Batch inference's shared parts: the output layout every batch command records, tiling, mask clean-up.

:mod:`~medlens.pipelines.inference.layout` (imported here), :mod:`~medlens.pipelines.inference.tiling`
and :mod:`~medlens.pipelines.inference.masks` (NumPy and OpenCV only).
"""

from __future__ import annotations

from medlens.pipelines.inference.layout import (
    OutputLayout,
    content_digest,
    output_stem,
    read_layout,
    volume_stem,
)

__all__ = ["OutputLayout", "content_digest", "output_stem", "read_layout", "volume_stem"]
