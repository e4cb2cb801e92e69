"""What predict and segment share around their per-image work: one result type, one resume rule."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medlens.pipelines.inference.batch import BatchResult, reusable
from medlens.pipelines.predict import predict_paths
from medlens.pipelines.segpredict import segment_paths


def test_reusable_needs_rows_for_every_file_of_a_case_made_from_its_content_now() -> None:
    earlier = {"/in/a.dcm": [{"path": "a.dcm", "sha256": "1"}], "/in/b.dcm": [{"path": "b.dcm", "sha256": "2"}]}
    assert reusable(earlier, {"/in/a.dcm": "1", "/in/b.dcm": "2"}) == [{"path": "/in/a.dcm", "sha256": "1"},
                                                                       {"path": "/in/b.dcm", "sha256": "2"}]
    assert reusable(earlier, {"/in/a.dcm": "1", "/in/b.dcm": "changed"}) is None
    assert reusable(earlier, {"/in/a.dcm": "1", "/in/c.dcm": "3"}) is None  # a slice the last run never saw
    assert reusable(earlier, {"/in/a.dcm": ""}) is None  # could not be hashed now: never trusted
    assert reusable({}, {"/in/a.dcm": "1"}) is None


@pytest.mark.parametrize("command", ["predict", "segment"])
def test_a_batch_resumed_from_another_folder_keeps_what_it_made(command, tiny_run, tiny_seg_run, phantom_dir,
                                                                tmp_path, monkeypatch) -> None:
    """Relative input paths are resolved against the folder the first batch ran from, for both commands."""
    first = tmp_path / "first"
    for k, image in enumerate(sorted((phantom_dir / "lesion").iterdir())[:2]):
        (first / "in").mkdir(parents=True, exist_ok=True)
        shutil.copy(image, first / "in" / f"case{k}.png")
    out = tmp_path / "out"

    def run(inputs: list[Path], resume: bool) -> BatchResult:
        if command == "predict":
            return predict_paths(tiny_run, inputs, out, resume=resume)
        return segment_paths(tiny_seg_run, inputs, out, resume=resume)

    monkeypatch.chdir(first)
    made = run([Path("in")], resume=False)
    assert made.kept == 0 and len(made.rows) == 2 and made.table.is_file() and made.errors == []
    monkeypatch.chdir(tmp_path)  # the same files, now named first/in/... from here
    again = run([Path("first/in")], resume=True)
    assert again.kept == 2 and len(again.rows) == 2
    assert sorted(str(r["path"]) for r in again.rows) == ["first/in/case0.png", "first/in/case1.png"]
    (first / "in" / "case1.png").write_bytes((first / "in" / "case0.png").read_bytes())  # new content
    changed = run([Path("first/in")], resume=True)
    assert changed.kept == 1 and len(changed.rows) == 2
