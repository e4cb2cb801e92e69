"""Multi-process training on JAX (jax.distributed on loopback), and a cluster that never forms, on both backends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cluster import JAX, _finish, _free_ports, _history, _kill_after, _start_workers, _tf_config
from conftest import tiny_config

from medlens.pipelines.config import config_to_dict


@pytest.mark.slow
def test_jax_multi_process_on_loopback_matches_data_parallel_and_resumes(phantom_dir, tmp_path):
    cfg = tiny_config(phantom_dir, data__image_size=[48, 48])
    cfg.model.dropout = 0.0
    cfg.train.phase1.epochs = 3
    cfg.train.early_stopping_patience = 100
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(cfg)))
    scratch = tmp_path / "scratch"

    # One process, keras.distribution.DataParallel over two host devices.
    done = subprocess.run([sys.executable, "-m", "medlens.app.cli", "train", str(config), "--out", str(tmp_path / "jax"),
                           "train.distribution=mirrored"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **JAX, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    for marker in ("oneDNN", "cuInit", "cudart", "I0000"):  # Keras's own TensorFlow import stays quiet on JAX too
        assert marker not in done.stderr, done.stderr[-2000:]
    state = json.loads((tmp_path / "jax" / "run.json").read_text())
    assert state["keras_backend"] == "jax"
    assert state["distribution"] == {"kind": "mirrored", "replicas": 2, "chief": True, "backend": "jax"}
    test = json.loads((tmp_path / "jax" / "metrics.json").read_text())["test"]
    assert test["n"] == 24 and test["auc"] > 0.5  # every test image, evaluated on one device

    # Two JAX processes of one CPU device each (jax.distributed, gloo all-reduce on 127.0.0.1). The chief
    # (JAX's coordinator) is killed after the second epoch: the other worker stops at once with the
    # one-line error, not JAX's C++ abort a minute later.
    run = tmp_path / "mw"
    workers = _start_workers([str(config), "--out", str(run), "train.distribution=multi_worker"], scratch, env=JAX)
    output = _kill_after(workers, run / "checkpoints" / "state.json", 2, victim=0)
    assert workers[1].returncode == 2, output[-2000:]
    # JAX's own C++ log lines (gRPC "Socket closed", the coordination service's shutdown) may follow or
    # precede medlens's line on stderr, so it is searched for, not taken as the last line.
    errors = [line for line in output.splitlines() if line.startswith("medlens: error:")]
    assert len(errors) == 1 and "a worker left the cluster" in errors[0], output[-2000:]
    assert f"medlens train --resume {run}" in errors[0] and "Traceback" not in output
    assert not (run / "model.keras").exists(), "the run finished before the kill"

    # Two new processes resume and finish; the chief writes the run, the worker's scratch copy is gone.
    outputs = _finish(_start_workers(["--resume", str(run)], scratch, env=JAX))
    assert "run directory:" in outputs[0] and "worker finished 4 epochs" in outputs[1]
    state = json.loads((run / "run.json").read_text())
    assert state["distribution"] == {"kind": "multi_worker", "replicas": 2, "chief": True, "backend": "jax"}
    assert state["resumed"] is True and json.loads((run / "metrics.json").read_text())["test"]["n"] == 24
    assert list(scratch.iterdir()) == []

    # Each process fed its half of every global batch, so the step computed on the same sharded arrays
    # as DataParallel in one process: the histories, interrupted and resumed, are the same (measured:
    # byte-identical; the bound allows float32 rounding of a different all-reduce order).
    multi, single = _history(run / "history.csv"), _history(tmp_path / "jax" / "history.csv")
    assert [row["epoch"] for row in multi] == ["1", "2", "3", "4"] and len(single) == 4
    for a, b in zip(multi, single, strict=True):
        for key in ("loss", "val_loss", "auc", "val_auc"):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5, abs=1e-6), (key, a, b)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_a_worker_that_never_joins_ends_the_others_with_a_clear_error(phantom_dir, tmp_path, backend):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(config_to_dict(tiny_config(phantom_dir))))
    ports = _free_ports(2)
    started = time.time()
    done = subprocess.run([str(Path(sys.executable).with_name("medlens")), "train", str(config), "--out",
                           str(tmp_path / "alone"), "train.distribution=multi_worker", "train.join_timeout=5"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(JAX if backend == "jax" else {}), "TF_CONFIG": _tf_config(ports, 0)})
    assert done.returncode != 0 and time.time() - started < 60
    assert (f"not every worker joined within 5 s (this is worker 0 of 2; waiting for 127.0.0.1:{ports[1]})"
            in done.stderr), done.stderr[-2000:]
