"""A finished run's backbone as a weights file: pretrain on all your images, fine-tune on the case.

``medlens weights export RUN --out FILE.weights.h5`` writes the backbone of a trained
classifier run (any classification task: single-label, multi-label, ordinal) as a Keras
``.weights.h5`` file, which ``model.weights=FILE`` (with the same ``model.backbone``) loads
into a new run's backbone before its head is trained. Layer names and shapes do not depend on
the input size, so a backbone pretrained at 64 px can be fine-tuned at 128 px.

Example (the same-domain recipe of ``benchmarks/same_domain.py``)::

    medlens train chest-xray14 --out runs/all-xrays model.backbone=small_cnn model.weights=none
    medlens weights export runs/all-xrays --out all-xrays.weights.h5
    medlens train xray-pneumonia-224 --out runs/kermany model.backbone=small_cnn model.weights=all-xrays.weights.h5
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.rundir import RunDir, file_sha256

__all__ = ["export_backbone"]

_SUFFIX = ".weights.h5"


def export_backbone(run_dir: str | Path, out: str | Path, *, overwrite: bool = False) -> dict[str, Any]:
    """Write the backbone of the run at ``run_dir`` to ``out`` (atomically).

    Returns:
        ``{"file", "backbone", "image_size", "task", "sha256"}``.

    Raises:
        RunDirError: not a finished run, or a run without a classifier backbone.
        ConfigError: ``out`` does not end in ``.weights.h5``, is a folder, or exists and
            ``overwrite`` is false.
    """
    from medlens.models.classifier import get_backbone
    from medlens.pipelines.evaluation.classification_run import load_run_model

    out = Path(out)
    if not out.name.endswith(_SUFFIX) or out.name == _SUFFIX:
        raise ConfigError(f"{out}: a backbone is written as a Keras weights file; give a name ending in {_SUFFIX}")
    if out.is_dir():
        raise ConfigError(f"{out}: is a folder; give a file name ending in {_SUFFIX}")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out}: already exists; pass --overwrite to replace it or choose another --out")
    if not out.parent.is_dir():
        raise ConfigError(f"{out}: folder {out.parent} does not exist")
    run = RunDir(run_dir).require()
    state = run.read_state()
    task = state.get("task", "classification")
    name = state.get("backbone")
    if not name:
        raise RunDirError(f"{run.root}: a {task} run has no classifier backbone to export")
    model = load_run_model(run.root)
    try:
        backbone = get_backbone(model)
    except ConfigError:
        raise RunDirError(f"{run.root}: the model of this {task} run has no backbone layer to export") from None
    tmp = out.with_name(f".{out.name[: -len(_SUFFIX)]}.{os.getpid()}.tmp{_SUFFIX}")
    try:
        backbone.save_weights(str(tmp))
        os.replace(tmp, out)
    except OSError as error:
        raise ConfigError(f"{out}: cannot write the weights file ({error.strerror or error})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {"file": str(out), "backbone": name, "image_size": state.get("image_size"), "task": task,
            "sha256": file_sha256(out)}
