"""Sharded batch inference: split an archive across N independent jobs, then merge their outputs.

``medlens predict|explain|segment … --out OUT --shard I/N`` processes only the input files of
shard ``I`` (1-based) and writes a complete, ordinary output folder ``OUT/shard-I-of-N/`` plus
``shard.json`` (the shard, the size of the whole input list and each of its files' position in
it). The partition is deterministic: the expanded input list is sorted and file ``k`` goes to
shard ``k mod N``, so every copy of the job, on any machine, agrees on who does what without
talking to the others; any scheduler can run the N copies (a Slurm array, Kubernetes indexed
Jobs, a Ray or Dask pool, or ``xargs -P``).

``medlens merge OUT`` joins the shard folders into ``OUT/predictions.csv`` (or
``segmentation.csv``), ``predictions.json`` and ``errors.csv`` in the order an unsharded run
would have written, with file paths rewritten to point into the shard folders, and says which
shards are missing.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.inference.layout import OutputLayout, read_layout
from medlens.pipelines.rundir import atomic_write_csv, atomic_write_json

__all__ = ["parse_shard", "select_shard", "shard_folder", "write_shard_manifest", "merge_shards", "MergeResult"]

_SHARD_DIR = re.compile(r"^shard-(\d+)-of-(\d+)$")


def _files(item: Any) -> list[Path]:
    """The input files of a case: a path, or every slice of a DICOM series (``.files``)."""
    return list(getattr(item, "files", None) or [item])


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/3"`` → ``(2, 3)``; None stays None.

    Raises:
        ConfigError: Not ``I/N`` with ``1 ≤ I ≤ N``.
    """
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ConfigError(f"--shard must be I/N with 1 <= I <= N (e.g. 2/3), got {text!r}")
    return int(match.group(1)), int(match.group(2))


def select_shard(files: Sequence[Any], shard: tuple[int, int] | None) -> tuple[list[Any], list[int]]:
    """The cases of ``shard`` and their positions in the sorted whole list (all cases when None).

    A case is a file, or a DICOM series (sorted by its first slice, never split across shards).
    """
    ordered = sorted(files, key=lambda p: os.path.realpath(_files(p)[0]))
    if shard is None:
        return list(ordered), list(range(len(ordered)))
    index, count = shard
    chosen = [(k, path) for k, path in enumerate(ordered) if k % count == index - 1]
    return [path for _, path in chosen], [k for k, _ in chosen]


def shard_folder(out: str | Path, shard: tuple[int, int] | None) -> Path:
    """Where a shard writes: ``OUT/shard-I-of-N`` (``OUT`` itself when not sharded)."""
    return Path(out) if shard is None else Path(out) / f"shard-{shard[0]}-of-{shard[1]}"


def write_shard_manifest(folder: Path, shard: tuple[int, int], files: Sequence[Any], positions: Sequence[int],
                         total: int, command: str) -> None:
    atomic_write_json(folder / "shard.json", {
        "shard": shard[0], "of": shard[1], "command": command, "total_files": total,
        "files": [{"path": os.path.realpath(p), "position": k}
                  for case, k in zip(files, positions, strict=True) for p in _files(case)],
    })


@dataclass
class MergeResult:
    """What ``merge_shards`` found and wrote."""

    out_dir: Path
    table: Path | None
    shards: int
    present: list[int]
    missing: list[int]
    rows: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


