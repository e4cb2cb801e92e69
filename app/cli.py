"""The ``medlens`` command line.

Every error a user can cause ends in one line on stderr (``medlens: error: …``)
and exit status 2; ``--debug`` shows the traceback instead. Keras and
TensorFlow are imported only by the commands that need them, so ``--help``
is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medlens.app.pacs_cli import (
    add_pacs_arguments,
    add_pacs_command,
    check_pacs_arguments,
    pull_inputs,
    push_outputs,
)
from medlens.pipelines.errors import ConfigError, MedlensError
from medlens.pipelines.methods import METHODS, SEGMENTATION_METHODS

__all__ = ["main", "build_parser"]

log = logging.getLogger("medlens")


# Commands that never start a deep-learning backend (they stay fast).
_NO_BACKEND = frozenset({"presets", "merge", "report", "pacs"})


def _quiet_backend() -> None:
    """Import Keras with TensorFlow's C++ start-up chatter kept off the user's terminal.

    TensorFlow 2.21 writes absl/CUDA notices straight to file descriptor 2, whatever
    ``TF_CPP_MIN_LOG_LEVEL`` says, so stderr is pointed at a temporary file during the
    import and replayed only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "keras" in sys.modules:
        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras

            if keras.backend.backend() == "tensorflow":
                # Device discovery (CUDA probing: "failed call to cuInit …") prints on first use, which
                # for the explanation gradients comes later, outside this redirect: do it now, inside.
                import tensorflow as tf

                tf.config.list_physical_devices()
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=None, file=sys.stderr)


def _fit_verbosity(args: argparse.Namespace) -> int:
    """Keras's own epoch lines only with --verbose; otherwise :func:`_training_callbacks` reports."""
    if not args.verbose:
        return 0
    return 1 if sys.stdout.isatty() else 2


def _training_callbacks(args: argparse.Namespace) -> list[Any]:
    if args.verbose:
        return []
    from medlens.app.progress import TrainingProgress

    return [TrainingProgress(lambda line: print(line, flush=True))]


def _default_run_dir(name: str) -> Path:
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _print_metrics(metrics: dict, header: str) -> None:
    keys = ("n", "dice", "iou", "qwk", "mae", "accuracy", "auc", "macro_auc", "micro_auc", "mean_average_precision", "sensitivity",
            "specificity", "precision", "f1", "ece", "threshold")
    # Then a multi-label evaluation's per-finding AUCs ("auc Effusion", ...), in its order.
    keys += tuple(k for k in metrics if k.startswith("auc "))
    parts = []
    for key in keys:
        value = metrics.get(key)
        if value is None:
            continue
        parts.append(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}")
    print(f"{header}: " + ", ".join(parts))


def cmd_train(args: argparse.Namespace) -> int:
    _quiet_backend()
    from medlens.pipelines.config import load_config
    from medlens.pipelines.errors import ConfigError
    from medlens.pipelines.train import train

    if args.resume:
        if args.config or args.overrides:
            raise ConfigError("--resume RUN continues a run with its own config.yaml; give no CONFIG or overrides")
        print(f"resuming {args.resume}")
        result = train(None, args.resume, resume=True, verbose=_fit_verbosity(args),
                       callbacks=_training_callbacks(args))
        _print_train_result(result)
        return 0
    if not args.config:
        raise ConfigError("give a preset name or a YAML config (see `medlens presets`), or --resume RUN")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out) if args.out else _default_run_dir(cfg.name)
    from medlens.pipelines.tasks import task_named

    print(f"training {cfg.name}: {task_named(cfg.task).describe_model(cfg)} → {out}")
    result = train(cfg, out, overwrite=args.overwrite, verbose=_fit_verbosity(args),
                   callbacks=_training_callbacks(args))
    _print_train_result(result)
    return 0


def _print_train_result(result: Any) -> None:
    if not result.metrics:  # a multi_worker worker that is not the chief
        print(f"worker finished {result.epochs_run} epochs in {result.seconds:.0f} s; "
              f"the chief evaluates and writes the run ({result.run_dir} on the chief)")
        return
    _print_metrics(result.metrics, "test")
    print(f"run directory: {result.run_dir}  ({result.epochs_run} epochs, {result.seconds:.0f} s)")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir
    from medlens.pipelines.tasks import task_of_run

    run = RunDir(args.run).require()
    _quiet_backend()
    for heading, metrics in task_of_run(run.read_state(), run.root).evaluate(args.run, args.split):
        _print_metrics(metrics, heading)
    per_image = run.root / f"per_image_{args.split}.csv"
    print(f"metrics: {run.metrics_path}; " + (f"per image: {per_image}" if per_image.is_file()
                                              else f"plots: {run.root / 'plots'}"))
    return 0


