"""Multi-label findings: data with missing/uncertain labels, the masked loss, per-finding metrics,
and a run trained on phantoms with several lesion types whose maps point at each finding."""

from __future__ import annotations

import csv
import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_checks import dciodvfy_errors
from sklearn.metrics import average_precision_score, roc_auc_score

from medlens.app.cli import main
from medlens.models.multilabel import MaskedAUC, MaskedBinaryCrossentropy, positive_weights
from medlens.pipelines.config import load_config
from medlens.pipelines.data import load_findings
from medlens.pipelines.errors import ConfigError, DatasetError
from medlens.pipelines.evaluation.calibration import ece_floor
from medlens.pipelines.evaluation.multilabel import choose_thresholds, multilabel_metrics
from medlens.pipelines.explain.localisation import pointing_game
from medlens.pipelines.phantoms import FINDINGS, write_findings_phantoms


def _rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


def _config(root: Path, **data) -> object:
    return load_config({"task": "multilabel", "data": {"kind": "csv", "root": str(root), "manifest": "m.csv",
                                                      "findings": ["a", "b"], "val_fraction": 0.25,
                                                      "test_fraction": 0.25, **data}})


@pytest.fixture
def images(tmp_path, phantom_dir) -> Path:
    """Eight real image files under tmp_path/img (distinct content)."""
    folder = tmp_path / "img"
    folder.mkdir()
    for i, source in enumerate(sorted((phantom_dir / "lesion").iterdir())[:8]):
        shutil.copy(source, folder / f"x{i}.png")
    return tmp_path


def _mask(path: Path) -> np.ndarray:
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)


