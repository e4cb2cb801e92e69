#!/usr/bin/env python
"""Service benchmark: `medlens serve` throughput and latency with dynamic batching, on real HTTP.

A VGG16 classifier at 224 px (random weights: speed does not depend on them; one short epoch on
phantoms makes it a finished run) is served by ``medlens serve`` in its own process on loopback.
Clients POST 224-px PNGs to ``/predict``:

- 1 client, one request at a time, vs 32 concurrent clients — without explanations (batched:
  concurrent requests share one model call, ``--batch-wait-ms``), and with Grad-CAM (one at a
  time); and 32 clients with batching switched off (``--max-batch 1``) as the baseline;
- 64 concurrent clients sending a mix of good and bad uploads (text, truncated, empty): the
  server must answer every bad one with a 4xx and never a 5xx.

Throughput is requests per second over the whole round; latency p50/p95 per request. Each
configuration runs ``--rounds`` times (mean reported). The aim: ≥ 1.5× the 1-client throughput
at 32 clients on this CPU.

Usage (from the repository root)::

    python benchmarks/service.py            # ~6 min on 2 CPU cores
    python benchmarks/service.py --quick    # smoke test, writes service_quick.*

Writes ``<out>/service[_TAG].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from common import machine_info, write_atomic, write_json  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
DEFAULT_WORK = Path("/tmp/medlens-bench-service")
AIM_SPEEDUP = 1.5


def _say(text: str) -> None:
    print(text, flush=True)


def build_run(work: Path, backbone: str = "vgg16", size: int = 224) -> Path:
    """A finished run (one short epoch on phantoms; the weights do not matter for speed)."""
    from medlens.pipelines.config import load_config
    from medlens.pipelines.phantoms import write_phantoms
    from medlens.pipelines.train import train

    run = work / f"{backbone}-{size}"
    if (run / "model.keras").is_file() and (run / "run.json").is_file():
        return run
    phantoms = work / f"phantoms-{size}"
    if not (phantoms / "manifest.csv").is_file():
        write_phantoms(phantoms, count=48, size=size, seed=1)
    cfg = load_config({
        "name": f"service-bench-{backbone}", "seed": 0,
        "data": {"kind": "csv", "root": str(phantoms), "manifest": "manifest.csv", "image_size": [size, size],
                 "class_names": ["no_lesion", "lesion"], "val_fraction": 0.25, "test_fraction": 0.25,
                 "batch_size": 8, "augment": "none"},
        "model": {"backbone": backbone, "weights": "none"},
        "train": {"phase1": {"epochs": 1, "learning_rate": 0.001}, "phase2": {"epochs": 0}},
    })
    train(cfg, run, overwrite=True)
    return run


def model_ceiling(run: Path, sizes: tuple[int, ...] = (1, 2, 4, 8, 16, 32)) -> dict[str, float]:
    """Images/s of the model call alone (``Predictor.predict_pixels``) by batch size: what batching can win."""
    import numpy as np

    from medlens.pipelines.predictors import load_predictor

    predictor = load_predictor(run)
    side = int(predictor.image_size[0])
    images = [np.random.default_rng(k).random((side, side, 1)).astype(np.float32) for k in range(max(sizes))]
    out = {}
    for n in sizes:
        predictor.predict_pixels(images[:n])
        repeats = max(2, 16 // n)
        started = time.perf_counter()
        for _ in range(repeats):
            predictor.predict_pixels(images[:n])
        out[str(n)] = round(n * repeats / (time.perf_counter() - started), 2)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, *options: str):
    import httpx

    port = _free_port()
    log = open(run.parent / f"serve-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([sys.executable, "-m", "medlens.app.cli", "serve", str(run), "--port", str(port),
                                "--audit-log", os.devnull, *options], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"server did not start; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _round(url: str, jobs: list[tuple[str, bytes]], clients: int, query: str) -> dict[str, Any]:
    import httpx

    local = threading.local()

    def one(job: tuple[str, bytes]) -> tuple[int, float]:
        if not hasattr(local, "client"):  # one keep-alive connection per client, as a gateway keeps it
            local.client = httpx.Client(timeout=600)
        started = time.perf_counter()
        reply = local.client.post(f"{url}/predict?{query}", files={"file": job})
        return reply.status_code, time.perf_counter() - started

    # warm-up: every compiled batch size the round can use
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, jobs[: max(clients, 2)]))
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(one, jobs))
    seconds = time.perf_counter() - started
    latencies = sorted(t for _, t in results)
    statuses = [s for s, _ in results]
    return {"requests": len(jobs), "clients": clients, "seconds": round(seconds, 3),
            "requests_per_s": round(len(jobs) / seconds, 3),
            "p50_s": round(statistics.median(latencies), 4),
            "p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 4),
            "server_errors": sum(1 for s in statuses if s >= 500), "ok": sum(1 for s in statuses if s == 200)}


def _mean(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "requests_per_s", "p50_s", "p95_s")
    out = {k: round(statistics.fmean(r[k] for r in rounds), 4) for k in keys}
    out.update(requests=rounds[0]["requests"], clients=rounds[0]["clients"], rounds=len(rounds),
               requests_per_s_each=[r["requests_per_s"] for r in rounds],
               server_errors=sum(r["server_errors"] for r in rounds), ok=sum(r["ok"] for r in rounds))
    return out


def mixed_load(url: str, good: list[tuple[str, bytes]], clients: int) -> dict[str, Any]:
    import httpx

    bad = [("text.png", b"<html>not an image</html>", 415), ("cut.png", good[0][1][:300], 415),
           ("empty.png", b"", 400)]
    jobs = [(n, c, 200) for n, c in good] + [b for b in bad for _ in range(max(1, len(good) // 3))]

    def one(job: tuple[str, bytes, int]) -> tuple[int, int]:
        return job[2], httpx.post(f"{url}/predict?explain=none", files={"file": job[:2]}, timeout=600).status_code

    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(one, jobs))
    return {"requests": len(jobs), "clients": clients, "server_errors": sum(1 for _, s in answers if s >= 500),
            "expected_status": sum(1 for want, got in answers if want == got)}


def _images(size: int, count: int = 16) -> list[tuple[str, bytes]]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    images = []
    for k in range(count):
        picture = (rng.random((size, size)) * 255).astype(np.uint8)
        ok, encoded = cv2.imencode(".png", cv2.GaussianBlur(picture, (0, 0), 3))
        images.append((f"image-{k}.png", encoded.tobytes()))
    return images


def bench_model(work: Path, backbone: str, size: int, requests: int, rounds: int, gradcam: bool) -> dict[str, Any]:
    run = build_run(work, backbone, size)
    images = _images(size)
    jobs = [images[k % len(images)] for k in range(requests)]
    cam_jobs = jobs[: max(8, requests // 3)]
    result: dict[str, Any] = {"model": f"{backbone} {size} px", "model_call_images_per_s": model_ceiling(run),
                              "configs": {}}
    _say(f"{backbone} {size} px, model call alone (images/s by batch size): {result['model_call_images_per_s']}")
    configs = result["configs"]
    plan = [("plain, 1 client", 1, "explain=none", jobs), ("plain, 32 clients (batched)", 32, "explain=none", jobs)]
    if gradcam:
        plan += [("Grad-CAM, 1 client", 1, "explain=gradcam", cam_jobs),
                 ("Grad-CAM, 32 clients", 32, "explain=gradcam", cam_jobs)]
    with serving(run, "--explain", "none") as url:
        for name, clients, query, batch in plan:
            configs[name] = _mean([_round(url, batch, clients, query) for _ in range(rounds)])
            _say(f"{backbone}: {name}: {configs[name]['requests_per_s']:.2f} req/s, p50 {configs[name]['p50_s']:.3f} s, "
                 f"p95 {configs[name]['p95_s']:.3f} s")
        import httpx

        result["batching_counters"] = httpx.get(url + "/health").json().get("batching")
        if gradcam:
            result["mixed_64"] = mixed_load(url, jobs, 64)
            _say(f"64 clients, good and bad uploads: {result['mixed_64']['server_errors']} server errors, "
                 f"{result['mixed_64']['expected_status']}/{result['mixed_64']['requests']} expected statuses")
    with serving(run, "--explain", "none", "--max-batch", "1", "--batch-wait-ms", "0") as url:
        name = "plain, 32 clients, batching off"
        configs[name] = _mean([_round(url, jobs, 32, "explain=none") for _ in range(rounds)])
        _say(f"{backbone}: {name}: {configs[name]['requests_per_s']:.2f} req/s")
    one = configs["plain, 1 client"]["requests_per_s"]
    result["speedup_at_32"] = round(configs["plain, 32 clients (batched)"]["requests_per_s"] / one, 3)
    result["speedup_over_unbatched_32"] = round(configs["plain, 32 clients (batched)"]["requests_per_s"]
                                                / configs["plain, 32 clients, batching off"]["requests_per_s"], 3)
    if gradcam:
        result["gradcam_speedup_at_32"] = round(configs["Grad-CAM, 32 clients"]["requests_per_s"]
                                                / configs["Grad-CAM, 1 client"]["requests_per_s"], 3)
    return result


def run_benchmark(work: Path, requests: int, rounds: int) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_info(), "requests": requests, "rounds": rounds,
                              "aim_speedup_at_32": AIM_SPEEDUP, "models": {}}
    report["models"]["vgg16-224"] = bench_model(work, "vgg16", 224, requests, rounds, gradcam=True)
    report["models"]["small_cnn-64"] = bench_model(work, "small_cnn", 64, requests * 3, rounds, gradcam=False)
    vgg = report["models"]["vgg16-224"]
    report["aim_met"] = vgg["speedup_at_32"] >= AIM_SPEEDUP and vgg["mixed_64"]["server_errors"] == 0
    return report


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    lines = [
        "# medlens serve: dynamic batching", "",
        f"`medlens serve` on loopback, clients in the same machine, {machine.get('cpu_count')} CPU cores "
        f"({machine.get('cpu_model', machine.get('processor'))}), Keras {machine['keras']} on {machine['keras_backend']}; "
        f"mean of {report['rounds']} rounds per row.", "",
    ]
    for model in report["models"].values():
        ceiling = ", ".join(f"{n}: {v}" for n, v in model["model_call_images_per_s"].items())
        lines += [f"## {model['model']}", "", f"Model call alone, images/s by batch size: {ceiling}.", "",
                  "| configuration | clients | requests | requests/s | p50 latency (s) | p95 latency (s) | 5xx |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, c in model["configs"].items():
            lines.append(f"| {name} | {c['clients']} | {c['requests']} | {c['requests_per_s']:.2f} | {c['p50_s']:.3f} "
                         f"| {c['p95_s']:.3f} | {c['server_errors']} |")
        lines += ["", f"- 32 clients / 1 client (no explanations): **{model['speedup_at_32']:.2f}×**; batched / "
                      f"batching off at 32 clients: {model['speedup_over_unbatched_32']:.2f}×; "
                      f"batcher counters: {model.get('batching_counters')}."]
        if "gradcam_speedup_at_32" in model:
            lines.append(f"- With Grad-CAM (one request at a time by design): {model['gradcam_speedup_at_32']:.2f}× "
                         "at 32 clients.")
        if "mixed_64" in model:
            mixed = model["mixed_64"]
            lines.append(f"- 64 concurrent clients, good and bad uploads mixed: {mixed['server_errors']} server errors, "
                         f"{mixed['expected_status']}/{mixed['requests']} answered with the expected status.")
        lines.append("")
    vgg = report["models"]["vgg16-224"]
    lines.append(f"Aim (VGG16-224, ≥ {report['aim_speedup_at_32']}× throughput at 32 clients, 0 server errors): "
                 f"**{'met' if report['aim_met'] else 'not met'}** ({vgg['speedup_at_32']:.2f}×).")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--requests", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a smoke test: 32 requests, 1 round")
    parser.add_argument("--tag", default="")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.rounds, args.tag = 32, 1, args.tag or "quick"
    args.work.mkdir(parents=True, exist_ok=True)
    report = run_benchmark(args.work, args.requests, args.rounds)
    stem = "service" + (f"_{args.tag}" if args.tag else "")
    write_json(args.out / f"{stem}.json", report)
    write_atomic(args.out / f"{stem}.md", markdown(report))
    _say(f"wrote {args.out / stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