def cmd_segment(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir

    RunDir(args.run).require()
    _quiet_backend()
    from medlens.pipelines.predict import expand_inputs
    from medlens.pipelines.segpredict import segment_paths, segmentation_methods
    from medlens.pipelines.segtrain import SegModel
    from medlens.pipelines.shards import parse_shard, select_shard

    shard = parse_shard(args.shard)
    methods = segmentation_methods(args.method or args.explain)  # unknown methods: refused before the model loads
    if args.samples is not None and args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if shard is not None and not args.out:
        raise ConfigError("--shard needs --out: every shard writes OUT/shard-I-of-N for `medlens merge OUT`")
    deidentifier = _deidentifier(args)
    check_pacs_arguments(args)
    model = SegModel(args.run)
    out = Path(args.out) if args.out else Path(args.run) / "segmentations" / time.strftime("%Y%m%d-%H%M%S")
    if args.from_pacs:
        pull_inputs(args, out)
    expanded = expand_inputs(args.inputs)  # walked once: for the progress bar and for the batch
    files, _ = select_shard(expanded[0], shard)
    with _progress_bar(len(files), "segment") as bar:
        result = segment_paths(args.run, args.inputs, out, overwrite=args.overwrite, resume=args.resume,
                               explain=methods, threshold=args.threshold, progress=bar.update, model=model,
                               shard=shard, expanded=expanded, probability_volumes=args.probability_volumes,
                               deidentifier=deidentifier, match_scale=args.match_scale,
                               explain_samples=args.samples)
    print(f"{len(result.rows)} image(s) segmented → {result.csv_path}"
          + (f" ({result.skipped} file(s) unchanged since the last run, kept)" if result.skipped else ""))
    if result.volumes:
        print(f"{len(result.volumes)} volume(s) → {result.out_dir / 'volumes.csv'} (NIfTI masks; DICOM SEG for DICOM)")
    _write_mapping(args, deidentifier, out)
    if args.to_pacs:
        segs = [result.out_dir / v["seg"] for v in result.volumes if v.get("seg")]
        if segs:
            push_outputs(args.to_pacs, segs)
        else:
            print("--to-pacs: no DICOM SEG to store (only DICOM series and multi-frame DICOM inputs make one)")
    _maybe_report(args, result.out_dir)
    return _report_errors(result)


def _explain_options(args: argparse.Namespace, methods: str | None):
    """The explanation settings from ``predict --explain``/``explain`` arguments, or None."""
    if not methods:
        return None
    from medlens.pipelines.explain import ExplainOptions, load_masks, parse_methods

    for name in ("samples", "segments", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    if not 0 < args.occlusion_window <= 1:
        raise ConfigError(f"--occlusion-window must be in (0, 1], got {args.occlusion_window}")
    return ExplainOptions(
        methods=parse_methods(methods),
        class_name=getattr(args, "class_name", None),
        target_layer=args.layer,
        lime_samples=max(2, args.samples),
        lime_segments=args.segments,
        lime_segmentation=args.segmentation,
        lime_hide=args.hide,
        seed=args.seed,
        faithfulness=args.faithfulness,
        faithfulness_steps=args.steps,
        road=args.road,
        masks=load_masks(args.masks) if args.masks else {},
        findings=args.findings,
        ig_steps=args.ig_steps,
        ig_baseline=args.ig_baseline,
        occlusion_window=args.occlusion_window,
    )


def _run_predictions(args: argparse.Namespace, explain, default_folder: str, desc: str) -> int:
    if args.to_pacs:
        if explain is None:
            raise ConfigError("--to-pacs stores the explanation overlays as DICOM: add --explain METHODS")
        args.dicom = True
    if getattr(args, "dicom", False) and explain is None:
        raise ConfigError("--dicom exports explanation overlays: add --explain METHODS")
    if args.deidentify and not args.dicom:
        raise ConfigError("--deidentify applies to the DICOM objects written: add --dicom")
    deidentifier = _deidentifier(args)
    check_pacs_arguments(args)
    _quiet_backend()
    from medlens.pipelines.predict import expand_inputs, load_predictor, predict_paths
    from medlens.pipelines.shards import parse_shard, select_shard

    shard = parse_shard(args.shard)
    if shard is not None and not args.out:
        raise ConfigError("--shard needs --out: every shard writes OUT/shard-I-of-N for `medlens merge OUT`")
    predictor = load_predictor(args.run)
    out = Path(args.out) if args.out else Path(args.run) / default_folder / time.strftime("%Y%m%d-%H%M%S")
    if args.from_pacs:
        pull_inputs(args, out)
    expanded = expand_inputs(args.inputs)  # walked once: for the progress bar and for the batch
    files, _ = select_shard(expanded[0], shard)
    with _progress_bar(len(files), desc) as bar:
        result = predict_paths(args.run, args.inputs, out, batch_size=args.batch_size,
                               overwrite=args.overwrite, progress=bar.update, predictor=predictor,
                               explain=explain, resume=args.resume, shard=shard, expanded=expanded)
    print(f"{len(result.rows)} prediction(s) → {result.predictions_csv}"
          + (f" ({result.kept} file(s) unchanged since the last run, kept)" if result.kept else ""))
    if result.volumes:
        print(f"{len(result.volumes)} volume(s), one result each (from the deciding slice) → "
              f"{result.out_dir / 'volumes.csv'}")
    if explain is not None and result.rows:
        print(f"explanations ({', '.join(explain.methods)}) → {result.out_dir / 'explanations'}")
        _print_explanation_summary(result.rows, explain)
    if getattr(args, "dicom", False):
        from medlens.app.dicom_export import export_overlays
        from medlens.pipelines.rundir import RunDir

        written = export_overlays(result.out_dir, result.rows, list(explain.methods), predictor.explained_targets,
                                  identity=RunDir(args.run).identity(), deidentifier=deidentifier)
        _write_mapping(args, deidentifier, result.out_dir)
        print(f"{len(written)} DICOM Secondary Capture(s) in the source studies → {result.out_dir / 'dicom'}")
        if args.to_pacs and written:
            push_outputs(args.to_pacs, written)
    _maybe_report(args, result.out_dir)
    return _report_errors(result)


def _report_errors(result) -> int:
    """List the inputs a batch skipped; exit 1 only when nothing at all could be processed."""
    if result.errors:
        print(f"{len(result.errors)} input(s) skipped → {result.errors_csv}")
        for path, reason in result.errors[:5]:
            print(f"  {path}: {reason}")
    return 0 if result.rows or not result.errors else 1


def _print_explanation_summary(rows: list[dict], explain) -> None:
    for method in explain.methods:
        slug = METHODS[method]
        parts = []
        for key, label in (("pointing", "peak inside the mask"), ("energy", "energy inside"),
                           ("deletion_auc", "deletion AUC"), ("insertion_auc", "insertion AUC"),
                           ("road_morf", "ROAD MoRF"), ("road_lerf", "ROAD LeRF")):
            values = [r[f"{slug}_{key}"] for r in rows if r.get(f"{slug}_{key}", "") != ""]
            if values:
                mean = sum(values) / len(values)
                parts.append(f"{label} {mean:.3f} (n {len(values)})")
        if parts:
            print(f"  {method}: " + ", ".join(parts))


def cmd_predict(args: argparse.Namespace) -> int:
    return _run_predictions(args, _explain_options(args, args.explain), "predictions", "predict")


def cmd_explain(args: argparse.Namespace) -> int:
    options = _explain_options(args, args.method)
    code = _run_predictions(args, options, "explanations", "explain")
    if args.sanity and code in (0, 1):
        from medlens.pipelines.predict import expand_inputs

        files, _ = expand_inputs(args.inputs)
        code = max(code, _randomisation_check(args, files[: args.sanity_limit], options))
    return code


def _add_explain_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("explanations")
    g.add_argument("--layer", help="Grad-CAM target layer (default: the backbone's last conv map)")
    g.add_argument("--samples", type=int, default=1000, help="LIME, Kernel SHAP: perturbed images per explanation")
    g.add_argument("--segments", type=int, default=100, help="LIME, Kernel SHAP: approximate number of superpixels")
    g.add_argument("--hide", default="blur", choices=("blur", "mean", "zero"),
                   help="LIME, Kernel SHAP: what a hidden superpixel shows (default: the blurred image)")
    g.add_argument("--segmentation", default="slic", choices=("slic", "felzenszwalb", "quickshift"),
                   help="LIME: superpixel algorithm")
    g.add_argument("--seed", type=int, default=0,
                   help="LIME, Kernel SHAP, SmoothGrad: sampling seed (same seed, same result)")
    g.add_argument("--faithfulness", action="store_true",
                   help="also score each map by deletion and insertion AUC (RISE)")
    g.add_argument("--steps", type=int, default=20, help="points on each deletion/insertion curve")
    g.add_argument("--road", action="store_true",
                   help="also score each map by ROAD (remove and debias: MoRF/LeRF with noisy linear imputation)")
    g.add_argument("--masks", help="folder of lesion masks named like the images: adds the pointing game")
    g.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients: points of the path integral")
    g.add_argument("--ig-baseline", default="black", choices=("black", "blur"), help="Integrated Gradients: baseline")
    g.add_argument("--occlusion-window", type=float, default=0.125,
                   help="occlusion: window side as a fraction of the image's longer side")
    g.add_argument("--findings", default="positive", metavar="positive|all|NAME,...",
                   help="multi-label runs: explain each image's positive findings (default), all, or these")
    add_pacs_arguments(p)
    _add_shard_argument(p)
    _add_report_arguments(p)


def _add_shard_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", metavar="I/N",
                   help="process only shard I of N (deterministic split) into OUT/shard-I-of-N; then medlens merge OUT")


def _add_deidentify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--deidentify", action="store_true",
                   help="apply the DICOM PS3.15 basic profile to the DICOM objects written (names, IDs, dates, UIDs)")
    p.add_argument("--deidentify-map", metavar="FILE",
                   help="where to keep the original → pseudonym mapping (default OUT.deidentify-map.csv, beside OUT)")


