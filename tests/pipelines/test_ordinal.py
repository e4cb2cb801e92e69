"""Ordinal grades: a head whose cumulative probabilities never increase, its loss, QWK and the referable
call, and a run on RetinaMNIST through train, evaluate, predict, explain and the service."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from medlens.app.cli import main
from medlens.models.ordinal import CumulativeHead, OrdinalCrossentropy, decode_grades, grade_probabilities
from medlens.pipelines.config import load_config
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.ordinal import ordinal_metrics, quadratic_weighted_kappa, qwk_ci


def test_cumulative_head_is_rank_consistent_for_any_weights():
    head = CumulativeHead(5)
    features = np.random.default_rng(0).normal(size=(64, 12)).astype("float32") * 5
    head.build((None, 12))
    rng = np.random.default_rng(1)
    for _ in range(5):  # whatever the weights (gaps of either sign), thresholds stay ordered
        head.set_weights([rng.normal(size=w.shape).astype("float32") * 3 for w in head.get_weights()])
        cumulative = np.asarray(head(features))
        assert cumulative.shape == (64, 4)
        assert np.all(np.diff(cumulative, axis=1) <= 1e-7)
        probabilities = grade_probabilities(cumulative)
        assert np.all(probabilities >= 0) and np.allclose(probabilities.sum(1), 1.0)
    with pytest.raises(ValueError, match="at least 3 grades"):
        CumulativeHead(2)


def test_ordinal_loss_is_the_sum_of_threshold_cross_entropies():
    cumulative = np.array([[0.9, 0.6, 0.2], [0.3, 0.1, 0.05]], "float32")
    grades = np.array([2, 0])
    levels = np.array([[1, 1, 0], [0, 0, 0]], "float32")
    manual = -(levels * np.log(cumulative) + (1 - levels) * np.log(1 - cumulative)).sum(1).mean()
    loss = OrdinalCrossentropy()
    assert float(loss(grades, cumulative)) == pytest.approx(manual, rel=1e-5)
    assert float(loss(np.eye(4, dtype="float32")[grades], cumulative)) == pytest.approx(manual, rel=1e-5)
    assert decode_grades(cumulative).tolist() == [2, 0]


def test_qwk_ci_and_referable_point():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, 300)
    noisy = np.clip(truth + rng.integers(-1, 2, 300), 0, 4)
    assert quadratic_weighted_kappa(truth, noisy, 5) == pytest.approx(cohen_kappa_score(truth, noisy,
                                                                                          weights="quadratic"))
    low, high = qwk_ci(truth, noisy, 5, seed=0)
    assert low < quadratic_weighted_kappa(truth, noisy, 5) < high and high - low < 0.1
    cumulative = np.stack([(noisy >= k).astype(float) * 0.8 + 0.1 for k in range(1, 5)], axis=1)
    metrics = ordinal_metrics(truth, cumulative, [f"g{k}" for k in range(5)], referable=2, threshold=0.5, seed=0)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(truth - noisy)))
    assert np.asarray(metrics["confusion_matrix"]).sum() == 300
    ref = metrics["referable"]
    assert ref["tp"] + ref["fn"] == int((truth >= 2).sum()) and ref["grade"] == "≥ g2"
    assert ref["sensitivity"] == pytest.approx(np.mean(noisy[truth >= 2] >= 2))


def test_ordinal_config_errors():
    with pytest.raises(ConfigError, match="'evaluate.referable' is 5"):
        load_config("fundus-grading", ["evaluate.referable=5"])
    with pytest.raises(ConfigError, match="needs at least 3"):
        load_config("fundus-grading", ["data.class_names=[a, b]", "evaluate.referable=1"])


@pytest.fixture(scope="module")
def grading_run(tmp_path_factory, shared_data) -> Path:
    from medlens.pipelines.train import train

    cfg = load_config("fundus-grading", ["model.backbone=small_cnn", "model.weights=none", "data.augment=none",
                                         "data.image_size=[32,32]", "train.phase1.epochs=3",
                                         "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0", "seed=1"])
    return train(cfg, tmp_path_factory.mktemp("grading") / "run").run_dir


@pytest.mark.slow
def test_retina_grading_run_end_to_end(grading_run, shared_data, tmp_path, capsys):
    from medlens.pipelines.imaging import read_npz
    from medlens.pipelines.rundir import RunDir

    run = RunDir(grading_run)
    state, metrics = run.read_state(), run.read_metrics()
    assert state["task"] == "ordinal" and state["referable_grade"] == 2 and len(state["grades"]) == 5
    test = metrics["test"]
    # Measured 0.519 QWK / 0.735 macro AUC after 3 epochs at 64 px; chance is 0 and 0.5.
    assert test["qwk"] > 0.3 and test["auc"] > 0.65 and test["qwk_ci95"][0] < test["qwk"] < test["qwk_ci95"][1]
    assert metrics["threshold"]["chosen_on"] == "val" and metrics["threshold"]["of"] == "P(grade ≥ grade2)"
    assert test["referable"]["auc"] > 0.7
    assert "quadratic weighted kappa" in run.card_path.read_text()

    images, grades = read_npz(shared_data / "medmnist" / "retinamnist.npz")["test"]
    folder = tmp_path / "fundus"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"eye{i}.png"), cv2.cvtColor(np.asarray(images[i]), cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    assert main(["predict", str(grading_run), str(folder), "--out", str(out), "--explain", "gradcam"]) == 0
    rows = list(csv.DictReader((out / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 6
    names = state["grades"]
    for row in rows:
        cumulative = [float(row[f"p_ge_{n}"]) for n in names[1:]]
        assert all(a >= b for a, b in zip(cumulative, cumulative[1:], strict=False))  # never increasing
        assert row["label"] == names[int(row["grade"])] == names[sum(c >= 0.5 for c in cumulative)]
        assert sum(float(row[f"p_{n}"]) for n in names) == pytest.approx(1.0, abs=1e-5)
        assert row["referable"] == str(int(cumulative[1] >= float(row["threshold"])))
        assert row["explained_class"] == "grade ≥ grade2" and row["gradcam_overlay"]
    # The report shows each grade with its referable call (the ordinal task's own case view).
    assert json.loads((out / "predictions.json").read_text())["task"] == "ordinal"
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    cases = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S).group(1))["cases"]
    by_file = {Path(row["path"]).name: row for row in rows}
    assert len(cases) == 6
    for case in cases:
        row = by_file[case["file"]]
        assert case["label"] == row["label"] and case["probability"] == pytest.approx(float(row[f"p_{row['label']}"]))
        decision = "referable" if row["referable"] == "1" else "not referable"
        assert case["note"] == (f"P(grade ≥ grade2) = {float(row['p_ge_grade2']):.3f}: {decision} at threshold "
                                f"{float(row['threshold']):.3f}")
        assert [layer["name"] for layer in case["layers"]] == ["Grad-CAM"]
    # Explain another "grade ≥ k"; a grade-0 target is refused in one line.
    assert main(["explain", str(grading_run), str(folder / "eye0.png"), "--out", str(tmp_path / "g4"),
                 "--method", "gradcam", "--class", "grade4"]) == 0
    assert next(csv.DictReader((tmp_path / "g4" / "predictions.csv").open()))["explained_class"] == "grade ≥ grade4"
    capsys.readouterr()
    assert main(["explain", str(grading_run), str(folder / "eye0.png"), "--out", str(tmp_path / "g0"),
                 "--method", "gradcam", "--class", "grade0"]) == 2
    assert "explain P(grade ≥ NAME) for one of grade1" in capsys.readouterr().err

    from fastapi.testclient import TestClient

    from medlens.app.service import ServiceSettings, create_app

    with TestClient(create_app(grading_run, ServiceSettings(explain=()))) as client:
        body = client.post("/predict", files={"file": ("eye0.png", (folder / "eye0.png").read_bytes())}).json()
        frame = body["frames"][0]
        assert frame["grade"] == int(rows[0]["grade"]) and frame["label"] == rows[0]["label"]
        assert frame["p_referable"] == pytest.approx(float(rows[0]["p_ge_grade2"]))
    keras.backend.clear_session()


def test_a_grade_outside_the_scale_names_its_line_and_the_good_rows_are_kept(tmp_path, phantom_dir, caplog):
    from medlens.pipelines.errors import DatasetError
    from medlens.pipelines.tasks import TASKS

    images = sorted((phantom_dir / "lesion").iterdir())[:5]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{image},{g}\n" for image, g in zip(images, (0, 1, 2, 7, 1), strict=True)))
    cfg = load_config({"task": "ordinal", "evaluate": {"referable": 1},
                       "data": {"kind": "csv", "root": str(tmp_path), "manifest": "m.csv",
                                "class_names": ["none", "mild", "severe"], "dedupe": False,
                                "val_fraction": 0.0, "test_fraction": 0.0}})
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.data.manifest"):
        dataset = TASKS["ordinal"].load_data(cfg.data, seed=0)
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [f"skipped {tmp_path / 'm.csv'} line 5: label 7 but only 3 class_names (0..2)"]
    assert dataset.report["rows_skipped"] == 1
    kept = sorted((str(p), int(g)) for s in dataset.splits.values() for p, g in zip(s.paths, s.labels, strict=True))
    assert kept == sorted((str(image), g) for image, g in zip(images, (0, 1, 2, 7, 1), strict=True) if g != 7)
    (tmp_path / "m.csv").write_text(f"path,label\n{images[0]},7\n")  # nothing usable: one line
    with pytest.raises(DatasetError, match=r"m.csv: no usable rows \(.*m.csv line 2: label 7 but only 3 class_names") as caught:
        TASKS["ordinal"].load_data(cfg.data, seed=0)
    assert "\n" not in str(caught.value)


def test_an_ordinal_row_reads_back_as_one_finding_per_cut():
    """The findings report of a grade: ``grade ≥ K`` for each cut, present up to the predicted grade."""
    from medlens.pipelines.predictors import OrdinalPredictor

    predictor = OrdinalPredictor.__new__(OrdinalPredictor)  # row_findings reads only the grade names
    predictor.class_names = ["g0", "g1", "g2", "g3"]
    row = {"grade": "2", "p_ge_g1": "0.91", "p_ge_g2": "0.62", "p_ge_g3": "0.08"}
    assert predictor.row_findings(row) == [("grade ≥ g1", 0.91, True), ("grade ≥ g2", 0.62, True),
                                           ("grade ≥ g3", 0.08, False)]