def _inputs_base(folder: Path) -> str:
    """The folder relative input paths of a shard were relative to (recorded by predict/segment)."""
    for name in ("predictions.json", "segmentation.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text()).get("inputs_relative_to") or "."
    return "."


def merge_shards(out: str | Path, *, allow_missing: bool = False) -> MergeResult:
    """Join ``OUT/shard-I-of-N`` folders into one table in ``OUT``.

    Raises:
        RunDirError: No shard folders, folders of different N or commands, or missing shards
            (unless ``allow_missing``: then what is there is merged and the gap reported).
    """
    root = Path(out)
    folders: dict[int, Path] = {}
    counts = set()
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        match = _SHARD_DIR.match(child.name)
        if match and (child / "shard.json").is_file():
            folders[int(match.group(1))] = child
            counts.add(int(match.group(2)))
    if not folders:
        raise RunDirError(f"{root}: no shard-I-of-N folders with a shard.json; run with --shard I/N --out {root}")
    if len(counts) != 1:
        raise RunDirError(f"{root}: shard folders of different N ({sorted(counts)}); keep one partition per folder")
    count = counts.pop()
    missing = [i for i in range(1, count + 1) if i not in folders]
    if missing and not allow_missing:
        raise RunDirError(f"{root}: shards missing: {', '.join(f'{i}/{count}' for i in missing)} "
                          "(run them, or merge what is there with --allow-missing)")
    manifests = {i: json.loads((f / "shard.json").read_text()) for i, f in folders.items()}
    commands = {m["command"] for m in manifests.values()}
    if len(commands) != 1:
        raise RunDirError(f"{root}: shards of different commands ({', '.join(sorted(commands))})")
    position = {entry["path"]: entry["position"] for m in manifests.values() for entry in m["files"]}
    layouts = {i: read_layout(f) for i, f in folders.items()}
    old = [f"{i}/{count}" for i, found in layouts.items() if found is None]
    if old:
        raise RunDirError(f"{root}: shard(s) {', '.join(old)} record no output layout (written by an older medlens or "
                          "not finished); run them again")
    layout = next(iter(layouts.values()))
    if any(found != layout for found in layouts.values()):
        raise RunDirError(f"{root}: the shards' tables differ (other options or versions); run them with the same options")

    rows: list[dict[str, Any]] = []
    json_rows: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    summary: dict[str, Any] = {}
    for folder in (folders[i] for i in sorted(folders)):
        columns, part = _read_csv(folder / layout.table)
        if columns != layout.columns:
            raise RunDirError(f"{folder / layout.table}: columns differ from its recorded layout")
        base = _inputs_base(folder)
        for r in part:
            absolute = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
            rows.append({**layout.prefixed(r, folder.name), "_abs": os.path.realpath(absolute)})
        data = json.loads((folder / layout.summary).read_text())
        for r in data.get("rows", []):  # predictions.json also holds the rows, with their details
            absolute = r["path"] if os.path.isabs(r["path"]) else os.path.join(base, r["path"])
            json_rows.append({**layout.prefixed(r, folder.name), "path": os.path.realpath(absolute),
                              "_abs": os.path.realpath(absolute)})
        summary = summary or {k: v for k, v in data.items() if k not in ("rows", "errors")}
        if (folder / "errors.csv").is_file():
            errors += [(e["path"], e["error"]) for e in _read_csv(folder / "errors.csv")[1]]

    def order(row: dict[str, Any]) -> tuple[int, int]:
        return position.get(row.pop("_abs"), len(position)), int(row.get("frame") or 0)

    rows.sort(key=order)
    json_rows.sort(key=order)
    unique_errors = list(dict.fromkeys(errors))  # inputs missing altogether are reported by every shard
    table = atomic_write_csv(root / layout.table, layout.columns, ([r.get(h, "") for h in layout.columns] for r in rows))
    merged = {**summary, "merged_shards": sorted(folders), "missing_shards": missing}
    if json_rows:
        merged.update(inputs_relative_to="/", rows=json_rows,
                      errors=[{"path": p, "error": e} for p, e in unique_errors])
    else:
        merged.update(images=len(rows), errors=len(unique_errors))
    atomic_write_json(root / layout.summary, merged)
    _merge_volumes(root, layout, [folders[i] for i in sorted(folders)], position)
    atomic_write_csv(root / "errors.csv", ["path", "error"], unique_errors)
    return MergeResult(root, table, count, sorted(folders), missing, len(rows), unique_errors)


def _merge_volumes(root: Path, layout: OutputLayout, folders: list[Path], position: dict[str, int]) -> None:
    """Join the shards' ``volumes.csv`` (one row per volume case) in input order."""
    header: list[str] = []
    rows: list[dict[str, Any]] = []
    for folder in folders:
        if not (folder / layout.volume_table).is_file():
            continue
        columns, part = _read_csv(folder / layout.volume_table)
        header = header or columns
        base = _inputs_base(folder)
        for r in part:
            first = r.get("first_file") or r["path"]
            absolute = os.path.realpath(first if os.path.isabs(first) else os.path.join(base, first))
            rows.append({**layout.prefixed(r, folder.name, volume=True), "_order": position.get(absolute, len(position))})
    if header:
        rows.sort(key=lambda r: (r.pop("_order"), r["path"]))
        atomic_write_csv(root / layout.volume_table, header, ([r.get(h, "") for h in header] for r in rows))