def _deidentifier(args: argparse.Namespace) -> Any:
    """A Deidentifier when ``--deidentify`` was given (refused with ``--to-pacs``), else None."""
    if args.deidentify_map and not args.deidentify:
        raise ConfigError("--deidentify-map needs --deidentify")
    if not args.deidentify:
        return None
    if args.to_pacs:
        raise ConfigError("--deidentify with --to-pacs would file results under a pseudonym, apart from the study; "
                          "push de-identified results to a research archive with `medlens pacs push`")
    from medlens.pipelines.deidentify import Deidentifier

    return Deidentifier()


def _write_mapping(args: argparse.Namespace, deidentifier: Any, out: Path) -> None:
    from medlens.pipelines.deidentify import default_mapping_path

    if deidentifier is None or not deidentifier.mapping:
        return
    path = deidentifier.write_mapping(args.deidentify_map or default_mapping_path(out))
    print(f"de-identified (PS3.15 basic profile); the mapping, kept outside the output folder → {path}")


def _add_report_arguments(p: argparse.ArgumentParser) -> None:
    if p.prog.split()[-1] in ("predict", "explain"):
        p.add_argument("--dicom", action="store_true",
                       help="also write each overlay as a DICOM Secondary Capture in the source study (for PACS)")
        _add_deidentify_arguments(p)
    p.add_argument("--report", action="store_true", help="also write OUT/report.html (see `medlens report`)")
    p.add_argument("--truth", help="with --report: CSV with path and class_name (or label) columns")


