"""Run directories written by medlens 0.1 (schema 1) still load, evaluate, predict and serve.

``tests/data/legacy_runs/v0.1`` holds two tiny runs made with the code as it was before the task
seam and the metrics schema (``make_runs.py`` beside them, run on commit db80bf5): a classifier and
a U-Net on 60 phantoms of 32 px, seed 11. Their ``config.yaml`` points at a temporary folder, so
each test regenerates the same phantoms (``write_phantoms`` is deterministic) and points the
copied run at them.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from medlens.app.cli import main
from medlens.app.service import create_app
from medlens.pipelines.phantoms import write_phantoms
from medlens.pipelines.rundir import SCHEMA_VERSION, RunDir
from medlens.pipelines.tasks import task_of_run

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_runs" / "v0.1"


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("legacy")
    data = root / "data"
    write_phantoms(data, count=60, size=32, seed=11)
    runs = {}
    for name in ("classification", "segmentation"):
        run = root / name
        shutil.copytree(LEGACY / name, run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["data"]["root"] = str(data)
        (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        runs[name] = run
    runs["data"] = data
    return runs


def test_the_committed_runs_are_schema_1() -> None:
    for name in ("classification", "segmentation"):
        assert "schema" not in json.loads((LEGACY / name / "run.json").read_text())
        assert "schema" not in json.loads((LEGACY / name / "metrics.json").read_text())
    # The shape difference the schema removes: a bare number for segmentation, a record for classification.
    assert isinstance(json.loads((LEGACY / "segmentation" / "metrics.json").read_text())["threshold"], float)


def test_old_metrics_read_in_the_current_shape(legacy) -> None:
    for name, method in (("classification", "youden"), ("segmentation", "best_dice")):
        metrics = RunDir(legacy[name]).read_metrics()
        assert metrics["schema"] == SCHEMA_VERSION
        assert set(metrics["threshold"]) == {"value", "method", "chosen_on"}
        assert metrics["threshold"]["method"] == method and metrics["threshold"]["chosen_on"] == "val"
        assert 0 < metrics["threshold"]["value"] < 1
        assert task_of_run(RunDir(legacy[name]).read_state()).name == name


def test_old_runs_evaluate_and_are_rewritten_in_the_current_schema(legacy, capsys) -> None:
    old = json.loads((LEGACY / "classification" / "metrics.json").read_text())
    assert main(["evaluate", str(legacy["classification"])]) == 0
    assert main(["evaluate", str(legacy["segmentation"])]) == 0
    out = capsys.readouterr().out
    assert "test: n 15" in out and "test (pooled over pixels): n 12" in out
    for name in ("classification", "segmentation"):
        metrics = json.loads((legacy[name] / "metrics.json").read_text())
        assert metrics["schema"] == SCHEMA_VERSION and set(metrics["threshold"]) == {"value", "method", "chosen_on"}
    # Same model, same data, same threshold rule: the same test figures as when the run was made.
    new = json.loads((legacy["classification"] / "metrics.json").read_text())
    assert new["test"]["auc"] == pytest.approx(old["test"]["auc"], abs=1e-9)
    assert new["threshold"]["value"] == pytest.approx(old["threshold"]["value"], abs=1e-6)
    # The rewritten model card describes the model as 0.1 did (task, backbone, weights, input size).
    def model_lines(card: Path) -> list[str]:
        return [line for line in card.read_text().splitlines() if line.startswith(("- Task:", "- Backbone:"))]

    committed = model_lines(LEGACY / "classification" / "model_card.md")
    assert committed == ["- Task: classification into no_lesion, lesion",
                         "- Backbone: small_cnn (initial weights: none), input 32×32 RGB"]
    assert model_lines(legacy["classification"] / "model_card.md") == committed


def test_old_runs_predict_and_segment(legacy, tmp_path) -> None:
    images = sorted((legacy["data"] / "lesion").iterdir())[:3]
    assert main(["predict", str(legacy["classification"]), *map(str, images), "--out", str(tmp_path / "p")]) == 0
    rows = list(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert len(rows) == 3 and all(0 <= float(r["p_lesion"]) <= 1 for r in rows)
    assert main(["segment", str(legacy["segmentation"]), *map(str, images), "--out", str(tmp_path / "s")]) == 0
    assert len(list(csv.DictReader((tmp_path / "s" / "segmentation.csv").open()))) == 3


def test_old_runs_serve(legacy) -> None:
    image = sorted((legacy["data"] / "lesion").iterdir())[0]
    with TestClient(create_app(legacy["classification"])) as client:
        assert client.get("/health").json()["task"] == "classification"
        answer = client.post("/predict?explain=none", files={"file": ("x.png", image.read_bytes())})
        assert answer.status_code == 200 and set(answer.json()["probabilities"]) == {"no_lesion", "lesion"}
        assert client.post("/segment", files={"file": ("x.png", image.read_bytes())}).status_code == 409
    with TestClient(create_app(legacy["segmentation"])) as client:
        answer = client.post("/segment", files={"file": ("x.png", image.read_bytes())})
        assert answer.status_code == 200 and answer.json()["frames"][0]["mask_png_base64"]
