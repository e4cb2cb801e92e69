"""The one batch loop: cases in order, hashed, kept from an earlier run or processed, the tables flushed.

``predict`` (images batched through a classifier) and ``segment`` (one case at a time through a
U-Net) differ only in what they do with a case; :func:`run_batch` is the loop around it, and a
:class:`BatchWork` is what a command plugs in:

- :func:`run_batch`: the shard's cases in input order; each file hashed (SHA-256; a FIFO or an
  unreadable file is an error of its case, never a hang); a case whose earlier rows are
  :func:`reusable` is offered to :meth:`BatchWork.keep`, any other goes to
  :meth:`BatchWork.process`; progress per file, then :meth:`BatchWork.checkpoint` after every case
  (the command decides when to rewrite its tables); then the tables, ``errors.csv`` and the shard
  manifest (:func:`finish_batch`);
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
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.pipelines.errors import MedlensError
from medlens.pipelines.inference.layout import OutputLayout
from medlens.pipelines.rundir import atomic_write_csv, file_sha256

__all__ = ["BatchResult", "BatchWork", "run_batch", "case_files", "read_summary", "earlier_rows", "reusable", "finish_batch"]

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


class BatchWork:
    """What one batch command does with a case; :func:`run_batch` runs the loop around it.

    Attributes:
        command: The command's name (``predict``, ``segment``): the shard manifest and the
            failure line name it.
        out: The output folder.
        rows: The per-image rows, as the command's table holds them.
        volumes: One row per volume case.
    """

    command = ""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.rows: list[dict[str, Any]] = []
        self.volumes: list[dict[str, Any]] = []

    def cases(self, files: list[Path], errors: list[tuple[str, str]]) -> list[Any]:
        """The units of work among the expanded ``files`` (default: each file is one)."""
        return list(files)

    def earlier(self) -> dict[str, list[dict[str, Any]]]:
        """Rows of an earlier batch into :attr:`out` (for ``resume``), as :func:`earlier_rows` gives them."""
        return {}

    def keep(self, case: Any, rows: list[dict[str, Any]], digests: Mapping[str, str]) -> bool:
        """Take an unchanged case's earlier ``rows`` instead of processing it; False to process it again."""
        self.rows.extend(rows)
        return True

    def process(self, case: Any, digests: Mapping[str, str], errors: list[tuple[str, str]]) -> None:
        """Do the command's work on one case (its files' SHA-256 in ``digests``); failures go to ``errors``."""
        raise NotImplementedError

    def checkpoint(self) -> None:
        """Called after every case: rewrite the tables now and then, so an interrupted batch can resume."""

    def finish(self) -> Path:
        """Process what is still pending, write the tables as complete; returns the main table's path."""
        raise NotImplementedError


def case_files(case: Any) -> list[Path]:
    """The files of a case: a DICOM series' slices, or the one file."""
    files = getattr(case, "files", None)
    return list(files) if files is not None else [Path(case)]


def case_name(case: Any) -> str:
    """How rows and errors name a case (a series: its folder and UID)."""
    return str(getattr(case, "path", case))


def _hash(path: Path) -> str:
    """A file's SHA-256; a FIFO, a link loop or an unreadable file raises with the reader's reason."""
    from medlens.pipelines.imaging import read_image

    if not path.is_file():  # a FIFO would block the hash; the reader names the problem
        read_image(path)
    return file_sha256(path)


def run_batch(work: BatchWork, files: list[Path], errors: list[tuple[str, str]], *,
              shard: tuple[int, int] | None = None, resume: bool = False,
              progress: Callable[[int], None] | None = None) -> BatchResult:
    """Run ``work`` over the expanded ``files``: the one loop of every batch command.

    Args:
        work: The command's :class:`BatchWork`.
        files: ``expand_inputs(inputs)``'s files (sorted, de-duplicated).
        errors: Its errors; every failure of the batch is added to it.
        shard: ``(I, N)``: only shard I of N of the cases (:func:`~medlens.pipelines.shards.select_shard`).
        resume: Offer cases whose every file is unchanged since an earlier batch into the same
            folder to :meth:`BatchWork.keep`.
        progress: Called with the number of files of every case finished.
    """
    from medlens.pipelines.shards import select_shard

    cases = work.cases(files, errors)
    chosen, positions = select_shard(cases, shard)  # sorted: the same order sharded or not
    previous = work.earlier() if resume else {}
    kept = 0
    for case in chosen:
        paths = case_files(case)
        try:
            digests = {str(path): _hash(path) for path in paths}
        except (OSError, MedlensError) as exc:
            errors.append((case_name(case), getattr(exc, "reason", None) or f"cannot read: {exc.strerror or exc}"))
        else:
            earlier = reusable(previous, digests) if previous else None
            if earlier is not None and work.keep(case, earlier, digests):
                kept += 1
            else:
                work.process(case, digests, errors)
        if progress:
            progress(len(paths))
        work.checkpoint()
    table = work.finish()
    errors_csv = finish_batch(work.out, work.command, errors, shard=shard, cases=chosen, positions=positions,
                              total=len(cases), kept=kept)
    return BatchResult(work.out, table, errors_csv, work.rows, errors, kept, work.volumes)


def read_summary(out: Path, current: OutputLayout) -> dict[str, Any]:
    """An earlier batch's summary JSON in ``out`` (``current.summary``), or ``{}`` when there is none to read."""
    try:
        summary = json.loads((out / current.summary).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


def earlier_rows(out: Path, current: OutputLayout, rows: Iterable[Mapping[str, Any]] | None = None,
                 summary: Mapping[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Rows of an earlier batch into ``out`` whose output files all still exist, by their input's real path.

    Args:
        out: The output folder.
        current: This batch's layout; the earlier folder's recorded layout (if any) says which
            columns name files, so a change of columns does not misread old rows.
        rows: The earlier rows when the caller has them typed (``predictions.json``); by
            default they are read from the layout's table.
        summary: The earlier summary when the caller has read it already (by default read from
            the layout's summary file).
    """
    summary = read_summary(out, current) if summary is None else summary
    recorded = OutputLayout.from_json(summary["layout"]) if isinstance(summary.get("layout"), dict) else current
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
        digests: The case's files as this batch names them, each with its SHA-256 now (``""``, never
            trusted, for a file that could not be hashed; :func:`run_batch` makes that an error first).

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
