"""What a batch command writes into its output folder, named by one rule and recorded with it.

An :class:`OutputLayout` says which table a command writes (``predictions.csv``,
``segmentation.csv``), its columns, and which of them name files in the folder (a mask, an
overlay, an explanation map); the same for its per-volume table. ``predict`` and ``segment``
store it in their summary JSON (``"layout"``), so resuming, merging shards and the report read
which columns are files from the folder itself, never by matching column-name endings.

Every output file of an image is named by :func:`output_stem`: a readable part of the input's
file name, the first 8 hex digits of the input file's SHA-256 (content, not path: a renamed or
moved file keeps its outputs) and, for a frame of a multi-frame file or a volume's slice,
``-fNNNN``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["OutputLayout", "output_stem", "volume_stem", "content_digest", "read_layout"]

_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_VOLUME_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".dicom")


def content_digest(path: str | Path, pixels: np.ndarray | None = None) -> str:
    """SHA-256 hex digest of a file's bytes; of ``pixels`` when the file cannot be read (an upload)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        if pixels is None:
            raise
    return hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()


def output_stem(path: str | Path, digest: str, frame: int | None = None) -> str:
    """The stem every output file of one image (or one frame) shares.

    Example:
        >>> output_stem("/data/Case 7.png", "0123456789abcdef")
        'Case_7-01234567'
        >>> output_stem("scan.nii.gz", "fedcba9876543210", frame=12)
        'scan.nii-fedcba98-f0012'
    """
    name = _NAME.sub("_", Path(path).stem)[:60] or "image"
    return f"{name}-{digest[:8]}" + ("" if frame is None else f"-f{int(frame):04d}")


def volume_stem(path: str, digest: str, *, series: bool = False) -> str:
    """The stem of a volume case's files: the file (or, for a series, its folder) name and content digest.

    Example:
        >>> volume_stem("/scans/brain.nii.gz", "abcdef0123456789")
        'brain-abcdef01'
    """
    base = Path(path.split("#", 1)[0] if series else path).name
    if not series:
        for suffix in _VOLUME_SUFFIXES:
            if base.lower().endswith(suffix):
                base = base[: -len(suffix)]
                break
    return f"{_NAME.sub('_', base)[:60] or 'volume'}-{digest[:8]}"


@dataclass
class OutputLayout:
    """The tables one batch command writes, and which of their columns name files in the folder.

    Attributes:
        command: ``predict`` or ``segment``.
        table: the per-image table (``predictions.csv``, ``segmentation.csv``).
        summary: the JSON written beside it, which also records this layout.
        columns: the per-image table's columns, in order.
        file_columns: those whose values are paths relative to the output folder.
        volume_table: the per-volume table (``volumes.csv``).
        volume_columns: its columns.
        volume_file_columns: those naming files.
    """

    command: str
    table: str
    summary: str
    columns: list[str]
    file_columns: list[str]
    volume_table: str = "volumes.csv"
    volume_columns: list[str] = field(default_factory=list)
    volume_file_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, names, within in (("file_columns", self.file_columns, self.columns),
                                    ("volume_file_columns", self.volume_file_columns, self.volume_columns)):
            stray = [c for c in names if c not in within]
            if stray:
                raise ValueError(f"{name} {stray} are not columns of the table")

    def to_json(self) -> dict[str, Any]:
        """The layout as stored in the summary JSON."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputLayout:
        """The layout a summary JSON recorded."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: (list(v) if isinstance(v, list) else v) for k, v in data.items() if k in names})

    def files_of(self, row: Mapping[str, Any], *, volume: bool = False) -> list[str]:
        """The output files a row names (relative to the folder), blanks left out."""
        return [str(row[c]) for c in (self.volume_file_columns if volume else self.file_columns) if row.get(c)]

    def outputs_present(self, row: Mapping[str, Any], folder: Path, *, volume: bool = False) -> bool:
        """Whether every file a row names is still in ``folder``."""
        return all((folder / name).is_file() for name in self.files_of(row, volume=volume))

    def prefixed(self, row: Mapping[str, Any], prefix: str, *, volume: bool = False) -> dict[str, Any]:
        """The row with its file columns made relative to ``prefix``'s parent (merging shards)."""
        files = set(self.volume_file_columns if volume else self.file_columns)
        return {k: (f"{prefix}/{v}" if k in files and v and isinstance(v, str) else v) for k, v in row.items()}


def read_layout(folder: Path, names: Sequence[str] = ("predictions.json", "segmentation.json")) -> OutputLayout | None:
    """The layout recorded in ``folder``'s summary JSON, or ``None`` (no summary, or one written before layouts)."""
    for name in names:
        path = folder / name
        if path.is_file():
            try:
                recorded = json.loads(path.read_text()).get("layout")
            except (OSError, ValueError):
                return None
            return OutputLayout.from_json(recorded) if isinstance(recorded, dict) else None
    return None
