"""Helpers of the distributed-training tests: worker processes on loopback, their TF_CONFIG, their histories."""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def _history(path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open()))



def _tf_config(ports: list[int], index: int) -> str:
    return json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]}, "task": {"type": "worker", "index": index}})



def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


# The JAX backend on the CPU only: a JAX that finds a GPU would not train these runs on the same devices.
JAX = {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}


def _start_workers(args: list[str], scratch: Path, count: int = 2, env: dict[str, str] | None = None
                   ) -> list[subprocess.Popen]:
    ports = _free_ports(count)
    scratch.mkdir(exist_ok=True)
    script = Path(sys.executable).with_name("medlens")
    return [subprocess.Popen([str(script), "train", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, **(env or {}), "TF_CONFIG": _tf_config(ports, i), "TMPDIR": str(scratch)})
            for i in range(count)]


def _kill_after(workers: list[subprocess.Popen], state_file: Path, epochs: int, victim: int) -> str:
    """Kill worker ``victim`` once ``epochs`` are checkpointed; the output of the first other worker."""
    survivor = workers[1 - victim]
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            try:
                if json.loads(state_file.read_text())["epochs_done"] >= epochs:
                    break
            except (OSError, ValueError):
                pass
            assert survivor.poll() is None, "training ended before it could be interrupted"
            time.sleep(0.02)
        os.kill(workers[victim].pid, signal.SIGKILL)
        return survivor.communicate(timeout=120)[0]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait(timeout=60)


def _finish(workers: list[subprocess.Popen]) -> list[str]:
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=300)[0])
    finally:
        for worker in workers:
            worker.kill()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-2000:]
    return outputs
