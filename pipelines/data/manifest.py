"""CSV manifests, read one way for every task: one row per sample, files relative to a base folder."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medlens.pipelines.errors import DatasetError

__all__ = ["manifest_path", "read_rows", "file_path"]


def manifest_path(root: Path, name: str, default: str = "manifest.csv") -> Path:
    """The manifest ``name`` (``default`` when empty), relative to ``root`` unless absolute."""
    manifest = Path(name or default).expanduser()
    return manifest if manifest.is_absolute() else root / manifest


def read_rows(manifest: Path, required: Sequence[str] = ()) -> tuple[list[str], list[dict[str, str]]]:
    """A manifest's header and rows (a UTF-8 BOM is allowed).

    Raises:
        DatasetError: the file is missing or unreadable, not CSV, lacks a ``required`` column
            (the message lists the columns it has), or has no rows.
    """
    if not manifest.is_file():
        raise DatasetError(f"{manifest}: manifest not found")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise DatasetError(f"{manifest}: cannot read manifest ({exc.strerror})") from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{manifest}: not a readable CSV file ({exc})".replace("\n", " ")) from None
    for column in required:
        if column not in header:
            raise DatasetError(f"{manifest}: no column {column!r}; columns are: {', '.join(header) or '(none)'}")
    if not rows:
        raise DatasetError(f"{manifest}: manifest has no rows")
    return header, rows


def file_path(text: str | None, base: Path) -> Path | None:
    """A manifest cell as a path (relative to ``base`` unless absolute), ``None`` when blank."""
    if not text or not text.strip():
        return None
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path
