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
from medlens.models.ordinal import (
    CumulativeHead,
    OrdinalCrossentropy,
    decode_grades,
    expected_grade,
    grade_probabilities,
)
from medlens.pipelines.config import load_config
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.evaluation.ordinal import (
    choose_grade_cuts,
    ordinal_metrics,
    quadratic_weighted_kappa,
    qwk_ci,
)


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


def _coral_cases(n: int, shift: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Grades 0-4 and a CORAL-shaped model whose score is the true grade plus noise, minus ``shift``."""
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    score = grades + rng.normal(0, 0.35, n) - shift
    cumulative = 1 / (1 + np.exp(-4 * (score[:, None] - np.arange(1, 5)[None, :] + 0.5)))
    return grades, cumulative


def test_grade_cuts_decode_by_the_expected_grade():
    cumulative = np.array([[0.9, 0.6, 0.2, 0.1], [0.2, 0.1, 0.0, 0.0]])
    assert expected_grade(cumulative).round(6).tolist() == [1.8, 0.3]
    assert decode_grades(cumulative, [0.3, 1.0, 1.8, 3.5]).tolist() == [3, 1]  # reaching a cut passes it
    assert decode_grades(cumulative, [0.31, 1.9, 2.0, 3.0]).tolist() == [1, 0]
    with pytest.raises(ValueError, match="4 finite non-decreasing grade cut points"):
        decode_grades(cumulative, [1.0, 0.5, 2.0, 3.0])
    with pytest.raises(ValueError, match="4 finite non-decreasing"):
        decode_grades(cumulative, [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        decode_grades(cumulative, [0.5, float("nan"), 2.0, 3.0])
    # A non-finite output reaches no cut: grade 0, as under the 0.5 rule.
    assert decode_grades(np.array([[np.nan, 0.2, 0.1, 0.0]]), [0.5, 1.5, 2.5, 3.5]).tolist() == [0]


def test_grade_cuts_chosen_on_validation_undo_a_shifted_model_and_carry_to_new_cases(caplog):
    val_grades, val_cumulative = _coral_cases(300, shift=0.6, seed=0)
    test_grades, test_cumulative = _coral_cases(2000, shift=0.6, seed=1)
    # The search starts from the 0.5 rule itself: no move, the same grades on these cases.
    start = choose_grade_cuts(val_grades, val_cumulative, "accuracy", rounds=0)
    assert np.array_equal(decode_grades(val_cumulative, start), decode_grades(val_cumulative))
    half_test = decode_grades(test_cumulative)
    for objective in ("accuracy", "qwk"):
        cuts = choose_grade_cuts(val_grades, val_cumulative, objective)
        assert len(cuts) == 4 and np.all(np.diff(cuts) >= 0)
        # Never below the 0.5 rule on the cases it was chosen on...
        chosen, half = decode_grades(val_cumulative, cuts), decode_grades(val_cumulative)
        if objective == "accuracy":
            assert np.mean(chosen == val_grades) > np.mean(half == val_grades)
        else:
            assert quadratic_weighted_kappa(val_grades, chosen, 5) > quadratic_weighted_kappa(val_grades, half, 5)
        # ...and the gain holds on 2,000 new cases: the shift of 0.6 grades puts the 0.5 rule one grade low
        # for most cases (measured accuracy 0.516), the chosen cuts sit near the true boundaries (0.878).
        predicted = decode_grades(test_cumulative, cuts)
        assert np.mean(half_test == test_grades) < 0.55 and np.mean(predicted == test_grades) > 0.8
        assert quadratic_weighted_kappa(test_grades, predicted, 5) > quadratic_weighted_kappa(test_grades, half_test, 5)
    # A validation set of 2,000 cases searches quantile positions (at most 256 per cut), with the same result.
    many = choose_grade_cuts(test_grades, test_cumulative, "accuracy")
    assert np.mean(decode_grades(test_cumulative, many) == test_grades) > 0.8
    # A grade no validation case has stays reachable: without grade 4 in validation, moving the last cut
    # above every score would gain there, and grade 4 would never be predicted again.
    without_four = val_grades != 4
    with caplog.at_level(logging.WARNING, logger="medlens.pipelines.evaluation.ordinal"):
        cuts = choose_grade_cuts(val_grades[without_four], val_cumulative[without_four], "qwk")
    assert [r.getMessage() for r in caplog.records] == [
        "grade cuts: no validation case has grade 4; the cut points around it keep the 0.5 rule"]
    four = test_grades == 4  # this model puts 43 % of grade-4 cases at 4 by the 0.5 rule; the cuts keep that
    recall = np.mean(decode_grades(test_cumulative[four], cuts) == 4)
    assert recall > 0.3 and recall >= np.mean(decode_grades(test_cumulative[four]) == 4) - 0.05
    # Rows with non-finite probabilities are left out of the choice.
    broken = val_cumulative.copy()
    broken[0] = np.nan
    assert np.all(np.isfinite(choose_grade_cuts(val_grades, broken, "qwk")))
    # An unbiased model loses (almost) nothing to chosen cuts.
    val_grades, val_cumulative = _coral_cases(300, shift=0.0, seed=2)
    test_grades, test_cumulative = _coral_cases(2000, shift=0.0, seed=3)
    cuts = choose_grade_cuts(val_grades, val_cumulative, "qwk")
    assert (np.mean(decode_grades(test_cumulative, cuts) == test_grades)
            > np.mean(decode_grades(test_cumulative) == test_grades) - 0.03)
    # Nothing to choose from one grade; an unknown objective is refused.
    assert choose_grade_cuts(np.zeros(10, int), val_cumulative[:10], "qwk") is None
    with pytest.raises(ValueError, match="qwk or accuracy"):
        choose_grade_cuts(val_grades, val_cumulative, "f1")
    # metrics use the cuts for every grade-based figure, not for the probabilities.
    names = [f"g{k}" for k in range(5)]
    plain = ordinal_metrics(test_grades, test_cumulative, names, referable=2, threshold=0.5, ci=False)
    cut = ordinal_metrics(test_grades, test_cumulative, names, referable=2, threshold=0.5, ci=False, cuts=cuts)
    assert cut["auc"] == plain["auc"] and cut["referable"] == plain["referable"]
    assert cut["accuracy"] == pytest.approx(np.mean(decode_grades(test_cumulative, cuts) == test_grades))


def test_ordinal_config_errors():
    with pytest.raises(ConfigError, match="'evaluate.referable' is 5"):
        load_config("fundus-grading", ["evaluate.referable=5"])
    with pytest.raises(ConfigError, match="needs at least 3"):
        load_config("fundus-grading", ["data.class_names=[a, b]", "evaluate.referable=1"])
    with pytest.raises(ConfigError, match="evaluate.grade_cuts"):
        load_config("fundus-grading", ["evaluate.grade_cuts=median"])
    assert load_config("fundus-grading", ["evaluate.grade_cuts=qwk"]).evaluate.grade_cuts == "qwk"


def _retina_eyes(shared_data: Path, folder: Path, count: int) -> Path:
    """The first ``count`` RetinaMNIST test images as PNG files ``eye0.png`` … in ``folder``."""
    from medlens.pipelines.imaging import read_npz

    images, _ = read_npz(shared_data / "medmnist" / "retinamnist.npz")["test"]
    folder.mkdir()
    for i in range(count):
        cv2.imwrite(str(folder / f"eye{i}.png"), cv2.cvtColor(np.asarray(images[i]), cv2.COLOR_RGB2BGR))
    return folder


@pytest.fixture(scope="module")
def grading_run(tmp_path_factory, shared_data) -> Path:
    from medlens.pipelines.train import train

    cfg = load_config("fundus-grading", ["model.backbone=small_cnn", "model.weights=none", "data.augment=none",
                                         "data.image_size=[32,32]", "train.phase1.epochs=3",
                                         "train.phase1.unfreeze_blocks=-1", "train.phase2.epochs=0", "seed=1"])
    return train(cfg, tmp_path_factory.mktemp("grading") / "run").run_dir


@pytest.mark.slow
def test_retina_grading_run_end_to_end(grading_run, shared_data, tmp_path, capsys):
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

    folder = _retina_eyes(shared_data, tmp_path / "fundus", 6)
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


@pytest.mark.slow
def test_grade_cuts_chosen_on_retina_validation_reach_metrics_card_and_predictions(grading_run, shared_data, tmp_path,
                                                                                   capsys):
    import shutil

    from medlens.pipelines.rundir import RunDir

    run_dir = tmp_path / "run"
    shutil.copytree(grading_run, run_dir)  # the module's run stays on the 0.5 rule
    before = RunDir(run_dir).read_metrics()
    # `evaluate` changes only evaluate.* keys, validated, and says so in one line.
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "train.phase1.epochs=9"]) == 2
    assert "evaluate changes only evaluate.KEY=VALUE settings" in capsys.readouterr().err
    assert main(["evaluate", str(run_dir), "evaluate.grade_cuts=median"]) == 2
    assert "evaluate.grade_cuts" in capsys.readouterr().err
    assert RunDir(run_dir).read_config()["evaluate"].get("grade_cuts", "0.5") == "0.5"
    # Overrides may follow --split; scoring val also re-scores the test split scored before (no stale figures).
    assert main(["evaluate", str(run_dir), "--split", "val", "evaluate.grade_cuts=qwk"]) == 0
    run = RunDir(run_dir)
    assert run.read_config()["evaluate"]["grade_cuts"] == "qwk"
    rescored = run.read_metrics()["test"]
    assert main(["evaluate", str(run_dir)]) == 0
    test = run.read_metrics()["test"]
    for key in ("accuracy", "qwk", "mae", "confusion_matrix"):
        assert rescored[key] == test[key]
    state, metrics = run.read_state(), run.read_metrics()
    cuts = state["grade_cuts"]
    assert state["grade_cuts_method"] == "qwk" and len(cuts) == 4 and np.all(np.diff(cuts) >= 0)
    assert metrics["grade_cuts"] == {"method": "qwk", "cuts": cuts, "of": "E[grade] = Σ P(grade ≥ k)",
                                     "chosen_on": "val"}
    # Chosen to maximise validation QWK, starting from the 0.5 rule: never below it there.
    assert metrics["val"]["qwk"] >= before["val"]["qwk"] - 1e-12
    # The probabilities do not change: AUCs and the referable call are the 0.5 run's.
    assert test["auc"] == pytest.approx(before["test"]["auc"]) and test["referable"] == before["test"]["referable"]
    assert "chosen on validation to maximise quadratic weighted kappa" in run.card_path.read_text()

    folder = _retina_eyes(shared_data, tmp_path / "fundus", 12)
    assert main(["predict", str(run_dir), str(folder), "--out", str(tmp_path / "out")]) == 0
    rows = list(csv.DictReader((tmp_path / "out" / "predictions.csv").open(encoding="utf-8")))
    assert len(rows) == 12
    for row in rows:
        cumulative = np.array([[float(row[f"p_ge_{n}"]) for n in state["grades"][1:]]])
        assert int(row["grade"]) == int(decode_grades(cumulative, cuts)[0])  # the run's cuts, not the 0.5 rule
    from medlens.pipelines.predictors import OrdinalPredictor

    probe = np.array([0.45, 0.3, 0.2, 0.1])  # the 0.5 rule says grade 0; E[grade] = 1.05
    predictor = OrdinalPredictor(run_dir)
    assert predictor.fields(probe)["grade"] == int(np.searchsorted(cuts, 1.05, side="right"))
    assert predictor.summary()["grade_cuts"] == cuts and predictor.summary()["grade_cuts_method"] == "qwk"
    # Whatever cuts the run holds decide the grade: with these the probe is grade 4, with none grade 0.
    run.write_state({**state, "grade_cuts": [0.1, 0.2, 0.3, 0.4]})
    assert OrdinalPredictor(run_dir).fields(probe)["grade"] == 4
    run.write_state({**state, "grade_cuts": None, "grade_cuts_method": "0.5"})
    assert OrdinalPredictor(run_dir).fields(probe)["grade"] == 0
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
