"""The HTML report, checked in a real headless Chromium: images load, sorting works, it renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from browser import ReportTable as _Table
from browser import browse

from medlens.app.cli import main
from medlens.app.report import write_report
from medlens.pipelines.errors import ConfigError, RunDirError


@pytest.fixture(scope="module")
def report_folder(tmp_path_factory, tiny_run, phantom_dir, shared_data) -> Path:
    """Predictions with Grad-CAM and LIME on phantoms and a 10-frame DICOM, then the report."""
    out = tmp_path_factory.mktemp("report") / "out"
    inputs = [*sorted((phantom_dir / "lesion").iterdir())[:3], *sorted((phantom_dir / "no_lesion").iterdir())[:3],
              shared_data / "dicom_samples" / "emri_small.dcm"]
    code = main(["predict", str(tiny_run), *map(str, inputs), "--out", str(out), "--explain", "gradcam,lime",
                 "--samples", "40", "--faithfulness", "--steps", "4", "--report",
                 "--truth", str(phantom_dir / "manifest.csv")])
    assert code == 0
    return out


def test_report_is_self_contained_and_complete(report_folder):
    page = (report_folder / "report.html").read_text()
    assert "Decision support only" in page and "http://" not in page and "https://" not in page
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))
    cases = data["cases"]
    assert len(cases) == 6 + 10
    for case in cases:
        for src in [case["original"], case["thumb"], *(layer["src"] for layer in case["layers"])]:
            assert not Path(src).is_absolute() and (report_folder / src).is_file(), src
        assert {layer["name"] for layer in case["layers"]} == {"Grad-CAM", "LIME"}
        original = cv2.imread(str(report_folder / case["original"]))
        assert original.shape[:2] == (case["height"], case["width"])  # full resolution
        assert 0.0 <= case["probability"] <= 1.0 and "deletion_auc" in case["layers"][0]
    phantoms = [c for c in cases if c["file"].endswith(".png")]
    assert all(c["truth"] in ("lesion", "no_lesion") for c in phantoms)
    dicom = [c for c in cases if c["file"] == "emri_small.dcm"]
    assert sorted(c["frame"] for c in dicom) == ["", *[str(i) for i in range(1, 10)]]


def test_report_in_headless_chromium(report_folder, tmp_path):
    url = (report_folder / "report.html").as_uri()
    done = browse(url + "#sort=probability:desc", tmp_path, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    table = _Table()
    table.feed(done.stdout)
    assert table.body.get("data-ready") == "1", table.body
    assert table.body.get("data-broken") == "0" and int(table.body["data-images"]) >= 16 + 3, table.body
    column = table.headers.index("probability")
    values = [float(row[column]) for row in table.rows if len(row) > column and row[column]]
    assert len(values) == 16 and values == sorted(values, reverse=True)
    ascending = browse(url + "#sort=file", tmp_path, "--dump-dom")
    table = _Table()
    table.feed(ascending.stdout)
    files = [row[table.headers.index("file")] for row in table.rows if row]
    assert files == sorted(files)

    shot = tmp_path / "report.png"
    done = browse(url, tmp_path, "--window-size=1280,900", f"--screenshot={shot}")
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    image = cv2.imread(str(shot))
    assert image.shape == (900, 1280, 3)
    assert image.std() > 20 and len(np.unique(image.reshape(-1, 3), axis=0)) > 500  # not blank: text, images


def test_report_errors(report_folder, tmp_path):
    with pytest.raises(RunDirError, match="exists; use --overwrite"):
        write_report(report_folder)
    with pytest.raises(ConfigError, match="no predictions.json or segmentation.csv"):
        write_report(tmp_path)
    with pytest.raises(ConfigError, match="must be written inside"):
        write_report(report_folder, out=tmp_path / "elsewhere.html", overwrite=True)
    bad_truth = tmp_path / "truth.csv"
    bad_truth.write_text("file_name,score\na.png,1\n")
    with pytest.raises(ConfigError, match="needs a path"):
        write_report(report_folder, truth=bad_truth, overwrite=True)
