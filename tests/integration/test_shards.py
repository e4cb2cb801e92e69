"""Sharded batch inference: N=3 shards as separate processes, merged, equal the unsharded run."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from medlens.app.cli import main
from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.shards import merge_shards, parse_shard, select_shard

# Columns that name output files: they point into the shard folders after a merge.
FILE_COLUMNS = ("gradcam_overlay", "gradcam_map", "mask", "probability", "overlay")


def _table(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def _without_files(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in r.items() if k not in FILE_COLUMNS and k != "seconds"} for r in rows]


# Probabilities are written with 6 decimals. A shard runs its images in other batches than the whole
# run, and float32 results depend on the batch (oneDNN picks kernels by shape): values ~1e-7 apart can
# round to neighbouring 6th decimals. So probability columns agree to one unit in the last written
# place; every other column (labels, peaks, areas, hashes) must be identical.
PROBABILITY_TOLERANCE = 1e-6 + 1e-9


def _assert_same_rows(got: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key.startswith("p_") and a[key] and b[key]:
                assert abs(float(a[key]) - float(b[key])) <= PROBABILITY_TOLERANCE, (key, a, b)
            else:
                assert a[key] == b[key], (key, a, b)


def test_partition_is_deterministic_complete_and_disjoint(tmp_path):
    files = [tmp_path / f"{name}.png" for name in "qwertyuiopasdfg"]
    parts = [select_shard(list(reversed(files)), (i, 4)) for i in range(1, 5)]
    positions = sorted(k for _, ks in parts for k in ks)
    assert positions == list(range(15))
    assert sorted(p for ps, _ in parts for p in ps) == sorted(files)
    assert select_shard(files, (2, 4)) == parts[1]  # input order does not matter
    assert parse_shard("2/3") == (2, 3) and parse_shard(None) is None
    for bad in ("0/3", "4/3", "a/b", "3"):
        with pytest.raises(ConfigError, match="--shard must be I/N"):
            parse_shard(bad)


@pytest.mark.slow
@pytest.mark.parametrize("command", ["predict", "segment"])
def test_three_shard_processes_merge_to_the_unsharded_run(command, tiny_run, tiny_seg_run, phantom_dir, shared_data,
                                                          tmp_path, capsys):
    run = tiny_run if command == "predict" else tiny_seg_run
    inputs = [str(phantom_dir / "lesion"), str(phantom_dir / "no_lesion"),
              str(shared_data / "dicom_samples" / "emri_small.dcm"), str(tmp_path / "missing.png")]
    extra = ["--explain", "gradcam"] if command == "predict" else []
    whole = tmp_path / "whole"
    assert main([command, str(run), *inputs, "--out", str(whole), *extra]) == 0
    sharded = tmp_path / "sharded"
    jobs = [subprocess.Popen([sys.executable, "-m", "medlens.app.cli", command, str(run), *inputs, "--out",
                              str(sharded), "--shard", f"{i}/3", *extra], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in (1, 2, 3)]
    for job in jobs:
        output, _ = job.communicate(timeout=300)
        assert job.returncode == 0, output[-2000:]
    table = "predictions.csv" if command == "predict" else "segmentation.csv"
    sizes = [len(_table(sharded / f"shard-{i}-of-3" / table)) for i in (1, 2, 3)]
    assert min(sizes) > 0 and sum(sizes) == len(_table(whole / table))

    assert main(["merge", str(sharded), "--report"]) == 0
    printed = capsys.readouterr().out
    assert "merged 3 of 3 shard(s)" in printed
    merged, expected = _table(sharded / table), _table(whole / table)
    _assert_same_rows(_without_files(merged), _without_files(expected))
    for row in merged:
        for column in FILE_COLUMNS:
            if row.get(column):
                assert (sharded / row[column]).is_file() and row[column].startswith("shard-")
    assert _table(sharded / "errors.csv") == _table(whole / "errors.csv")  # the missing input, once
    assert (sharded / "report.html").is_file()


def test_merge_reports_missing_shards(tiny_run, phantom_dir, tmp_path, capsys):
    out = tmp_path / "out"
    images = [str(p) for p in sorted((phantom_dir / "lesion").iterdir())[:4]]
    assert main(["predict", str(tiny_run), *images, "--out", str(out), "--shard", "2/3"]) == 0
    with pytest.raises(RunDirError, match="shards missing: 1/3, 3/3"):
        merge_shards(out)
    assert main(["merge", str(out), "--allow-missing"]) == 1
    assert "shards missing: 1/3, 3/3" in capsys.readouterr().out
    with pytest.raises(RunDirError, match="no shard-I-of-N folders"):
        merge_shards(tmp_path)
    assert main(["predict", str(tiny_run), *images, "--shard", "1/2"]) == 2
    assert "--shard needs --out" in capsys.readouterr().err