def cmd_sanity(args: argparse.Namespace) -> int:
    _quiet_backend()
    from medlens.pipelines.explain import ExplainOptions, parse_methods
    from medlens.pipelines.predict import expand_inputs

    methods = parse_methods(args.methods)
    files, errors = expand_inputs(args.inputs)
    for path, reason in errors:
        print(f"  skipped {path}: {reason}")
    options = ExplainOptions(methods=methods, seed=args.seed, ig_steps=args.ig_steps)
    code = _randomisation_check(args, files[: args.limit], options)
    if args.data:
        from medlens.pipelines.sanity import data_randomisation_check

        result = data_randomisation_check(args.run, files[: args.limit], methods, fail_at=args.fail_at,
                                          epochs=args.epochs, options=options, retrain=args.retrain)
        test = ", ".join(f"{k} {v:.3f}" for k, v in result["shuffled_model_test"].items() if k in ("auc", "accuracy"))
        print(f"data randomisation: the recipe trained on shuffled labels ({result['model']}"
              f"{'; its test ' + test if test else ''}); Spearman with the trained model's maps:")
        for item in result["methods"].values():
            print(f"  {item['title']}: {item['spearman']:.2f} (SSIM {item['ssim']:.2f}, HOG {item['hog']:.2f}): "
                  f"{item['verdict'].upper()}")
    return code


