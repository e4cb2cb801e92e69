"""Multi-label data: a manifest (or npz) whose images each carry any number of findings.

:func:`load_findings` reads a :class:`~medlens.pipelines.config.FindingsDataConfig` into the
same :class:`~medlens.pipelines.data.sources.Dataset` as single-label data, with ``class_names`` the
findings and labels ``(N, F)`` ``float32``: 1 present, 0 absent, NaN missing. Two manifest
layouts:

* one column per finding (``Atelectasis,Cardiomegaly,...``) holding ``1``/``0``, blank
  (missing) or ``-1`` (uncertain, mapped by ``data.uncertain``);
* NIH style: one column (``data.columns.findings``, e.g. ``Finding Labels``) listing a row's
  findings separated by ``|``, ``No Finding`` (``data.no_finding``) for none.

A row whose values cannot be read (a value other than 0/1/blank/-1, an unknown finding, all
labels missing) is skipped with a one-line warning naming the manifest and line; the good rows
are kept and the count is in the dataset report. Splits are made as for single-label data:
given ones kept, missing ones made stratified by finding and grouped by patient, exact
duplicate files dropped first.

Example (needs the data)::

    from medlens.pipelines.config import load_config
    dataset = load_findings(load_config("chest-xray14").data, seed=0)
    dataset.class_names[:3], dataset.splits["train"].labels.shape
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from medlens.pipelines.config import FindingsDataConfig
from medlens.pipelines.data.classification import _resolve, read_npz_pool
from medlens.pipelines.data.manifest import ManifestFiles, manifest_path, read_each_row, read_rows
from medlens.pipelines.data.sources import Dataset, FileSource
from medlens.pipelines.data.splits import assign_splits, normalise_split, split_pool
from medlens.pipelines.errors import DatasetError

__all__ = ["load_findings", "finding_counts", "parse_finding_value"]

log = logging.getLogger(__name__)

_MISSING = float("nan")


def parse_finding_value(text: str, uncertain: str) -> float:
    """One manifest cell as a label: 1.0, 0.0 or NaN (missing); ``ValueError`` for anything else.

    Example:
        >>> [parse_finding_value(v, "ignore") for v in ("1", "0.0", "", "-1")]
        [1.0, 0.0, nan, nan]
        >>> parse_finding_value("-1", "ones")
        1.0
    """
    value = text.strip()
    if not value:
        return _MISSING
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not 0, 1, blank or -1") from None
    if number in (0.0, 1.0):
        return number
    if number == -1.0:
        return {"ignore": _MISSING, "ones": 1.0, "zeros": 0.0}[uncertain]
    raise ValueError(f"{value!r} is not 0, 1, blank or -1")


def _pipe_findings(cfg: FindingsDataConfig, rows: list[dict[str, str]], column: str) -> list[str]:
    if cfg.findings:
        return list(cfg.findings)
    tokens = {t.strip() for row in rows for t in (row.get(column) or "").split("|")}
    return sorted(t for t in tokens if t and t != cfg.no_finding)


def _row_labels(cfg: FindingsDataConfig, row: dict[str, str], findings: list[str], column: str) -> np.ndarray:
    """One row's label vector; ``ValueError`` saying what is wrong with it."""
    if column:
        text = (row.get(column) or "").strip()
        if not text:
            raise ValueError(f"empty {column!r}")
        tokens = [t.strip() for t in text.split("|") if t.strip()]
        if tokens == [cfg.no_finding]:
            return np.zeros(len(findings), np.float32)
        unknown = [t for t in tokens if t not in findings]
        if unknown:
            raise ValueError(f"finding {unknown[0]!r} in {column!r} is not one of data.findings")
        return np.array([1.0 if f in tokens else 0.0 for f in findings], np.float32)
    values = []
    for finding in findings:
        try:
            values.append(parse_finding_value(row.get(finding) or "", cfg.uncertain))
        except ValueError as exc:
            raise ValueError(f"column {finding!r}: {exc}") from None
    labels = np.array(values, np.float32)
    if np.isnan(labels).all():
        raise ValueError("every finding label is missing")
    return labels