def _write(root: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(root / "m.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def test_columns_blank_uncertain_and_bad_rows(images, caplog):
    rows = [["img/x0.png", "p1", "1", "0"], ["img/x1.png", "p1", "", "1"], ["img/x2.png", "p2", "-1", "0"],
            ["img/x3.png", "p3", "0", "-1.0"], ["img/x4.png", "p4", "2", "0"], ["img/x5.png", "p5", "", ""],
            ["img/x6.png", "p6", "yes", "1"], ["img/x7.png", "p7", "1.0", "0.0"], ["img/gone.png", "p8", "1", "0"]]
    _write(images, ["path", "patient_id", "a", "b"], rows)
    with caplog.at_level(logging.WARNING):
        dataset = load_findings(_config(images).data, seed=0)
    kept = {Path(i).name: label for s in dataset.splits.values() for i, label in zip(s.ids, s.labels, strict=True)}
    assert sorted(kept) == ["x0.png", "x1.png", "x2.png", "x3.png", "x7.png"]  # the good rows, all of them
    np.testing.assert_array_equal(kept["x1.png"], [np.nan, 1.0])  # blank: missing
    np.testing.assert_array_equal(kept["x2.png"], [np.nan, 0.0])  # -1 with uncertain: ignore
    assert dataset.report["rows_skipped"] == 4
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    for number, reason in ((6, "'2' is not 0, 1, blank or -1"), (7, "every finding label is missing"),
                           (8, "'yes'"), (10, "file not found")):
        assert any(f"m.csv line {number}: " in line and reason in line for line in lines), (number, lines)
    assert all("\n" not in line for line in lines)
    # Uncertain labels mapped by policy.
    ones = load_findings(_config(images, uncertain="ones").data, seed=0)
    labels = {Path(i).name: lab for s in ones.splits.values() for i, lab in zip(s.ids, s.labels, strict=True)}
    np.testing.assert_array_equal(labels["x2.png"], [1.0, 0.0])
    np.testing.assert_array_equal(labels["x3.png"], [0.0, 1.0])
    zeros = load_findings(_config(images, uncertain="zeros").data, seed=0)
    labels = {Path(i).name: lab for s in zeros.splits.values() for i, lab in zip(s.ids, s.labels, strict=True)}
    np.testing.assert_array_equal(labels["x3.png"], [0.0, 0.0])
    # Patients never straddle splits.
    owners = {}
    for split, source in dataset.splits.items():
        for patient in source.groups:
            assert owners.setdefault(patient, split) == split


def test_nih_style_finding_lists(images):
    rows = [["img/x0.png", "Effusion|Mass"], ["img/x1.png", "No Finding"], ["img/x2.png", "Mass"],
            ["img/x3.png", "Effusion"], ["img/x4.png", "Hernia"], ["img/x5.png", ""], ["img/x6.png", "Mass"],
            ["img/x7.png", "No Finding"]]
    _write(images, ["path", "Finding Labels"], rows)
    cfg = _config(images, findings=[], columns={"findings": "Finding Labels"})
    dataset = load_findings(cfg.data, seed=0)
    assert dataset.class_names == ["Effusion", "Hernia", "Mass"]  # every token but "No Finding"
    assert dataset.report["rows_skipped"] == 1  # the empty list
    labels = {Path(i).name: lab for s in dataset.splits.values() for i, lab in zip(s.ids, s.labels, strict=True)}
    np.testing.assert_array_equal(labels["x0.png"], [1, 0, 1])
    np.testing.assert_array_equal(labels["x1.png"], [0, 0, 0])
    # With data.findings named, a token outside them is a bad row, not a new finding.
    named = load_findings(_config(images, findings=["Effusion", "Mass"], columns={"findings": "Finding Labels"}).data,
                          seed=0)
    assert named.class_names == ["Effusion", "Mass"] and named.report["rows_skipped"] == 2


def test_config_and_manifest_errors_are_one_line(images):
    _write(images, ["path", "a"], [["img/x0.png", "1"]])
    with pytest.raises(DatasetError, match=r"m.csv: no column for finding 'b' \(data.findings\)") as caught:
        load_findings(_config(images).data, seed=0)
    assert "\n" not in str(caught.value)
    with pytest.raises(DatasetError, match="set data.findings"):
        load_findings(_config(images, findings=[]).data, seed=0)
    with pytest.raises(ConfigError, match="a multi-label run reads a csv manifest or an npz"):
        _config(images, kind="folder")
    with pytest.raises(ConfigError, match="data.positive_weights"):
        _config(images, class_weights=True)
    with pytest.raises(ConfigError, match="choose one of ignore, ones, zeros"):
        _config(images, uncertain="maybe")


def test_chest_xray14_preset_splits_by_patient(shared_data):
    cfg = load_config("chest-xray14")
    dataset = load_findings(cfg.data, seed=cfg.seed)
    assert len(dataset.class_names) == 14 and sum(len(s) for s in dataset.splits.values()) == 1500
    owners = {}
    for split, source in dataset.splits.items():
        assert source.labels.shape == (len(source), 14)
        for patient in source.groups:
            assert owners.setdefault(patient, split) == split  # grouped by patient
    counts = dataset.report["finding_counts"]
    # Stratified by finding: every finding has positives in train and test.
    assert all(counts["train"][f][0] > 0 and counts["test"][f][0] > 0 for f in dataset.class_names)
    assert abs(len(dataset.splits["test"]) / 1500 - 0.2) < 0.05


def test_masked_loss_skips_missing_labels_and_weights_positives():
    truth = np.array([[1.0, 0.0, -1.0], [0.0, -1.0, 1.0]], "float32")
    pred = np.array([[0.8, 0.3, 0.5], [0.4, 0.9, 0.6]], "float32")
    expected = np.mean([(-np.log(0.8) - np.log(0.7)) / 2, (-np.log(0.6) - np.log(0.6)) / 2])
    assert float(MaskedBinaryCrossentropy()(truth, pred)) == pytest.approx(expected, rel=1e-5)
    changed = pred.copy()
    changed[0, 2], changed[1, 1] = 0.01, 0.99  # only the missing entries move
    assert float(MaskedBinaryCrossentropy()(truth, changed)) == pytest.approx(expected, rel=1e-5)
    weighted = MaskedBinaryCrossentropy(pos_weight=[3.0, 1.0, 1.0])
    expected_weighted = np.mean([(-3 * np.log(0.8) - np.log(0.7)) / 2, (-np.log(0.6) - np.log(0.6)) / 2])
    assert float(weighted(truth, pred)) == pytest.approx(expected_weighted, rel=1e-5)
    assert positive_weights([[1, 0], [0, np.nan], [0, 0], [0, 1]]) == [3.0, 2.0]
    # The training AUC counts labelled pairs only.
    metric = MaskedAUC(num_thresholds=1000)
    metric.update_state(truth, pred)
    flat = truth >= 0
    assert float(metric.result()) == pytest.approx(roc_auc_score(truth[flat], pred[flat]), abs=0.01)


def test_metrics_per_finding_and_a_finding_without_positives():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 3)) < 0.3).astype(float)
    labels[:, 2] = 0.0  # no positives at all
    labels[:10, 0] = np.nan  # missing
    probs = np.clip(labels * 0.4 + rng.random((200, 3)) * 0.6, 0, 1)
    probs[np.isnan(probs)] = 0.5
    thresholds = choose_thresholds(labels, probs, ["a", "b", "c"])
    assert thresholds["c"] == 0.5  # one class on validation: the fallback
    metrics = multilabel_metrics(labels, probs, ["a", "b", "c"], thresholds, seed=0)
    a = metrics["findings"]["a"]
    keep = np.isfinite(labels[:, 0])
    assert a["n"] == 190 and a["auc"] == pytest.approx(roc_auc_score(labels[keep, 0], probs[keep, 0]))
    assert a["average_precision"] == pytest.approx(average_precision_score(labels[keep, 0], probs[keep, 0]))
    assert a["auc_ci95"][0] < a["auc"] < a["auc_ci95"][1]
    assert a["tp"] + a["fn"] == a["positives"] and a["tp"] + a["fp"] + a["tn"] + a["fn"] == a["n"]
    # The calibration floor of the 190 labelled scores, to the 6 decimals written.
    pair = np.stack([1 - probs[keep, 0], probs[keep, 0]], axis=1)
    assert a["ece_floor"] == pytest.approx(ece_floor(pair), abs=5e-7) and 0 < a["ece_floor"] < a["ece"]
    c = metrics["findings"]["c"]
    assert c["auc"] is None and c["sensitivity"] is None and "no positive cases" in c["note"]
    assert metrics["auc_findings"] == ["a", "b"]
    assert metrics["macro_auc"] == pytest.approx(np.mean([a["auc"], metrics["findings"]["b"]["auc"]]))


