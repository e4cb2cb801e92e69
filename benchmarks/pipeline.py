#!/usr/bin/env python
"""The training input pipeline alone, against the model's train step.

Does the input pipeline keep the model fed? Two numbers per setting, in images/s:

* **pipeline**: the training batches of the ``xray-pneumonia-224`` preset (Kermany chest X-rays,
  JPEG, 224 px) as ``model.fit`` consumes them — read → decode → resize → augment → preprocess, through
  medlens's own ``build_sequences`` and Keras's ``PyDataset`` workers — timed by fitting a model that
  costs next to nothing (global average pooling → one sigmoid; its own step is measured and reported).
  Grid: augmentation ``none`` | ``xray``; ``data.cache`` off | on (epoch 1 fills it, epoch 2 is timed);
  ``train.workers`` 1…N as threads or as processes (``train.use_multiprocessing``).
* **train step**: ``train_on_batch`` of the preset's models at 224 px on one in-memory batch
  (small_cnn, VGG16 and ResNet50 with their phase-2 layers trainable, and VGG16 end to end), median
  of several steps after a warm-up.

The pipeline keeps up when its images/s are at least the step's. On a GPU (e.g. an H200,
``KERAS_BACKEND=jax``, ``train.mixed_precision=mixed_bfloat16``) the step is far faster than on this
CPU; without one, the GPU rows say "not measured: no GPU".

Results: ``<out>/pipeline.json`` and ``<out>/pipeline.md``.

Usage (from the repository root)::

    python benchmarks/pipeline.py                    # ~10 min on 2 cores
    python benchmarks/pipeline.py --workers 1 2 4 8 16 --images 1024
    python benchmarks/pipeline.py --quick            # smoke test
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
from common import machine_info, write_atomic, write_json  # noqa: E402

SCRIPT_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = SCRIPT_DIR / "results"
PRESET = "xray-pneumonia-224"
STEP_MODELS = [  # (label, backbone, phase-2 unfreeze_blocks; -1 = every layer trainable)
    ("small_cnn", "small_cnn", -1),
    ("VGG16 (block5 trainable)", "vgg16", 1),
    ("VGG16 (end to end)", "vgg16", -1),
    ("ResNet50 (stage 5 trainable)", "resnet50", 1),
]


def _say(message: str) -> None:
    print(message, flush=True)


def _config(overrides: list[str]) -> Any:
    from medlens.pipelines.config import load_config

    return load_config(PRESET, ["model.weights=none", *overrides])


def _train_source(count: int) -> tuple[Any, Any]:
    """The preset's training images (the first ``count``) and its dataset."""
    from medlens.pipelines.tasks import task_named

    cfg = _config([])
    dataset = task_named(cfg.task).load_data(cfg.data, seed=cfg.seed)
    source = dataset.splits["train"]
    return source.subset(np.arange(min(count, len(source)))), dataset


def _probe_model() -> Any:
    """A model whose step costs next to nothing: what ``fit`` then times is the input pipeline."""
    import keras

    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model


class _EpochTimes:
    def __init__(self) -> None:
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self, owner: _EpochTimes) -> None:
                super().__init__()
                self.owner = owner

            def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
                self.owner.started = time.perf_counter()

            def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
                self.owner.seconds.append(time.perf_counter() - self.owner.started)

        self.seconds: list[float] = []
        self.started = 0.0
        self.callback = Timer(self)


def pipeline_rate(source: Any, dataset: Any, augment: str, cache: bool, workers: int, processes: bool,
                  batch_size: int, repeats: int) -> dict[str, Any]:
    """Images/s of the training batches as ``fit`` consumes them (median of ``repeats`` timed epochs)."""
    from medlens.models.backbones import preprocess_function
    from medlens.pipelines.data import Dataset
    from medlens.pipelines.train import build_sequences
    from medlens.pipelines.training.callbacks import EpochSync

    cfg = _config([f"data.augment={augment}", f"data.cache={str(cache).lower()}", f"data.batch_size={batch_size}",
                   f"train.workers={workers}", f"train.use_multiprocessing={str(processes).lower()}"])
    subset = Dataset(splits={"train": source}, class_names=dataset.class_names, report={})
    sequence = build_sequences(cfg, subset, preprocess_function("vgg16"))["train"]
    timer = _EpochTimes()
    model = _probe_model()
    # One untimed epoch: compilation, worker start-up and, with the cache on, filling it.
    epochs = 1 + repeats
    model.fit(sequence, epochs=epochs, verbose=0, shuffle=False, callbacks=[EpochSync(sequence), timer.callback])
    timed = timer.seconds[1:]
    seconds = statistics.median(timed)
    return {"augment": augment, "cache": cache, "workers": workers, "kind": "processes" if processes else "threads",
            "images": len(source), "first_epoch_s": round(timer.seconds[0], 2), "epoch_s": round(seconds, 3),
            "images_per_s": round(len(source) / seconds, 1)}


