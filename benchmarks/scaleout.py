#!/usr/bin/env python
"""Scale-out benchmark: sharded batch inference with 1 and 2 processes, training on 1 vs 2 replicas.

1. ``medlens predict`` (and ``segment``) over the same images as one process, then as two
   ``--shard I/2`` processes at once followed by ``medlens merge``: images/s end to end,
   process start-up included (that is what a scheduler pays).
2. Training steps/s of the same tiny classifier on one device, with
   ``train.distribution=mirrored`` over 2 logical CPU devices, and with
   ``train.distribution=multi_worker`` as two worker processes talking gRPC over 127.0.0.1
   (``TF_CONFIG``), as two machines would (``history.csv`` epochs, same data); then the same
   three on the JAX backend (DataParallel over 2 host devices; two ``jax.distributed``
   processes all-reducing through gloo).

Usage (from the repository root)::

    python benchmarks/scaleout.py                 # ~5 min on 2 CPU cores
    python benchmarks/scaleout.py --images 400

Writes ``<out>/scaleout.json`` and ``.md``. On a GPU machine, run it there to add GPU numbers
(mirrored then uses every local GPU).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import machine_info, write_results  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "medlens.app.cli"]


def _run(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(CLI + args, check=True, capture_output=True, text=True)
    return time.perf_counter() - started


def _parallel(commands: list[list[str]], envs: list[dict[str, str]] | None = None) -> float:
    started = time.perf_counter()
    jobs = [subprocess.Popen(CLI + c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=None if envs is None else {**os.environ, **envs[i]}) for i, c in enumerate(commands)]
    for job in jobs:
        _, err = job.communicate()
        if job.returncode:
            raise RuntimeError(err[-2000:])
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--work", type=Path, default=Path("/tmp/medlens-bench-scaleout"))
    parser.add_argument("--out", type=Path, default=SCRIPT_DIR / "results")
    args = parser.parse_args(argv)
    import shutil

    from medlens.app.demo import demo_config, demo_seg_config
    from medlens.pipelines.config import config_to_dict
    from medlens.pipelines.phantoms import write_phantoms

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.time()
    write_phantoms(args.work / "train", count=320, size=64, seed=1)
    write_phantoms(args.work / "images", count=args.images, size=64, seed=9)
    import yaml

    cls = config_to_dict(demo_config(args.work / "train"))
    cls["train"]["phase1"]["epochs"], cls["train"]["phase2"]["epochs"] = 4, 0
    (args.work / "cls.yaml").write_text(yaml.safe_dump(cls))
    seg = config_to_dict(demo_seg_config(args.work / "train"))
    seg["train"]["phase1"]["epochs"] = 2
    (args.work / "seg.yaml").write_text(yaml.safe_dump(seg))
    report: dict[str, Any] = {"machine": machine_info(), "images": args.images, "inference": {}, "training": {}}

    # Training: one device, mirrored over two logical CPUs, two loopback workers (fresh processes for all).
    import socket

    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    jax = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    setups = [  # name, overrides, environment, processes
        ("one device", [], {}, 1),
        ("mirrored, 2 logical CPUs", ["train.distribution=mirrored", "train.devices=2"], {}, 1),
        ("multi_worker, 2 processes on loopback", ["train.distribution=multi_worker"], {}, 2),
        ("JAX, one device", [], jax, 1),
        ("JAX mirrored (DataParallel), 2 host devices", ["train.distribution=mirrored"],
         {**jax, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, 1),
        ("JAX multi_worker, 2 processes on loopback", ["train.distribution=multi_worker"], jax, 2),
    ]
    for number, (name, extra, env, processes) in enumerate(setups):
        run = args.work / f"run-{number}"
        command = ["train", str(args.work / "cls.yaml"), "--out", str(run), *extra]
        roles = [{"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
                 if processes > 1 else {} for i in range(processes)]
        _parallel([command] * processes, [{**env, **role} for role in roles])
        import csv

        state = json.loads((run / "run.json").read_text())
        epochs = len(list(csv.DictReader((run / "history.csv").open())))
        train_images = sum(state["data_report"]["class_counts"]["train"].values())
        steps = epochs * -(-train_images // cls["data"]["batch_size"])
        report["training"][name] = {"epochs": epochs, "steps": steps, "seconds": state["train_seconds"],
                                    "steps_per_s": round(steps / state["train_seconds"], 2),
                                    "test_auc": json.loads((run / "metrics.json").read_text())["test"]["auc"]}
    run = args.work / "run-0"
    _run(["train", str(args.work / "seg.yaml"), "--out", str(args.work / "seg-run")])

    images = str(args.work / "images")
    for command, model in (("predict", run), ("segment", args.work / "seg-run")):
        one = _run([command, str(model), images, "--out", str(args.work / f"{command}-1")])
        two = _parallel([[command, str(model), images, "--out", str(args.work / f"{command}-2"), "--shard", f"{i}/2"]
                         for i in (1, 2)])
        merge = _run(["merge", str(args.work / f"{command}-2")])
        report["inference"][command] = {
            "1 process": {"seconds": round(one, 2), "images_per_s": round(args.images / one, 1)},
            "2 shard processes + merge": {"seconds": round(two + merge, 2),
                                          "images_per_s": round(args.images / (two + merge), 1)},
        }
    report["total_seconds"] = round(time.time() - started, 1)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    m = report["machine"]
    lines = ["# medlens scale-out (CPU)", "",
             f"`python benchmarks/scaleout.py` on {report['finished']}: {m['cpu_count']} CPU cores "
             f"({m.get('cpu_model', m['processor'])}), GPUs {m.get('gpus') or 'none'}, Keras {m['keras']} on "
             f"{m['keras_backend']}. {args.images} 64-px phantoms; times are end to end, process start-up included.",
             "", "| command | set-up | seconds | images/s |", "|---|---|---|---|"]
    for command, rows in report["inference"].items():
        for setup, row in rows.items():
            lines.append(f"| {command} | {setup} | {row['seconds']} | {row['images_per_s']} |")
    lines += ["", "| training (small CNN, 64 px, 4 epochs) | steps/s | train s | test AUC |", "|---|---|---|---|"]
    for setup, row in report["training"].items():
        lines.append(f"| {setup} | {row['steps_per_s']} | {row['seconds']} | {row['test_auc']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(write_results(args.out, "scaleout", report, text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