# ----------------------------------------------------------------------------------- a trained run


@pytest.fixture(scope="module")
def findings_run(tmp_path_factory) -> Path:
    """The demo's localising head (small CNN, global max pooling, linear) on three-finding phantoms."""
    from medlens.pipelines.train import train

    folder = tmp_path_factory.mktemp("findings")
    write_findings_phantoms(folder / "phantoms", count=320, size=64, seed=1)
    cfg = load_config({
        "name": "findings", "task": "multilabel", "seed": 3,
        "data": {"kind": "csv", "root": str(folder / "phantoms"), "manifest": "manifest.csv",
                 "findings": list(FINDINGS), "image_size": [64, 64], "batch_size": 32, "val_fraction": 0.15,
                 "test_fraction": 0.2, "augment": "tumour"},
        "model": {"backbone": "small_cnn", "weights": "none", "pooling": "max", "dense_units": 0, "dropout": 0.0,
                  "head_norm": "none"},
        "train": {"phase1": {"epochs": 12, "learning_rate": 0.002, "unfreeze_blocks": -1},
                  "phase2": {"epochs": 4, "learning_rate": 0.0003, "unfreeze_blocks": 2},
                  "early_stopping_patience": 4},
    })
    return train(cfg, folder / "run").run_dir


@pytest.mark.slow
def test_trained_run_scores_each_finding_and_its_maps_point_at_it(findings_run, shared_data, tmp_path, capsys):
    from medlens.pipelines.rundir import RunDir

    run = RunDir(findings_run)
    state, metrics = run.read_state(), run.read_metrics()
    assert state["task"] == "multilabel" and state["findings"] == list(FINDINGS)
    assert set(state["thresholds"]) == set(FINDINGS) and len(state["positive_weights"]) == 3
    assert metrics["schema"] == 2 and metrics["threshold"]["chosen_on"] == "val"
    assert set(metrics["threshold"]["value"]) == set(FINDINGS)
    test = metrics["test"]
    assert test["macro_auc"] >= 0.95, test["macro_auc"]  # measured 1.000
    for finding in FINDINGS:
        assert test["findings"][finding]["auc"] >= 0.9, (finding, test["findings"][finding])
    card = run.card_path.read_text()
    assert all(f"| {finding} |" in card for finding in FINDINGS)
    for finding in FINDINGS:  # each finding's ECE beside its floor, in metrics and in the card's row
        item = test["findings"][finding]
        assert 0 < item["ece_floor"] < 0.5
        assert f"| {item['ece']:.3f} ({item['ece_floor']:.3f}) |" in card, finding

    fresh = tmp_path / "fresh"
    write_findings_phantoms(fresh, count=100, size=64, seed=11)
    (fresh / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    assert main(["predict", str(findings_run), str(fresh / "images"), "--out", str(out), "--explain",
                 "gradcam,gradcam++", "--masks", str(fresh / "masks")]) == 0
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 100 and len(_rows(out / "errors.csv")) == 1  # the broken file, alone
    truth = {f"images/{Path(r['path']).name}": r for r in _rows(fresh / "manifest.csv")}
    for row in rows:
        present = [f for f in FINDINGS if row[f"pos_{f}"] == "1"]
        assert row["label"] == ("|".join(present) or "none") and int(row["findings"]) == len(present)
        assert row["explained_findings"] == "|".join(present)  # --findings positive, the default
        for finding in FINDINGS:
            assert (row[f"gradcam_{finding}_overlay"] != "") == (finding in present)
    called = {f: sum(r[f"pos_{f}"] == "1" for r in rows) for f in FINDINGS}
    for finding in FINDINGS:
        actual = sum(truth[f"images/{Path(r['path']).name}"][finding] == "1" for r in rows)
        assert abs(called[finding] - actual) <= 6, (finding, called[finding], actual)
        # The small CNN's maps are 8x8 cells of 8 px upsampled (block4_relu), the masks end where a lesion's
        # soft edge drops below a quarter of its contrast: a peak can sit a pixel or two beyond the mask.
        # Measured over trained models (seeds 3-8, 12 and 20 epochs) on these phantoms: Grad-CAM per finding
        # >= 0.95 for seeds 4-8; seed 3 (this fixture) scores cyst 0.80 / 0.825 and nodule 0.875 / 0.925 (its
        # cyst peaks sit on the right rim, 8-9 px from the centre of a disc of radius 8); 0.975-1.0 at a
        # 2-pixel tolerance. Grad-CAM++ 0.65-1.0 as written, 0.83-1.0 at 2 px.
        for slug, strict, tolerant in (("gradcam", 0.75, 0.9), ("gradcampp", 0.6, 0.8)):
            explained = [r for r in rows if r[f"{slug}_{finding}_pointing"] != ""]
            assert len(explained) >= 25
            hits = [int(r[f"{slug}_{finding}_pointing"]) for r in explained]
            assert np.mean(hits) >= strict, (slug, finding, np.mean(hits), len(hits))
            near = [pointing_game(np.load(out / r[f"{slug}_{finding}_map"]),
                                  _mask(fresh / "masks" / f"{Path(r['path']).stem}_{finding}.png"), tolerance_px=2)
                    for r in explained]
            assert np.mean(near) >= max(tolerant, np.mean(hits)), (slug, finding, np.mean(near), len(near))

    # The report: each case lists its present findings, a map per finding, and the filter offers findings.
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    data = json.loads(re.search(r'<script id="data" type="application/json">(.*?)</script>', page, re.S)
                      .group(1).replace("<\\/", "</"))
    by_file = {r["path"].split("/")[-1]: r for r in rows}
    for case in data["cases"]:
        present = [f for f in FINDINGS if by_file[case["file"]][f"pos_{f}"] == "1"]
        assert case["findings"] == present
        assert sorted(layer["name"] for layer in case["layers"]) == sorted(
            f"{title}: {f}" for f in present for title in ("Grad-CAM", "Grad-CAM++"))
        assert all((out / layer["src"]).is_file() for layer in case["layers"])
    from browser import ReportTable as _Table
    from browser import browse

    done = browse((out / "report.html").as_uri(), tmp_path, "--dump-dom")
    table = _Table()
    table.feed(done.stdout)
    assert table.body.get("data-ready") == "1" and table.body.get("data-broken") == "0", table.body
    assert all(f"<option>{finding}</option>" in done.stdout for finding in FINDINGS)

    # DICOM export: one Secondary Capture per finding and frame, one series per finding, in the source study.
    import pydicom

    source = shared_data / "dicom_samples" / "emri_small.dcm"
    dicom_out = tmp_path / "dicom"
    assert main(["predict", str(findings_run), str(source), "--out", str(dicom_out), "--explain", "gradcam",
                 "--findings", "all", "--dicom"]) == 0
    written = sorted(p for p in (dicom_out / "dicom").glob("*.dcm") if not p.name.endswith(".sr.dcm"))
    frames = int(pydicom.dcmread(source, stop_before_pixels=True).NumberOfFrames)
    assert len(written) == frames * len(FINDINGS)
    # … and per frame a TID 1500 findings report: each finding's probability and presence, as predictions.csv has them.
    import highdicom as hd

    reports = sorted((dicom_out / "dicom").glob("*.sr.dcm"))
    assert len(reports) == frames
    by_frame = {int(r["frame"]): r for r in csv.DictReader((dicom_out / "predictions.csv").open(encoding="utf-8"))}
    for path in reports:
        report = hd.sr.srread(path)
        (image,) = report.content.get_image_measurement_groups()[0].source_images
        frame = image.referenced_frame_numbers[0] - 1
        row = by_frame[frame]
        groups = {g.tracking_identifier.removeprefix("finding: "): g
                  for g in report.content.get_image_measurement_groups()}
        assert sorted(groups) == sorted(FINDINGS)
        for finding, group in groups.items():
            (probability,) = group.get_measurements()
            assert probability.name.meaning == "Probability" and probability.value == float(row[f"p_{finding}"])
            (presence,) = group.get_qualitative_evaluations()
            assert presence.value.meaning == ("Present" if row[f"pos_{finding}"] == "1" else "Absent")
    assert dciodvfy_errors(reports[0]) == []
    objects = [pydicom.dcmread(path) for path in written]
    study = pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID
    assert {o.StudyInstanceUID for o in objects} == {study}
    series = {}
    for o in objects:
        series.setdefault(o.SeriesInstanceUID, set()).add(o.SeriesDescription)
    assert len(series) == len(FINDINGS) and all(len(d) == 1 for d in series.values())
    assert {next(iter(d)) for d in series.values()} == {f"medlens Grad-CAM {f} (decision support)" for f in FINDINGS}

    # The service returns the findings present and a map per finding.
    from fastapi.testclient import TestClient

    from medlens.app.service import ServiceSettings, create_app

    with TestClient(create_app(findings_run, ServiceSettings(explain=("gradcam",)))) as client:
        assert client.get("/model").json()["findings"] == list(FINDINGS)
        image = fresh / "images" / next(name for name, r in sorted(by_file.items()) if int(r["findings"]) >= 2)
        body = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")}).json()
        frame, row = body["frames"][0], by_file[image.name]
        assert frame["findings"] == [f for f in FINDINGS if row[f"pos_{f}"] == "1"] and frame["label"] == row["label"]
        assert set(frame["probabilities"]) == set(FINDINGS) and set(frame["thresholds"]) == set(FINDINGS)
        assert set(frame["explanations"]) == set(frame["findings"]) and len(frame["findings"]) >= 2
        assert all(e["gradcam"]["overlay_png_base64"] for e in frame["explanations"].values())

    # Named findings: only their columns; an unknown name is a one-line error.
    named = tmp_path / "named"
    assert main(["explain", str(findings_run), str(fresh / "images" / "case_0001.png"), "--out", str(named),
                 "--method", "gradcam,lime", "--samples", "40", "--findings", "cyst"]) == 0
    header = list(_rows(named / "predictions.csv")[0])
    assert "gradcam_cyst_overlay" in header and "lime_cyst_fit_r2" in header
    assert not any(c.startswith(("gradcam_nodule", "lime_reticular")) for c in header)
    capsys.readouterr()
    assert main(["explain", str(findings_run), str(fresh / "images" / "case_0001.png"), "--out",
                 str(tmp_path / "bad"), "--method", "gradcam", "--findings", "edema"]) == 2
    assert "'edema' is not one of this run's findings (nodule, cyst, reticular)" in capsys.readouterr().err

    assert main(["evaluate", str(findings_run), "--split", "val"]) == 0
    printed = capsys.readouterr().out
    assert "macro_auc" in printed and "auc cyst" in printed


def test_multilabel_npz_as_chestmnist_lays_it_out(tmp_path):
    rng = np.random.default_rng(0)
    parts = {}
    for split, count in (("train", 40), ("val", 10), ("test", 10)):
        parts[f"{split}_images"] = rng.integers(0, 255, (count, 28, 28), dtype=np.uint8)
        parts[f"{split}_labels"] = (rng.random((count, 3)) < 0.3).astype(np.uint8)
    np.savez(tmp_path / "chest.npz", **parts)
    cfg = load_config({"task": "multilabel", "data": {"kind": "npz", "npz": str(tmp_path / "chest.npz"),
                                                      "findings": ["x", "y", "z"]}})
    dataset = load_findings(cfg.data, seed=0)
    assert dataset.report["splits_from"] == "given" and dataset.splits["train"].labels.shape == (40, 3)
    np.testing.assert_array_equal(dataset.splits["test"].labels, parts["test_labels"])
    bad = dict(parts, val_labels=np.full((10, 3), 2, np.uint8))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(DatasetError, match=r"bad.npz: val labels hold 2.0 \(row 0\); expected 0 or 1"):
        load_findings(load_config({"task": "multilabel", "data": {"kind": "npz", "npz": str(tmp_path / "bad.npz")}}
                                  ).data, seed=0)


@pytest.mark.slow
def test_input_gradient_methods_point_at_each_finding(findings_run, tmp_path):
    fresh = tmp_path / "fresh"
    write_findings_phantoms(fresh, count=50, size=64, seed=11)
    rates = {}
    for baseline, methods, findings in (("blur", "gradient,smoothgrad,ig", "all"), ("black", "ig", "cyst")):
        out = tmp_path / baseline
        assert main(["predict", str(findings_run), str(fresh / "images"), "--out", str(out), "--explain", methods,
                     "--ig-baseline", baseline, "--findings", findings, "--masks", str(fresh / "masks")]) == 0
        rows = _rows(out / "predictions.csv")
        for slug in methods.split(","):
            for finding in (FINDINGS if findings == "all" else [findings]):
                hits = [int(r[f"{slug}_{finding}_pointing"]) for r in rows if r[f"{slug}_{finding}_pointing"] != ""]
                assert len(hits) >= 12
                rates[baseline, slug, finding] = float(np.mean(hits))
        completeness = [float(r[k]) for r in rows for k in r if k.endswith("_completeness")]
        assert completeness and np.median(completeness) < 0.05, np.median(completeness)  # measured 0.007, 32 steps
    # Measured (blur): gradient 0.90 / 0.66 / 1.0, SmoothGrad 1.0 / 0.76 / 1.0, IG 1.0 / 0.76 / 1.0.
    for slug in ("smoothgrad", "ig"):
        for finding in FINDINGS:
            assert rates["blur", slug, finding] >= 0.6, (slug, finding, rates)
    # A black baseline hides a dark lesion: the cyst is nearly as dark as black, so (x - x') ≈ 0 there
    # (measured 0.20 against 0.76 with the blurred baseline). The baseline is a choice to report.
    assert rates["black", "ig", "cyst"] < rates["blur", "ig", "cyst"] - 0.2, rates


@pytest.mark.slow
def test_randomisation_check_passes_real_maps_and_fails_a_model_blind_one(findings_run, tmp_path, capsys,
                                                                          monkeypatch):
    from medlens.pipelines.explain import sanity
    from medlens.pipelines.rundir import RunDir

    fresh = tmp_path / "fresh"
    write_findings_phantoms(fresh, count=12, size=64, seed=21)
    assert main(["sanity", str(findings_run), str(fresh / "images"), "--methods", "gradcam,gradient"]) == 0
    printed = capsys.readouterr().out
    checks = json.loads((findings_run / sanity.CHECKS_FILE).read_text())
    assert checks["images"] >= 6 and set(checks["methods"]) == {"gradcam", "gradient"}
    for method in checks["methods"].values():
        stages = [s["randomised_down_to"] for s in method["stages"]]
        assert stages == ["head", "block 4", "block 3", "block 2", "block 1"]  # top down, cumulative
        # Measured: Grad-CAM 0.02, gradient 0.25 after full randomisation.
        assert method["final_spearman"] < 0.5 and method["verdict"] == "pass", method
    assert "Grad-CAM: head" in printed and "PASS" in printed
    assert "## Explanation checks" in RunDir(findings_run).card_path.read_text()
    assert main(["evaluate", str(findings_run), "--split", "val"]) == 0  # rewrites the card, keeps the section
    assert "## Explanation checks" in RunDir(findings_run).card_path.read_text()

    # A "method" that ignores the model (the image's own brightness) must fail the check.
    class Brightness:
        def __call__(self, batch, class_index=None):
            grey = batch.mean(axis=-1)
            grey = (grey - grey.min(axis=(1, 2), keepdims=True)) / np.ptp(grey, axis=(1, 2), keepdims=True)
            return type("Maps", (), {"maps": grey.astype(np.float32)})()

    monkeypatch.setattr(sanity, "build_map_method", lambda *args, **kwargs: Brightness())
    blind = sanity.randomisation_check(findings_run, sorted((fresh / "images").iterdir()), ("gradcam",), write=True)
    assert blind["methods"]["gradcam"]["final_spearman"] > 0.99 and blind["methods"]["gradcam"]["verdict"] == "fail"
    # The report labels the failing method's maps.
    out = tmp_path / "out"
    assert main(["predict", str(findings_run), str(fresh / "images"), "--out", str(out), "--explain", "gradcam",
                 "--report"]) == 0
    assert "Grad-CAM: " in (out / "report.html").read_text()
    assert "failed the weight-randomisation check" in (out / "report.html").read_text()
