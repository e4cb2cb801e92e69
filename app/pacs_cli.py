"""The PACS options and commands of the CLI: ``medlens pacs find|pull|push``, ``--from-pacs``, ``--to-pacs``.

The transports, errors and the no-duplicates rule live in :mod:`medlens.app.pacs`; this module only
turns command-line arguments into calls to it and prints what happened.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from medlens.app.pacs import PushResult, connect, dicom_files, parse_pacs_url
from medlens.pipelines.errors import ConfigError, MedlensError

__all__ = ["add_pacs_arguments", "check_pacs_arguments", "pull_inputs", "push_outputs", "cmd_pacs",
           "add_pacs_command"]


def add_pacs_arguments(p: Any) -> None:
    """``--from-pacs URL --study UID`` and ``--to-pacs URL`` on predict, explain and segment."""
    g = p.add_argument_group("PACS (DICOMweb http(s)://…/dicom-web, or DIMSE dimse://AE@host:port)")
    g.add_argument("--from-pacs", metavar="URL", help="pull a study from this PACS into OUT/pacs-input and process it")
    g.add_argument("--study", metavar="UID", help="with --from-pacs: the Study Instance UID")
    g.add_argument("--to-pacs", metavar="URL",
                   help="store the DICOM results (SEG; Secondary Captures of the overlays) on this PACS")


def check_pacs_arguments(args: Any) -> None:
    """Refuse inconsistent PACS options before anything runs; contact ``--to-pacs`` once, early."""
    if bool(args.from_pacs) != bool(args.study):
        raise ConfigError("--from-pacs URL and --study UID go together")
    if not args.inputs and not args.from_pacs:
        raise ConfigError("give INPUT files or folders, or --from-pacs URL --study UID")
    for url in (args.from_pacs, args.to_pacs):
        if url:
            parse_pacs_url(url)
    if args.to_pacs:
        connect(args.to_pacs).check()  # fail before hours of work, not after


def pull_inputs(args: Any, out: Path) -> None:
    """Pull ``--study`` into ``OUT/pacs-input`` and add it to ``args.inputs``.

    ``OUT`` must be new or empty (or ``--overwrite``/``--resume``); when the pull fails nothing is
    left behind, not even ``OUT``.
    """
    out = Path(out)
    existed = out.exists()
    if existed and any(out.iterdir()) and not (args.overwrite or args.resume):
        raise MedlensError(f"{out}: output folder is not empty; use --overwrite or --resume, or a new --out")
    folder = out / "pacs-input"
    pacs = connect(args.from_pacs)
    try:
        if folder.exists():  # --resume/--overwrite: fetch again; unchanged content is kept by its hash
            staging = out / ".pacs-input.previous"
            shutil.rmtree(staging, ignore_errors=True)
            os.replace(folder, staging)
            try:
                files = pacs.pull(args.study, folder, images_only=True)
            except BaseException:
                os.replace(staging, folder)
                raise
            shutil.rmtree(staging, ignore_errors=True)
        else:
            files = pacs.pull(args.study, folder, images_only=True)
    except BaseException:
        if not existed:
            shutil.rmtree(out, ignore_errors=True)
        raise
    print(f"pulled {len(files)} image instance(s) of study {args.study} from {pacs.target.shown} → {folder}")
    args.inputs = [*args.inputs, str(folder)]
    args.overwrite = True  # OUT now holds the pulled study; it was checked empty above


def push_outputs(url: str, files: list[Path]) -> PushResult:
    """Store ``files`` on the PACS at ``url`` and print what happened."""
    pacs = connect(url)
    result = pacs.push(files)
    print(f"PACS {pacs.target.shown}: {len(result.stored)} instance(s) stored, {len(result.present)} already there"
          + (f", {len(result.failed)} refused" if result.failed else ""))
    for path, reason in result.failed[:5]:
        print(f"  {path}: {reason}")
    return result


def cmd_pacs(args: Any) -> int:
    """``medlens pacs find|pull|push``."""
    pacs = connect(args.url)
    if args.action == "find":
        found = pacs.require_study(args.study)
        series: dict[str, int] = {}
        for series_uid in found.values():
            series[series_uid] = series.get(series_uid, 0) + 1
        print(f"study {args.study} on {pacs.target.shown}: {len(found)} instance(s) in {len(series)} series")
        for uid, count in series.items():
            print(f"  {uid}: {count}")
        return 0
    if args.action == "pull":
        files = pacs.pull(args.study, args.out)
        print(f"pulled {len(files)} instance(s) of study {args.study} → {args.out}")
        return 0
    files, errors = dicom_files(args.files)
    for path, reason in errors:
        print(f"  skipped {path}: {reason}")
    if not files:
        raise ConfigError("nothing to push: no DICOM files among the inputs")
    result = push_outputs(args.url, files)
    return 1 if result.failed or errors else 0


def add_pacs_command(sub: Any) -> None:
    """The ``medlens pacs`` sub-commands."""
    p = sub.add_parser("pacs", help="find, pull or push DICOM studies on a PACS (DICOMweb or DIMSE)")
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("find", help="list the series of a study")
    q.add_argument("url", help="http(s)://host/dicom-web or dimse://AE@host:port")
    q.add_argument("--study", required=True, metavar="UID")
    q = actions.add_parser("pull", help="retrieve a study into a new folder (SERIES_UID/SOP_UID.dcm)")
    q.add_argument("url", help="http(s)://host/dicom-web or dimse://AE@host:port")
    q.add_argument("--study", required=True, metavar="UID")
    q.add_argument("--out", required=True, help="a new or empty folder")
    q = actions.add_parser("push", help="store DICOM files (or folders of them); instances already there are skipped")
    q.add_argument("url", help="http(s)://host/dicom-web or dimse://AE@host:port")
    q.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_pacs)
