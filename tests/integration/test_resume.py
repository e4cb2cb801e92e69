"""Interrupted training resumes: SIGKILL a real training process, resume it, compare with an uninterrupted run."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import tiny_config

from medlens.app.cli import main
from medlens.pipelines.config import config_to_dict
from medlens.pipelines.errors import RunDirError
from medlens.pipelines.train import train

# Losses after resuming match the uninterrupted run to this absolute tolerance on CPU
# (measured: identical to float precision; the margin absorbs summation-order noise).
LOSS_TOLERANCE = 1e-4


def _config(phantom_dir: Path):
    cfg = tiny_config(phantom_dir, data__image_size=[64, 64])
    cfg.train.phase1.epochs = 6
    cfg.train.phase2.epochs = 2
    cfg.train.early_stopping_patience = 100  # the run must go the full distance in both cases
    return cfg


def _history(run: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((run / "history.csv").open()))


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_matches_uninterrupted(phantom_dir, tmp_path):
    cfg = _config(phantom_dir)
    config_file = tmp_path / "cfg.yaml"
    config_file.write_text(yaml.safe_dump(config_to_dict(cfg)))
    killed = tmp_path / "killed"
    script = Path(sys.executable).with_name("medlens")
    process = subprocess.Popen([str(script), "train", str(config_file), "--out", str(killed)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state_file = killed / "checkpoints" / "state.json"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if state_file.is_file():
                try:
                    if json.loads(state_file.read_text())["epochs_done"] >= 2:
                        break
                except ValueError:
                    pass
            assert process.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model.keras").exists(), "the process finished before the kill"
    interrupted_at = json.loads(state_file.read_text())["epochs_done"]
    assert 2 <= interrupted_at < 8

    assert main(["train", "--resume", str(killed)]) == 0
    reference = train(_config(phantom_dir), tmp_path / "reference").run_dir

    resumed_rows, reference_rows = _history(killed), _history(reference)
    assert [int(r["epoch"]) for r in resumed_rows] == list(range(1, 9)), "history must have no gap or repeat"
    assert [r["phase"] for r in resumed_rows] == ["1"] * 6 + ["2"] * 2
    for resumed, uninterrupted in zip(resumed_rows, reference_rows, strict=True):
        for key in ("loss", "val_loss"):
            assert float(resumed[key]) == pytest.approx(float(uninterrupted[key]), abs=LOSS_TOLERANCE), (key, resumed)
    resumed_metrics = json.loads((killed / "metrics.json").read_text())["test"]
    reference_metrics = json.loads((reference / "metrics.json").read_text())["test"]
    assert resumed_metrics["auc"] == pytest.approx(reference_metrics["auc"], abs=1e-3)
    assert json.loads((killed / "run.json").read_text())["resumed"] is True


def test_resume_needs_an_interrupted_run(tmp_path, capsys):
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(None, tmp_path, resume=True)
    assert main(["train", "--resume", str(tmp_path), "some-preset"]) == 2
    assert "give no CONFIG" in capsys.readouterr().err
