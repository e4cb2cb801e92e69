"""Atomic writes and run-directory safety."""

from __future__ import annotations

import json

import pytest

from medlens.pipelines.errors import RunDirError
from medlens.pipelines.rundir import (
    RunDir,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    prepare_output_dir,
)


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    atomic_write_text(tmp_path / "a.txt", "hello")
    atomic_write_json(tmp_path / "b.json", {"x": 1.5})
    atomic_write_csv(tmp_path / "c.csv", ["a", "b"], [[1, "ü"], [2, "x,y"]])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.csv"]
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1.5}
    assert (tmp_path / "c.csv").read_text(encoding="utf-8") == 'a,b\n1,ü\n2,"x,y"\n'


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(ValueError):
        atomic_write_json(target, {"bad": float("nan")})
    assert json.loads(target.read_text()) == {"ok": True}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_existing_output_is_never_overwritten_without_asking(tmp_path):
    out = tmp_path / "out"
    prepare_output_dir(out)
    (out / "mine.csv").write_text("precious")
    with pytest.raises(RunDirError, match="--overwrite"):
        prepare_output_dir(out)
    prepare_output_dir(out, overwrite=True)
    assert (out / "mine.csv").read_text() == "precious"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="not a folder"):
        prepare_output_dir(tmp_path / "file")


def test_require_names_the_missing_piece(tmp_path):
    with pytest.raises(RunDirError, match="run directory not found"):
        RunDir(tmp_path / "nope").require()
    run = RunDir(tmp_path / "run").create()
    run.write_config({"name": "x"})
    with pytest.raises(RunDirError, match="model.keras is missing"):
        run.require()


def test_metrics_and_state_carry_the_schema_and_one_threshold_shape(tmp_path):
    from medlens.pipelines.rundir import SCHEMA_VERSION, RunDir, threshold_record

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    run.write_state({"task": "segmentation", "threshold_method": "best_dice on validation"})
    assert json.loads(run.state_path.read_text())["schema"] == SCHEMA_VERSION
    assert run.read_metrics() == {}
    # A schema-1 segmentation file: the threshold was a bare number.
    run.metrics_path.write_text(json.dumps({"test": {"n": 3}, "threshold": 0.42}))
    assert run.read_metrics() == {"test": {"n": 3}, "schema": SCHEMA_VERSION,
                                  "threshold": {"value": 0.42, "method": "best_dice", "chosen_on": "val"}}
    run.write_metrics({"test": {"n": 4}, "threshold": threshold_record(0.5, "fixed")})
    written = json.loads(run.metrics_path.read_text())
    assert list(written)[0] == "schema" and written["threshold"] == {"value": 0.5, "method": "fixed",
                                                                      "chosen_on": "config"}
    assert threshold_record(0.3, "youden")["chosen_on"] == "val"
    run.metrics_path.write_text("{not json")
    assert run.read_metrics() == {}  # unreadable: logged and rewritten by the next evaluation
