"""The batch commands of ``medlens``: predict, explain, segment, sanity, merge and report.

Each walks its inputs once, writes a complete output folder (sharded with ``--shard I/N``),
and ends with one line per problem; see :mod:`medlens.app.cli` for the parser.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

from medlens.app.cli_common import progress_bar, quiet_backend
from medlens.app.pacs_cli import (
    add_pacs_arguments,
    check_pacs_arguments,
    pull_inputs,
    push_outputs,
)
from medlens.pipelines.errors import ConfigError
from medlens.pipelines.explain.methods import METHODS


def cmd_segment(args: argparse.Namespace) -> int:
    from medlens.pipelines.rundir import RunDir

    RunDir(args.run).require()
    quiet_backend()
    from medlens.pipelines.inference.inputs import expand_inputs
    from medlens.pipelines.seg_model import SegModel
    from medlens.pipelines.segpredict import segment_paths, segmentation_methods
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
    with progress_bar(len(files), "segment") as bar:
        result = segment_paths(args.run, args.inputs, out, overwrite=args.overwrite, resume=args.resume,
                               explain=methods, threshold=args.threshold, progress=bar.update, model=model,
                               shard=shard, expanded=expanded, probability_volumes=args.probability_volumes,
                               deidentifier=deidentifier, match_scale=args.match_scale,
                               explain_samples=args.samples)
    print(f"{len(result.rows)} image(s) segmented → {result.table}"
          + (f" ({result.kept} file(s) unchanged since the last run, kept)" if result.kept else ""))
    if result.volumes:
        print(f"{len(result.volumes)} volume(s) → {result.out_dir / 'volumes.csv'} "
              "(NIfTI masks; DICOM SEG and a volume report for DICOM)")
    _write_mapping(args, deidentifier, out)
    if args.to_pacs:
        segs = [result.out_dir / v[c] for v in result.volumes for c in ("seg", "report") if v.get(c)]
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
    if args.ig_baseline not in ("black", "blur"):  # a file: read it now, so a bad one fails before any work
        from medlens.pipelines.imaging import read_image

        if not Path(args.ig_baseline).is_file():
            raise ConfigError(f"--ig-baseline {args.ig_baseline}: not black, blur or an image file")
        read_image(args.ig_baseline)
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
        stability=args.stability,
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
    quiet_backend()
    from medlens.pipelines.inference.inputs import expand_inputs
    from medlens.pipelines.predict import predict_paths
    from medlens.pipelines.predictors import load_predictor
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
    with progress_bar(len(files), desc) as bar:
        result = predict_paths(args.run, args.inputs, out, batch_size=args.batch_size,
                               overwrite=args.overwrite, progress=bar.update, predictor=predictor,
                               explain=explain, resume=args.resume, shard=shard, expanded=expanded,
                               match_scale=args.match_scale)
    print(f"{len(result.rows)} prediction(s) → {result.table}"
          + (f" ({result.kept} file(s) unchanged since the last run, kept)" if result.kept else ""))
    if result.volumes:
        print(f"{len(result.volumes)} volume(s), one result each (from the deciding slice) → "
              f"{result.out_dir / 'volumes.csv'}")
    if explain is not None and result.rows:
        print(f"explanations ({', '.join(explain.methods)}) → {result.out_dir / 'explanations'}")
        _print_explanation_summary(result.rows, explain)
    if getattr(args, "dicom", False):
        from medlens.app.dicom_export import export_overlays, export_reports
        from medlens.pipelines.rundir import RunDir

        identity, headers = RunDir(args.run).identity(), {}
        written = export_overlays(result.out_dir, result.rows, list(explain.methods), predictor.explained_targets,
                                  identity=identity, deidentifier=deidentifier, headers=headers)
        reports = export_reports(result.out_dir, result.rows, predictor.row_findings, identity=identity,
                                 model_name=str(predictor.state.get("name") or Path(args.run).name),
                                 deidentifier=deidentifier, headers=headers)
        _write_mapping(args, deidentifier, result.out_dir)
        print(f"{len(written)} DICOM Secondary Capture(s) and {len(reports)} findings report(s) (SR) in the source "
              f"studies → {result.out_dir / 'dicom'}")
        if args.to_pacs and (written or reports):
            push_outputs(args.to_pacs, [*written, *reports])
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
                           ("road_morf", "ROAD MoRF"), ("road_lerf", "ROAD LeRF"),
                           ("stability", "max-sensitivity")):
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
        from medlens.pipelines.inference.inputs import expand_inputs

        files, _ = expand_inputs(args.inputs)
        code = max(code, _randomisation_check(args, files[: args.sanity_limit], options))
    return code


def add_explain_arguments(p: argparse.ArgumentParser) -> None:
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
    g.add_argument("--stability", action="store_true",
                   help="also score each map's max-sensitivity: its largest relative change under 2%% input noise "
                        "(8 draws; lower is steadier)")
    g.add_argument("--masks", help="folder of lesion masks named like the images: adds the pointing game")
    g.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients: points of the path integral")
    g.add_argument("--ig-baseline", default="black", metavar="black|blur|FILE",
                   help="Integrated Gradients: baseline, black, the blurred image, or an image file (e.g. a healthy "
                        "reference)")
    g.add_argument("--occlusion-window", type=float, default=0.125,
                   help="occlusion: window side as a fraction of the image's longer side")
    g.add_argument("--findings", default="positive", metavar="positive|all|NAME,...",
                   help="multi-label runs: explain each image's positive findings (default), all, or these")
    add_pacs_arguments(p)
    add_shard_argument(p)
    add_report_arguments(p)


def add_shard_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", metavar="I/N",
                   help="process only shard I of N (deterministic split) into OUT/shard-I-of-N; then medlens merge OUT")


def add_deidentify_arguments(p: argparse.ArgumentParser) -> None:
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


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    if p.prog.split()[-1] in ("predict", "explain"):
        p.add_argument("--dicom", action="store_true",
                       help="also write each overlay as a DICOM Secondary Capture, and each DICOM image's "
                            "findings as a TID 1500 report (SR), in the source study (for PACS)")
        add_deidentify_arguments(p)
    p.add_argument("--report", action="store_true", help="also write OUT/report.html (see `medlens report`)")
    p.add_argument("--truth", help="with --report: CSV with path and class_name (or label) columns")


def cmd_sanity(args: argparse.Namespace) -> int:
    quiet_backend()
    from medlens.pipelines.explain import ExplainOptions, parse_methods
    from medlens.pipelines.inference.inputs import expand_inputs

    methods = parse_methods(args.methods)
    files, errors = expand_inputs(args.inputs)
    for path, reason in errors:
        print(f"  skipped {path}: {reason}")
    options = ExplainOptions(methods=methods, seed=args.seed, ig_steps=args.ig_steps)
    code = _randomisation_check(args, files[: args.limit], options)
    if args.data:
        from medlens.pipelines.explain.sanity import data_randomisation_check

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
    from medlens.pipelines.explain.sanity import CHECKS_FILE, randomisation_check

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