def _randomisation_check(args: argparse.Namespace, files: list, options) -> int:
    """Run the cascading weight-randomisation check and print each method's path and verdict."""
    from medlens.pipelines.sanity import CHECKS_FILE, randomisation_check

    if not args.debug:  # each randomised copy compiles its own gradient step; TensorFlow warns about each
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    checks = randomisation_check(args.run, files, options.methods, seed=args.seed, fail_at=args.fail_at,
                                 options=options)
    print(f"cascading weight randomisation on {checks['images']} image(s); Spearman rank correlation with the "
          f"trained model's maps (a method fails at ≥ {args.fail_at} after full randomisation):")
    for item in checks["methods"].values():
        path = " → ".join(f"{s['randomised_down_to']} {s['spearman']:.2f}" for s in item["stages"])
        print(f"  {item['title']}: {path}: {item['verdict'].upper()}")
    print(f"written to {Path(args.run) / CHECKS_FILE} and the model card")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from medlens.pipelines.shards import merge_shards

    result = merge_shards(args.out, allow_missing=args.allow_missing)
    print(f"merged {len(result.present)} of {result.shards} shard(s): {result.rows} row(s) → {result.table}")
    if result.missing:
        print(f"shards missing: {', '.join(f'{i}/{result.shards}' for i in result.missing)}")
    if result.errors:
        print(f"{len(result.errors)} input(s) could not be processed → {result.out_dir / 'errors.csv'}")
    _maybe_report(args, result.out_dir)
    return 1 if result.missing else 0


def cmd_report(args: argparse.Namespace) -> int:
    from medlens.app.report import write_report

    result = write_report(args.folder, segmentation=args.segmentation, truth=args.truth, out=args.out,
                          margin=args.margin, overwrite=args.overwrite)
    print(f"report of {result.cases} case(s), {result.uncertain} uncertain → {result.path}")
    for problem in result.problems[:5]:
        print(f"  skipped {problem}")
    return 0


def _maybe_report(args: argparse.Namespace, out_dir: Path) -> None:
    if getattr(args, "report", False):
        from medlens.app.report import write_report

        result = write_report(out_dir, truth=getattr(args, "truth", None), overwrite=True)
        print(f"report of {result.cases} case(s), {result.uncertain} uncertain → {result.path}")


def cmd_serve(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir

    RunDir(args.run).require()
    _quiet_backend()
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
    _quiet_backend()
    from medlens.models.backbones import import_weights

    destination = import_weights(args.file, args.arch, overwrite=args.overwrite)
    print(f"installed {args.file} as the ImageNet weights of {args.arch}: {destination}")
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
    _quiet_backend()
    from medlens.app.demo import run_demo

    run_demo(Path(args.out), overwrite=args.overwrite, count=args.count, echo=print, fit_verbose=_fit_verbosity(args),
             progress=lambda: _training_callbacks(args))
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
    _add_explain_arguments(p)
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
    _add_explain_arguments(p)
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
    _add_deidentify_arguments(p)
    _add_shard_argument(p)
    _add_report_arguments(p)
    p.set_defaults(func=cmd_segment)

    add_pacs_command(sub)

    p = sub.add_parser("merge", help="join the shard-I-of-N folders of a sharded predict/explain/segment")
    p.add_argument("out", help="the --out folder the shards wrote into")
    p.add_argument("--allow-missing", action="store_true", help="merge the shards that are there; exit 1")
    _add_report_arguments(p)
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
    # Overrides may come before or after options (`train CFG --out RUN a.b=1`), so collect strays.
    args, extra = parser.parse_known_args(argv)
    if extra:
        if getattr(args, "command", None) == "train" and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command not in _NO_BACKEND and not args.debug:
            _quiet_backend()  # first, before any command's own imports reach Keras (--debug shows it all)
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
