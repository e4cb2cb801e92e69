"""What every batch command shares around its per-image work: the result, resume, the ending.

``predict`` (images batched through a classifier) and ``segment`` (one case at a time through a
U-Net) differ in what they do per image; around it they are one loop:

- :class:`BatchResult`: the table written, ``errors.csv``, the rows, how many inputs were kept
  from an earlier run into the same folder, one row per volume;
- :func:`earlier_rows` and :func:`reusable`: resume. Rows of an earlier batch stand in for an
  input when its content (SHA-256) is unchanged and every file the layout names is still there.
  Their paths are resolved against the folder the earlier batch ran from
  (``inputs_relative_to`` in its summary), so a batch resumed from another folder still finds them;
- :func:`finish_batch`: ``errors.csv``, the shard manifest, one warning for the failures.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.pipelines.inference.layout import OutputLayout, read_layout
from medlens.pipelines.rundir import atomic_write_csv

__all__ = ["BatchResult", "earlier_rows", "reusable", "finish_batch"]

log = logging.getLogger(__name__)


@dataclass
class BatchResult:
    """What a batch command produced.

    Attributes:
        out_dir: The output folder (the shard's folder for a shard).
        table: The table of per-image rows (``predictions.csv``, ``segmentation.csv``).
        errors_csv: ``errors.csv``: every input that could not be read or processed, and why.
        rows: The rows of ``table``, in input order.
        errors: ``(path, reason)`` pairs, as in ``errors_csv``.
        kept: Inputs whose rows were kept from an earlier run into the same folder (``resume``).
        volumes: One row per volume case (``volumes.csv``).
    """

    out_dir: Path
    table: Path
    errors_csv: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)
    kept: int = 0
    volumes: list[dict[str, Any]] = field(default_factory=list)


def _summary(out: Path, current: OutputLayout) -> dict[str, Any]:
    try:
        summary = json.loads((out / current.summary).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def earlier_rows(out: Path, current: OutputLayout,
                 rows: Iterable[Mapping[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows of an earlier batch into ``out`` whose output files all still exist, by their input's real path.

    Args:
        out: The output folder.
        current: This batch's layout; the earlier folder's recorded layout (if any) says which
            columns name files, so a change of columns does not misread old rows.
        rows: The earlier rows when the caller has them typed (``predictions.json``); by
            default they are read from the layout's table.
    """
    summary = _summary(out, current)
    recorded = read_layout(out, [current.summary]) or current
    if rows is None:
        table = out / current.table
        if not table.is_file():
            return {}
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    base = summary.get("inputs_relative_to") or "."
    found: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if recorded.outputs_present(row, out):
            path = str(row["path"])
            found.setdefault(os.path.realpath(path if os.path.isabs(path) else os.path.join(base, path)),
                             []).append(dict(row))
    return found


def reusable(earlier: Mapping[str, list[dict[str, Any]]], digests: Mapping[str, str]) -> list[dict[str, Any]] | None:
    """The earlier rows of a case's files, when every file has some and each was made from its content now.

    Args:
        earlier: :func:`earlier_rows`.
        digests: The case's files as this batch names them, each with its SHA-256 now (``""`` for
            a file that could not be hashed).

    Returns:
        The rows, file by file, their ``path`` as this batch names the file; or None: the case
        must be processed again.
    """
    rows: list[dict[str, Any]] = []
    for name, digest in digests.items():
        found = earlier.get(os.path.realpath(name))
        if not found or not digest or any(row.get("sha256") != digest for row in found):
            return None
        rows.extend({**row, "path": str(name)} for row in found)
    return rows


def finish_batch(out: Path, command: str, errors: list[tuple[str, str]], *, shard: tuple[int, int] | None,
                 cases: Sequence[Any], positions: Sequence[int], total: int, kept: int) -> Path:
    """End a batch: ``errors.csv`` written, the shard manifest for a shard, one line for failures and kept inputs.

    Returns:
        The path of ``errors.csv`` (written even when empty, so a reader never guesses).
    """
    from medlens.pipelines.shards import write_shard_manifest

    errors_csv = atomic_write_csv(out / "errors.csv", ["path", "error"], errors)
    if shard is not None:
        write_shard_manifest(out, shard, cases, positions, total, command)
    if errors:
        log.warning("%d input(s) could not be processed (%s); see %s", len(errors), command, errors_csv)
    if kept:
        log.info("%d input(s) unchanged since the last run into %s: kept", kept, out)
    return errors_csv