def _read_manifest(cfg: FindingsDataConfig, root: Path) -> tuple[FileSource, list[str] | None, list[str], dict]:
    manifest = manifest_path(root, cfg.manifest)
    image_column, pipe_column = cfg.column("image"), cfg.column("findings")
    columns, rows = read_rows(manifest, [image_column, pipe_column] if pipe_column else [image_column])
    if pipe_column:
        findings = _pipe_findings(cfg, rows, pipe_column)
    else:
        if not cfg.findings:
            raise DatasetError(f"{manifest}: set data.findings to the finding columns (or data.columns.findings "
                               "to a column of |-separated findings)")
        findings = list(cfg.findings)
        absent = [f for f in findings if f not in columns]
        if absent:
            raise DatasetError(f"{manifest}: no column for finding {absent[0]!r} (data.findings); "
                               f"columns are: {', '.join(columns)}")
    if len(findings) < 2:
        raise DatasetError(f"{manifest}: {len(findings)} finding(s) found; a multi-label run needs at least two "
                           "(use task: classification for one)")
    patient_column, split_column = cfg.column("patient_id"), cfg.column("split")
    patient_column = patient_column if patient_column in columns else ""
    split_column = split_column if split_column in columns else ""

    files = ManifestFiles(manifest, root)

    def read(line: int, row: dict[str, str]) -> tuple[Path, np.ndarray, str, str | None]:
        path = files(row.get(image_column))
        if path is None:
            raise ValueError(f"empty {image_column!r}")
        if not files.exists(path):
            raise ValueError(f"file not found: {path}")
        vector = _row_labels(cfg, row, findings, pipe_column)
        split = normalise_split(row.get(split_column) or "", f"{manifest} line {line}") if split_column else None
        return path, vector, (row.get(patient_column) or "").strip() or f"__row{line}", split

    kept, skipped = read_each_row(manifest, rows, read)
    paths, labels, groups, splits = (list(column) for column in zip(*kept, strict=True))
    source = FileSource(paths, np.stack(labels), groups if patient_column else None, findings)
    return source, (splits if split_column else None), findings, skipped


def _load_npz(cfg: FindingsDataConfig, seed: int) -> Dataset:
    width = 0

    def finding_labels(path: Path, split: str, raw: np.ndarray) -> np.ndarray:
        nonlocal width
        values = raw.astype(np.float32)
        width = width or (values.shape[1] if values.ndim == 2 else 1)
        if width < 2 or values.ndim != 2 or values.shape[1] != width:
            raise DatasetError(f"{path}: labels are not multi-label (N×F with F ≥ 2 in every split)")
        bad = ~np.isin(values, (0.0, 1.0))
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{path}: {split} labels hold {float(values[bad][0])} (row {row}); expected 0 or 1")
        return values

    path, pool, given = read_npz_pool(cfg, finding_labels)
    findings = list(cfg.findings) or [str(i) for i in range(width)]
    if len(findings) != width:
        raise DatasetError(f"{path}: {width} label columns but data.findings names {len(findings)}")
    indices, origin = assign_splits(pool.labels, None, given, cfg.val_fraction, cfg.test_fraction, seed)
    return Dataset(findings, {name: pool.subset(idx) for name, idx in indices.items()},
                   {"kind": "npz", "source": str(path), "splits_from": origin, "duplicates_dropped": 0})


def load_findings(cfg: FindingsDataConfig, seed: int) -> Dataset:
    """Load and split a multi-label dataset (see the module docstring).

    Raises:
        ConfigError: an empty root/npz setting.
        DatasetError: a missing manifest, column or finding column, no usable row.
    """
    if cfg.kind == "npz":
        dataset = _load_npz(cfg, seed)
    else:
        root = _resolve(cfg.root, "root")
        if not root.is_dir():
            raise DatasetError(f"{root}: data root folder not found")
        pool, given, findings, skipped = _read_manifest(cfg, root)
        splits, found = split_pool(pool, given, cfg.val_fraction, cfg.test_fraction, seed,
                                   remove_duplicates=cfg.dedupe, where=str(root))
        dataset = Dataset(findings, splits, {"kind": "csv", "source": str(root), **found, **skipped})
    dataset.finish(findings=list(dataset.class_names), finding_counts=finding_counts(dataset))
    log.info("loaded %s: %d findings, %s images per split", dataset.report["source"], len(dataset.class_names),
             {k: len(v) for k, v in dataset.splits.items()})
    return dataset


def finding_counts(dataset: Dataset) -> dict[str, dict[str, Any]]:
    """Per split: images, and per finding ``[positive, negative, missing]``."""
    counts: dict[str, dict[str, Any]] = {}
    for name, source in dataset.splits.items():
        labels = np.asarray(source.labels, dtype=np.float32).reshape(len(source), len(dataset.class_names))
        counts[name] = {"images": len(source), **{
            finding: [int(np.sum(labels[:, k] == 1)), int(np.sum(labels[:, k] == 0)), int(np.isnan(labels[:, k]).sum())]
            for k, finding in enumerate(dataset.class_names)}}
    return counts
