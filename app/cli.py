"""The ``medlens`` command line.

Every error a user can cause ends in one line on stderr (``medlens: error: …``)
and exit status 2; ``--debug`` shows the traceback instead. Keras and
TensorFlow are imported only by the commands that need them, so ``--help``
is instant.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens.app.cli_batch import (
    add_deidentify_arguments,
    add_explain_arguments,
    add_report_arguments,
    add_shard_argument,
    cmd_explain,
    cmd_merge,
    cmd_predict,
    cmd_report,
    cmd_sanity,
    cmd_segment,
)
from medlens.app.cli_common import (
    NO_BACKEND,
    default_run_dir,
    fit_verbosity,
    print_metrics,
    quiet_backend,
    training_callbacks,
)
from medlens.app.pacs_cli import (
    add_pacs_arguments,
    add_pacs_command,
)
from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.explain.methods import METHODS, SEGMENTATION_METHODS

__all__ = ["main", "build_parser"]

log = logging.getLogger("medlens")


# Commands that never start a deep-learning backend (they stay fast).

_MATCH_FIELD = ("predict each image on the part of it that matches the run's training images (by pixel spacing, else "
                "the fundus field of view: cropped or padded), explanation maps put back at the image's own size")

def cmd_train(args: argparse.Namespace) -> int:
    quiet_backend()
    from medlens.pipelines.config import load_config
    from medlens.pipelines.errors import ConfigError
    from medlens.pipelines.train import train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume RUN continues a run with its own config.yaml; give no CONFIG or overrides")
        print(f"resuming {args.resume}")
        result = train(None, args.resume, resume=True, verbose=fit_verbosity(args),
                       callbacks=training_callbacks(args))
        _print_train_result(result)
        return 0
    if not args.config:
        raise ConfigError("give a preset name or a YAML config (see `medlens presets`), or --resume RUN")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else default_run_dir(cfg.name)
    from medlens.pipelines.tasks import task_named

    print(f"training {cfg.name}: {task_named(cfg.task).describe_model(cfg)} → {out}")
    result = train(cfg, out, overwrite=args.overwrite, verbose=fit_verbosity(args),
                   callbacks=training_callbacks(args))
    _print_train_result(result)
    return 0


def _print_train_result(result: Any) -> None:
    if not result.metrics:  # a multi_worker worker that is not the chief
        print(f"worker finished {result.epochs_run} epochs in {result.seconds:.0f} s; "
              f"the chief evaluates and writes the run ({result.run_dir} on the chief)")
        return
    print_metrics(result.metrics, "test")
    print(f"run directory: {result.run_dir}  ({result.epochs_run} epochs, {result.seconds:.0f} s)")


def _set_evaluate_keys(run: Any, task: Any, overrides: list[str]) -> None:
    """Change ``evaluate.*`` keys of a run's ``config.yaml`` (validated first), before it is evaluated again.

    Only how a classifier run is evaluated may change (threshold method, target sensitivity, referable
    grade, grade cuts): the model, its data and its training stay what they were.
    """
    from medlens.pipelines.config import config_to_dict, load_config

    wrong = [item for item in overrides if not item.split("=", 1)[0].strip().startswith("evaluate.") or "=" not in item]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: evaluate changes only evaluate.KEY=VALUE settings of a run "
                          "(train a new run to change anything else)")
    if task.evaluate_settings_fixed:
        raise ConfigError(f"{run.root}: {task.evaluate_settings_fixed}; evaluate it as it is, or train a new run")
    config = run.read_config()
    cfg = load_config(copy.deepcopy(config), list(overrides))  # the run's other sections stay as written
    config["evaluate"] = config_to_dict(cfg)["evaluate"]
    run.write_config(config)
    print(f"{run.config_path}: " + ", ".join(item.strip() for item in overrides))


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir
    from medlens.pipelines.tasks import task_of_run

    run = RunDir(args.run).require()
    task = task_of_run(run.read_state(), run.root)
    if args.overrides:
        _set_evaluate_keys(run, task, args.overrides)
    quiet_backend()
    for heading, metrics in task.evaluate(args.run, args.split):
        print_metrics(metrics, heading)
    per_image = run.root / f"per_image_{args.split}.csv"
    print(f"metrics: {run.metrics_path}; " + (f"per image: {per_image}" if per_image.is_file()
                                              else f"plots: {run.root / 'plots'}"))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir

    RunDir(args.run).require()
    quiet_backend()
    import uvicorn

    from medlens.app.service import ServiceSettings, create_app
    from medlens.pipelines.explain import parse_methods

    methods = () if args.explain.lower() == "none" else parse_methods(args.explain)
    token = _service_token(args.token_file)
    settings = ServiceSettings(max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels, explain=methods,
                               lime_samples=args.lime_samples, token=token, batch_wait_ms=args.batch_wait_ms,
                               max_batch=args.max_batch)
    audit = logging.getLogger("medlens.audit")
    audit.setLevel(logging.INFO)
    audit.propagate = False
    handler = logging.FileHandler(args.audit_log, encoding="utf-8") if args.audit_log else logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    audit.addHandler(handler)
    app = create_app(args.run, settings)
    print(f"serving {args.run} on http://{args.host}:{args.port}  (upload page /, API docs /docs)"
          + ("; bearer token required" if token else "; no authentication (loopback or behind a proxy only)"))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _service_token(token_file: str | None) -> str | None:
    """The bearer token: from ``--token-file`` (first line), else ``MEDLENS_TOKEN``, else none."""
    if token_file:
        try:
            token = Path(token_file).read_text(encoding="utf-8").strip().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc})") from None
        if not token or not token[0].strip():
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token[0].strip()
    return os.environ.get("MEDLENS_TOKEN", "").strip() or None


def cmd_weights_import(args: argparse.Namespace) -> int:
    quiet_backend()
    from medlens.models.backbones import import_weights

    destination = import_weights(args.file, args.arch, overwrite=args.overwrite)
    print(f"installed {args.file} as the ImageNet weights of {args.arch}: {destination}")
    return 0


def cmd_weights_export(args: argparse.Namespace) -> int:
    quiet_backend()
    from medlens.pipelines.weights_export import export_backbone

    done = export_backbone(args.run, args.out, overwrite=args.overwrite)
    size = "x".join(str(v) for v in done["image_size"] or []) or "?"
    print(f"wrote the {done['backbone']} backbone of {args.run} ({done['task']}, trained at {size} px) to "
          f"{done['file']} (sha256 {done['sha256'][:16]}...); fine-tune it with "
          f"model.backbone={done['backbone']} model.weights={done['file']}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from medlens.pipelines.config import list_presets, load_config
    from medlens.pipelines.tasks import task_named

    for name in list_presets():
        cfg = load_config(name)
        task = task_named(cfg.task)
        source = getattr(cfg.data, "npz", "") or cfg.data.root
        print(f"{name:22s} {task.describe_model(cfg):40s} {task.describe_target(cfg):13s} {source}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    quiet_backend()
    from medlens.app.demo import run_demo

    run_demo(Path(args.out), overwrite=args.overwrite, count=args.count, echo=print, fit_verbose=fit_verbosity(args),
             progress=lambda: training_callbacks(args))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medlens",
        description="Transfer learning, evaluation and batch prediction for medical images.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "train", help="train a classifier or segmentation model from a preset or YAML config",
        epilog="Several devices: train.distribution=mirrored (this machine's GPUs, or train.devices logical "
               "CPUs); several machines: train.distribution=multi_worker, the same command on every worker, "
               "each with TF_CONFIG (see docs/scale-out.md).")
    p.add_argument("config", nargs="?", help="preset name (see `medlens presets`) or a YAML file")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.phase1.epochs=3")
    p.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last finished epoch")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a run on a split; updates metrics.json and plots")
    p.add_argument("run", help="run directory")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("overrides", nargs="*", metavar="evaluate.KEY=VALUE",
                   help="change how the run is evaluated, saved to its config.yaml first "
                        "(classifier tasks; e.g. evaluate.grade_cuts=qwk, evaluate.threshold=sensitivity)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="predict images, folders, DICOM or NIfTI files with a run")
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", help="output folder (default RUN/predictions/TIMESTAMP)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--resume", action="store_true",
                   help="keep results for inputs unchanged since the last run into --out (by content hash)")
    p.add_argument("--explain", metavar="METHODS",
                   help=f"explain every prediction: {', '.join(METHODS)} (comma-separated)")
    p.add_argument("--match-scale", action="store_true", help=_MATCH_FIELD)
    add_explain_arguments(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("sanity", help="check that explanation maps depend on the model: cascading weight "
                                      "randomisation (writes RUN/explanation_checks.json)")
    p.add_argument("run", help="a classifier run directory")
    p.add_argument("inputs", nargs="+", metavar="IMAGE", help="image files or folders to explain")
    p.add_argument("--methods", default="gradcam,gradcam++,gradient,smoothgrad,ig",
                   help="methods to check (comma-separated; any explanation method, lime and kernelshap included)")
    p.add_argument("--limit", type=int, default=16, help="at most this many images")
    p.add_argument("--seed", type=int, default=0, help="seed of the re-drawn weights")
    p.add_argument("--fail-at", type=float, default=0.5,
                   help="a method fails when its mean Spearman correlation after full randomisation is at least this")
    p.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients: points of the path integral")
    p.add_argument("--data", action="store_true",
                   help="also the data-randomisation check: train the run's recipe on shuffled labels "
                        "(once, into RUN/sanity/shuffled-labels) and compare its maps")
    p.add_argument("--epochs", type=int, default=5, help="--data: at most this many epochs per phase")
    p.add_argument("--retrain", action="store_true", help="--data: train the shuffled-label model again")
    p.set_defaults(func=cmd_sanity)

    p = sub.add_parser("explain", help="predict and explain images (Grad-CAM, gradients, occlusion, LIME, "
                                       "Kernel SHAP, ...)")
    p.add_argument("run", help="run directory")
    p.add_argument("inputs", nargs="*", metavar="IMAGE", help="image files or folders")
    p.add_argument("--method", default="gradcam",
                   help=f"{', '.join(METHODS)} (one, or several comma-separated)")
    p.add_argument("--class", dest="class_name", metavar="NAME", help="explain this class instead of the predicted one")
    p.add_argument("--out", help="output folder (default RUN/explanations/TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="keep results for inputs unchanged since the last run into --out (by content hash)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--sanity", action="store_true",
                   help="then check the methods' maps against cascading weight randomisation (see `medlens sanity`)")
    p.add_argument("--sanity-limit", type=int, default=16, help="--sanity: at most this many images")
    p.add_argument("--fail-at", type=float, default=0.5,
                   help="--sanity: a method fails when its Spearman correlation after full randomisation is at least this")
    p.add_argument("--match-scale", action="store_true", help=_MATCH_FIELD)
    add_explain_arguments(p)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("segment", help="segment images, folders, DICOM or NIfTI files with a segmentation run")
    p.add_argument("run", help="segmentation run directory")
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files or folders")
    p.add_argument("--out", help="output folder (default RUN/segmentations/TIMESTAMP)")
    p.add_argument("--resume", action="store_true",
                   help="keep results for inputs unchanged since the last run into --out (by content hash)")
    p.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    p.add_argument("--explain", action="store_true", help="also write a Seg-Grad-CAM overlay of each mask")
    p.add_argument("--method", metavar="METHODS",
                   help="explain each predicted mask with these (implies --explain): "
                        f"{', '.join(SEGMENTATION_METHODS)} (comma-separated)")
    p.add_argument("--samples", type=int, help="LIME, Kernel SHAP: perturbed samples per image (default 1000)")
    p.add_argument("--threshold", type=float, help="probability threshold (default: the run's)")
    p.add_argument("--match-scale", action="store_true",
                   help="resample inputs to the run's training scale (pixel spacing, else fundus FOV diameter) "
                        "and the outputs back")
    p.add_argument("--probability-volumes", action="store_true",
                   help="for NIfTI/DICOM volumes, also write the foreground probability as a float NIfTI volume")
    add_pacs_arguments(p)
    add_deidentify_arguments(p)
    add_shard_argument(p)
    add_report_arguments(p)
    p.set_defaults(func=cmd_segment)

    add_pacs_command(sub)

    p = sub.add_parser("merge", help="join the shard-I-of-N folders of a sharded predict/explain/segment")
    p.add_argument("out", help="the --out folder the shards wrote into")
    p.add_argument("--allow-missing", action="store_true", help="merge the shards that are there; exit 1")
    add_report_arguments(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("report", help="one HTML page of cases, heatmaps and segmentations for clinicians")
    p.add_argument("folder", help="output folder of medlens predict/explain or segment")
    p.add_argument("--segmentation", help="a medlens segment output folder for the same images")
    p.add_argument("--truth", help="CSV with path and class_name (or label) columns: shows ground truth")
    p.add_argument("--out", help="HTML file inside FOLDER (default FOLDER/report.html)")
    p.add_argument("--margin", type=float, default=0.1, help="flag binary cases this close to the threshold")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("serve", help="serve a run over HTTP: POST /predict or /segment, an upload page")
    p.add_argument("run", help="run directory")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--explain", default="gradcam", help="default methods for /predict, or none")
    p.add_argument("--max-upload-mb", type=float, default=32.0, help="largest accepted upload")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest accepted image (all frames)")
    p.add_argument("--lime-samples", type=int, default=300, help="LIME samples per explanation")
    p.add_argument("--token-file", help="require Authorization: Bearer TOKEN (the file's first line; "
                                        "or set MEDLENS_TOKEN)")
    p.add_argument("--audit-log", help="append one JSON line per request to this file (default stderr)")
    p.add_argument("--batch-wait-ms", type=float, default=20.0,
                   help="/predict without explanations: wait this long to batch concurrent requests")
    p.add_argument("--max-batch", type=int, default=32, help="most images in one batched model call")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("weights", help="manage backbone weights for offline sites")
    wsub = p.add_subparsers(dest="weights_command", required=True, metavar="ACTION")
    w = wsub.add_parser("import", help="install a downloaded ImageNet weights file where Keras looks for it")
    w.add_argument("file", help="e.g. vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    w.add_argument("--arch", required=True, help="vgg16, vgg19, resnet50, resnet50v2 or densenet121")
    w.add_argument("--overwrite", action="store_true", help="replace a different file already installed")
    w.set_defaults(func=cmd_weights_import)
    w = wsub.add_parser("export", help="write a trained run's backbone as a .weights.h5 file, to fine-tune "
                                       "elsewhere with model.weights=FILE")
    w.add_argument("run", help="a finished classification run directory")
    w.add_argument("--out", required=True, help="the weights file to write (name ending in .weights.h5)")
    w.add_argument("--overwrite", action="store_true", help="replace an existing file")
    w.set_defaults(func=cmd_weights_export)

    p = sub.add_parser("presets", help="list the presets shipped with medlens")
    p.set_defaults(func=cmd_presets)

    p = sub.add_parser("demo", help="offline demo on synthetic phantoms: train, evaluate, predict")
    p.add_argument("--out", default="medlens-demo", help="output folder (default ./medlens-demo)")
    p.add_argument("--count", type=int, default=320, help="number of training phantoms")
    p.add_argument("--overwrite", action="store_true", help="replace an existing demo folder")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    # Overrides may come before or after options (`train CFG --out RUN a.b=1`, `evaluate RUN --split val
    # evaluate.k=v`), so collect strays.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if (getattr(args, "command", None) in ("train", "evaluate")
                and all("=" in e and not e.startswith("-") for e in extra)):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command not in NO_BACKEND and not args.debug:
            quiet_backend()  # first, before any command's own imports reach Keras (--debug shows it all)
        return int(args.func(args) or 0)
    except MedlensError as exc:
        if args.debug:
            raise
        print(f"medlens: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medlens: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