def probe_step_rate(batch_size: int) -> float:
    """Images/s of the probe model's own step (so its cost can be seen to be negligible)."""
    model = _probe_model()
    x = np.random.default_rng(0).uniform(0, 255, (batch_size, 224, 224, 3)).astype("float32")
    y = np.zeros((batch_size, 1), "float32")
    return batch_size / _median_step(model, x, y, 10)


def _median_step(model: Any, x: np.ndarray, y: np.ndarray, steps: int) -> float:
    model.train_on_batch(x, y)  # compile
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def step_rate(backbone: str, unfreeze_blocks: int, batch_size: int, steps: int) -> dict[str, Any]:
    """Images/s of one train step of the preset's model at 224 px (random weights, phase-2 layers trainable)."""
    from medlens.pipelines.tasks import task_named
    from medlens.pipelines.training.phases import build_optimizer, set_trainable

    cfg = _config([f"model.backbone={backbone}"])
    model = task_named(cfg.task).build_model(cfg, 2)
    set_trainable(model, backbone, unfreeze_blocks)
    model.compile(optimizer=build_optimizer("adam", 1e-5), loss="binary_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.uniform(-120, 150, (batch_size, 224, 224, 3)).astype("float32")
    y = rng.integers(0, 2, (batch_size, 1)).astype("float32")
    seconds = _median_step(model, x, y, steps)
    return {"trainable_weights": len(model.trainable_weights), "step_s": round(seconds, 3),
            "images_per_s": round(batch_size / seconds, 1)}


def run_benchmark(workers: list[int], images: int, batch_size: int, repeats: int, steps: int,
                  augments: list[str]) -> dict[str, Any]:
    import keras

    source, dataset = _train_source(images)
    _say(f"{len(source)} training images of {PRESET}, batches of {batch_size}; Keras backend {keras.backend.backend()}")
    rows = []
    for augment in augments:
        for cache in (False, True):
            for processes in (False, True):
                for count in workers:
                    row = pipeline_rate(source, dataset, augment, cache, count, processes, batch_size, repeats)
                    rows.append(row)
                    _say(f"  augment={augment:5} cache={'on ' if cache else 'off'} {count:2} {row['kind']:9} "
                         f"{row['images_per_s']:7.1f} images/s (first epoch {row['first_epoch_s']} s)")
    probe = probe_step_rate(batch_size)
    _say(f"  probe model's own step: {probe:.0f} images/s")
    step_rows = []
    for label, backbone, blocks in STEP_MODELS:
        row = {"model": label, "backbone": backbone, "unfreeze_blocks": blocks,
               **step_rate(backbone, blocks, batch_size, steps)}
        step_rows.append(row)
        _say(f"  train step {label}: {row['images_per_s']} images/s ({row['step_s']} s a batch)")
    return {"benchmark": "pipeline", "preset": PRESET, "image_size": 224, "batch_size": batch_size,
            "images": len(source), "repeats": repeats, "machine": machine_info(), "pipeline": rows,
            "probe_step_images_per_s": round(probe, 1), "train_step": step_rows,
            "advice": advice(rows, step_rows)}


def _best(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    chosen = [r for r in rows if all(r[k] == v for k, v in match.items())]
    return max(chosen, key=lambda r: r["images_per_s"])


def advice(rows: list[dict[str, Any]], steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Which loader setting is fastest per augmentation, and whether it keeps up with each step."""
    found: dict[str, Any] = {}
    for augment in sorted({r["augment"] for r in rows}):
        serial = next(r for r in rows if r["augment"] == augment and r["workers"] == 1 and r["kind"] == "threads"
                      and not r["cache"])
        best = _best(rows, augment=augment)
        found[augment] = {
            "best": {k: best[k] for k in ("cache", "workers", "kind", "images_per_s")},
            "speedup_over_one_thread_uncached": round(best["images_per_s"] / serial["images_per_s"], 2),
            "keeps_up_with": [s["model"] for s in steps if best["images_per_s"] >= s["images_per_s"]],
        }
    return found


def _loader(workers: int, kind: str) -> str:
    if workers == 1:
        return "1 thread (in the training process)" if kind == "threads" else "1 worker process"
    return f"{workers} {kind}"


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [
        "# Training input pipeline vs train step (224 px)",
        "",
        f"`{report['preset']}` training images ({report['images']}, JPEG 224 px), batches of {report['batch_size']}, "
        f"median of {report['repeats']} timed epochs after one untimed; Keras {m['keras']} on {m['keras_backend']}, "
        f"{m.get('cpu_model', m['processor'])} ({m['cpu_affinity']} cores usable).",
        "",
        "## Pipeline (images/s as `fit` consumes them)",
        "",
        "| Augmentation | Cache | Kind | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}"
                                                   for w in sorted({r['workers'] for r in report['pipeline']})) + " |",
        "|---|---|---|" + "---|" * len({r["workers"] for r in report["pipeline"]}),
    ]
    keys = sorted({(r["augment"], r["cache"], r["kind"]) for r in report["pipeline"]},
                  key=lambda k: (k[0] != "none", k[1], k[2]))
    for augment, cache, kind in keys:
        cells = [f"{r['images_per_s']:.0f}" for r in sorted(report["pipeline"], key=lambda r: r["workers"])
                 if (r["augment"], r["cache"], r["kind"]) == (augment, cache, kind)]
        lines.append(f"| {augment} | {'on' if cache else 'off'} | {kind} | " + " | ".join(cells) + " |")
    lines += ["", f"The probe model's own step runs at {report['probe_step_images_per_s']:.0f} images/s, so the "
              "figures above are the pipeline's.", "", "## Train step (images/s, this machine)", "",
              "| Model | Trainable weights | s per batch | images/s |", "|---|---|---|---|"]
    for s in report["train_step"]:
        lines.append(f"| {s['model']} | {s['trainable_weights']} | {s['step_s']} | {s['images_per_s']} |")
    gpus = m.get("gpus") or []
    lines += ["", "GPU rows (H200, JAX, mixed_bfloat16): " + ("see the train-step table above (measured on "
              f"{', '.join(gpus)})." if gpus else "not measured: no GPU."), "", "## Which setting to use", ""]
    for augment, found in report["advice"].items():
        best = found["best"]
        lines.append(f"- augmentation `{augment}`: fastest is {_loader(best['workers'], best['kind'])}, cache "
                     f"{'on' if best['cache'] else 'off'} ({best['images_per_s']:.0f} images/s, "
                     f"{found['speedup_over_one_thread_uncached']}× one uncached thread); keeps up with: "
                     f"{', '.join(found['keeps_up_with']) or 'none of the steps'}.")
    lines += ["", "Why processes trail threads here: Keras starts a new pool of worker processes every epoch, so "
              "each process's decoded-image cache is lost at the epoch's end (the cache buys processes nothing), "
              "and every batch (32 × 224 × 224 × 3 float32, 19 MB) is pickled back to the training process. "
              "Decoding, resizing and most augmentations run in OpenCV, which releases the GIL, so threads "
              "scale with cores without either cost."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, 2, 4, cores}))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per setting (median)")
    parser.add_argument("--steps", type=int, default=4, help="timed train steps per model (median)")
    parser.add_argument("--augment", nargs="+", default=["none", "xray"])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 images, workers 1 2, 1 repeat")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.images, args.repeats, args.steps, args.batch_size = [1, 2], 64, 1, 1, 16
    report = run_benchmark(args.workers, args.images, args.batch_size, args.repeats, args.steps, args.augment)
    name = "pipeline_quick" if args.quick else "pipeline"
    write_json(args.out / f"{name}.json", report)
    write_atomic(args.out / f"{name}.md", markdown(report))
    _say(f"wrote {args.out / (name + '.json')} and {args.out / (name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
