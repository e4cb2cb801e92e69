"""CSV manifests, read one way for every task: one row per sample, files relative to the manifest.

One rule for every task (as MONAI's datalists): a relative file cell is resolved against the
folder that holds the manifest, so a manifest travels with its images. Classification manifests
used to be resolved against ``data.root`` instead; where a cell is not found beside the manifest
but is found under the root, :class:`ManifestFiles` still takes it, with one notice per manifest.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from medlens.pipelines.errors import DatasetError

__all__ = ["manifest_path", "read_rows", "read_each_row", "file_path", "ManifestFiles"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_SHOWN = 5  # bad rows named one by one in the log before the rest are counted
_KEPT = 20  # bad rows named in the dataset report (the count covers them all)


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


def read_each_row(manifest: Path, rows: Sequence[dict[str, str]], read: Callable[[int, dict[str, str]], _T]
                  ) -> tuple[list[_T], dict[str, Any]]:
    """``read(line, row)`` for each row; a row it rejects is skipped, and the good rows are kept.

    The one bad-row rule of every loader: ``read`` raises ``ValueError`` or ``DatasetError``
    saying what is wrong with a row; that row is left out with a one-line warning naming the
    manifest and line (the first few one by one, then a count). Line numbers count the header
    as line 1.

    Returns:
        The values ``read`` returned for the good rows, and the report entries
        ``{"rows_skipped": n, "skipped": ["<manifest> line N: why", ...]}``.

    Raises:
        DatasetError: no row is usable (naming the first bad row's problem).
    """
    kept: list[_T] = []
    bad: list[str] = []
    prefix = f"{manifest} line "
    for line, row in enumerate(rows, start=2):
        try:
            kept.append(read(line, row))
        except (ValueError, DatasetError) as exc:
            text = str(exc)
            bad.append(text if text.startswith(prefix) else f"{prefix}{line}: {text}")
    for reason in bad[:_SHOWN]:
        log.warning("skipped %s", reason)
    if len(bad) > _SHOWN:
        log.warning("skipped %d more bad row(s) of %s", len(bad) - _SHOWN, manifest)
    if not kept:
        raise DatasetError(f"{manifest}: no usable rows ({bad[0] if bad else 'none'})")
    return kept, {"rows_skipped": len(bad), "skipped": bad[:_KEPT]}


def file_path(text: str | None, base: Path) -> Path | None:
    """A manifest cell as a path (relative to ``base`` unless absolute), ``None`` when blank."""
    if not text or not text.strip():
        return None
    path = Path(text.strip()).expanduser()
    return path if path.is_absolute() else base / path


class ManifestFiles:
    """Resolves a manifest's file cells: relative to the manifest's folder, the one rule.

    A cell that is missing beside the manifest but present under ``root`` (the rule classification
    manifests followed before) is resolved there; the first such cell logs a notice naming both
    folders. A cell found in neither place resolves beside the manifest, so the error that
    follows names where medlens looked.

    Example:
        >>> files = ManifestFiles(Path("data/lists/train.csv"), Path("data"))
        >>> files("/abs/a.png"), files("")
        (PosixPath('/abs/a.png'), None)
    """

    def __init__(self, manifest: Path, root: Path) -> None:
        self.manifest = manifest
        self.base = manifest.parent
        self.root = root
        self.from_root = 0
        self._found: set[Path] = set()

    def __call__(self, text: str | None) -> Path | None:
        path = file_path(text, self.base)
        if path is None or self.root == self.base:
            return path
        if path.is_file():
            self._found.add(path)
            return path
        legacy = file_path(text, self.root)
        if legacy is None or not legacy.is_file():
            return path
        self._found.add(legacy)
        if not self.from_root:
            log.warning("%s: file paths are relative to the manifest's folder (%s); found %r under data.root (%s) "
                        "instead, the old rule for classification manifests (deprecated: write paths relative "
                        "to the manifest)", self.manifest, self.base, str(text).strip(), self.root)
        self.from_root += 1
        return legacy

    def exists(self, path: Path | None) -> bool:
        """Whether a resolved cell names a file (each file is looked up once: resolving may have found it)."""
        return path is not None and (path in self._found or path.is_file())
