"""One output layout: every file named by content hash and frame, the file columns recorded with the tables."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from medlens.pipelines.errors import RunDirError
from medlens.pipelines.inference import OutputLayout, output_stem, read_layout
from medlens.pipelines.predict import predict_paths
from medlens.pipelines.segpredict import segment_paths
from medlens.pipelines.shards import merge_shards


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture
def inputs(phantom_dir: Path, shared_data: Path, tmp_path: Path) -> list[Path]:
    """One phantom under two names (same content) and a 10-frame DICOM, in this (sorted) order.

    All three live under ``tmp_path``: inputs are processed in sorted path order, and the shared data's
    path sorts before or after ``/tmp`` depending on the machine (CI's ``/check/...`` comes first).
    """
    image = sorted((phantom_dir / "lesion").iterdir())[0]
    first = tmp_path / "in" / "a.png"
    second = tmp_path / "in" / "sub" / "copy of a.png"
    volume = tmp_path / "in" / "volumes" / "emri_small.dcm"
    second.parent.mkdir(parents=True)
    volume.parent.mkdir(parents=True)
    shutil.copy(image, first)
    shutil.copy(image, second)
    shutil.copy(shared_data / "dicom_samples" / "emri_small.dcm", volume)
    assert sorted([volume, second, first]) == [first, second, volume]
    return [first, second, volume]


def test_predict_names_explanations_by_content_and_frame_and_records_its_layout(tiny_run, inputs, tmp_path):
    from medlens.pipelines.explain import ExplainOptions

    out = tmp_path / "out"
    result = predict_paths(tiny_run, inputs, out, explain=ExplainOptions(methods=("gradcam",)))
    layout = read_layout(out)
    assert layout is not None and layout.command == "predict" and layout.table == "predictions.csv"
    assert layout.file_columns == ["gradcam_overlay", "gradcam_map"]
    assert layout.columns == list(_rows(out / "predictions.csv")[0])
    assert len(result.rows) == 12  # two PNGs and ten frames
    for row in result.rows:
        frame = int(row["frame"]) if row["frame"] != "" else None
        stem = output_stem(row["path"], _sha(Path(row["path"])), frame)
        assert row["gradcam_overlay"] == f"explanations/{stem}.gradcam.png"
        assert layout.outputs_present(row, out) and len(layout.files_of(row)) == 2
    copies = [r for r in result.rows if r["path"].endswith(".png")]
    assert copies[0]["gradcam_overlay"].split("-")[1] == copies[1]["gradcam_overlay"].split("-")[1]  # same content
    frames = sorted(r["gradcam_overlay"] for r in result.rows if r["path"].endswith(".dcm"))
    assert frames[0].endswith("-f0000.gradcam.png") and frames[-1].endswith("-f0009.gradcam.png")


def test_segment_records_its_layout_with_every_flush_so_an_interrupted_batch_resumes(tiny_seg_run, inputs,
                                                                                      tmp_path):
    out = tmp_path / "seg"
    done = []

    def interrupt_after_one(count: int) -> None:
        done.append(count)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        segment_paths(tiny_seg_run, inputs, out, progress=interrupt_after_one, flush_every=1)
    summary = json.loads((out / "segmentation.json").read_text())
    assert summary["complete"] is False and summary["images"] == 1
    layout = read_layout(out)
    assert layout.command == "segment" and layout.file_columns == ["mask", "probability", "overlay"]
    assert layout.volume_file_columns == ["mask_volume", "seg", "report", "probability_volume"]

    result = segment_paths(tiny_seg_run, inputs, out, resume=True)
    assert result.kept == 1 and len(result.rows) == 12
    assert json.loads((out / "segmentation.json").read_text())["complete"] is True
    for row in result.rows:
        frame = int(row["frame"]) if row["frame"] != "" else None
        assert row["mask"] == f"masks/{output_stem(row['path'], _sha(Path(row['path'])), frame)}.png"
        assert layout.outputs_present(row, out)
    volume = _rows(out / "volumes.csv")[0]
    assert volume["mask_volume"].startswith("volumes/emri_small-") and layout.outputs_present(volume, out, volume=True)

    # Resuming a finished batch keeps everything and rewrites nothing until it processes a case: an
    # interrupted resume never leaves a table that lost the rows of cases it had not reached.
    before = (out / "segmentation.csv").read_bytes()
    done.clear()
    with pytest.raises(KeyboardInterrupt):
        segment_paths(tiny_seg_run, inputs, out, resume=True, progress=interrupt_after_one, flush_every=1)
    assert (out / "segmentation.csv").read_bytes() == before


def test_merge_prefixes_exactly_the_columns_the_layout_names_files() -> None:
    layout = OutputLayout("predict", "predictions.csv", "predictions.json",
                          ["path", "gradcam_overlay", "gradcam_peak_row", "roadmap"], ["gradcam_overlay"])
    row = {"path": "in/a.png", "gradcam_overlay": "explanations/a.png", "gradcam_peak_row": "3", "roadmap": "x_map"}
    assert layout.prefixed(row, "shard-1-of-2") == {**row, "gradcam_overlay": "shard-1-of-2/explanations/a.png"}
    assert OutputLayout.from_json(json.loads(json.dumps(layout.to_json()))) == layout
    with pytest.raises(ValueError, match="not columns of the table"):
        OutputLayout("predict", "predictions.csv", "predictions.json", ["path"], ["gradcam_overlay"])


def test_merge_refuses_a_shard_that_records_no_layout(tiny_run, inputs, tmp_path):
    out = tmp_path / "sharded"
    for shard in ((1, 2), (2, 2)):
        predict_paths(tiny_run, inputs[:2], out, shard=shard)
    assert merge_shards(out).rows == 2
    summary = out / "shard-2-of-2" / "predictions.json"
    summary.write_text(json.dumps({k: v for k, v in json.loads(summary.read_text()).items() if k != "layout"}))
    with pytest.raises(RunDirError, match=r"shard\(s\) 2/2 record no output layout"):
        merge_shards(out)
