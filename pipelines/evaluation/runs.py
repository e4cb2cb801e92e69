"""What every task's run evaluation and model card share: loading, the card's opening, the explanation checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medlens.pipelines.config import load_config
from medlens.pipelines.rundir import RunDir, atomic_write_text

__all__ = ["backbone_line", "CHECKS_FILE", "card_opening", "finish_card", "fmt", "run_parts", "write_checks_to_card"]

#: The randomisation check's results in a run directory (see :mod:`medlens.pipelines.explain.sanity`).
CHECKS_FILE = "explanation_checks.json"


def run_parts(run_dir: str | Path, model: Any, cfg: Any, dataset: Any,
              load_data: Callable[[Any, int], Any]) -> tuple[RunDir, Any, Any, Any]:
    """The run, its model, config and dataset: the ones given, else loaded from the run directory."""
    from medlens.pipelines.evaluation.classification_run import load_run_model

    run = RunDir(run_dir)
    if model is None:
        run.require()
        model = load_run_model(run.root)
    cfg = cfg or load_config(run.read_config())
    dataset = dataset or load_data(cfg.data, cfg.seed)
    return run, model, cfg, dataset


def fmt(value: Any) -> str:
    """A metric for a model card: 3 decimals, ``n/a`` when undefined."""
    return "n/a" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def card_opening(cfg: dict[str, Any], run: RunDir) -> list[str]:
    """The title and the decision-support notice every model card opens with."""
    lines = [f"# Model card: {cfg.get('name', run.root.name)}", "",
             "**Decision support only.** This model has not been cleared for clinical use; every output must be",
             "reviewed by a qualified clinician.", ""]
    if (cfg.get("data") or {}).get("shuffle_labels"):
        lines += ["**Trained on shuffled labels** (`data.shuffle_labels`): a data-randomisation model for the "
                  "explanation sanity check. It has learned nothing about the images; never use it to predict.", ""]
    return lines


def backbone_line(state: dict[str, Any], note: str = "") -> str:
    """The model card's backbone line: backbone, its initial weights, the input size (and ``note``)."""
    size = "×".join(str(v) for v in state.get("image_size", []))
    return (f"- Backbone: {state.get('backbone')} (initial weights: {state.get('weights')}), input {size} RGB"
            + (f"; {note}" if note else ""))


def skipped_rows_lines(state: dict[str, Any]) -> list[str]:
    """The model card's line on manifest rows left out as unreadable (none for data without a manifest)."""
    report = state.get("data_report") or {}
    if "rows_skipped" not in report:
        return []
    examples = report.get("skipped") or []
    return [f"- Manifest rows skipped as unreadable: {report['rows_skipped']}"
            + (f" (first: {examples[0]})" if examples else "")]


_CARD_HEADING = "## Explanation checks"


def _verdict_table(intro: str, columns: list[str], rows: list[tuple[dict[str, Any], list[float]]]) -> list[str]:
    """A paragraph, then a markdown table: one row per method, its scores, its verdict in bold."""
    lines = [intro, "", "| method | " + " | ".join(columns) + " | verdict |", "|---" * (len(columns) + 2) + "|"]
    lines += [f"| {item['title']} | " + " | ".join(f"{v:.3f}" for v in values) + f" | **{item['verdict']}** |"
              for item, values in rows]
    return [*lines, ""]


def write_checks_to_card(run_dir: str | Path, checks: dict[str, Any]) -> Path:
    """Add (or replace) the model card's section on the explanation sanity checks (either or both kinds)."""
    run = RunDir(run_dir)
    card = run.card_path.read_text() if run.card_path.is_file() else ""
    card = card.split(_CARD_HEADING)[0].rstrip() + "\n\n" if card else ""
    lines = [_CARD_HEADING, ""]
    if checks.get("methods"):
        lines += _verdict_table(
            f"Cascading weight randomisation on {checks['images']} image(s): a method fails when its maps keep "
            f"a mean Spearman rank correlation ≥ {checks['fail_at']} with the trained model's after every weight "
            "is re-drawn (its maps would then not depend on what the model learned).",
            ["Spearman after the head", "after full randomisation"],
            [(item, [item["stages"][0]["spearman"], item["final_spearman"]]) for item in checks["methods"].values()])
    data = checks.get("data_randomisation")
    if data:
        lines += _verdict_table(
            f"Data randomisation on {data['images']} image(s): the same recipe trained on shuffled labels "
            f"(`{data['model']}`); a method fails when its maps keep a mean Spearman ≥ {data['fail_at']} with "
            "the trained model's.",
            ["Spearman", "SSIM", "HOG"],
            [(item, [item["spearman"], item["ssim"], item["hog"]]) for item in data["methods"].values()])
    return atomic_write_text(run.card_path, card + "\n".join(lines).rstrip() + "\n")


def finish_card(run: RunDir, text: str) -> Path:
    """Write a model card, keeping the explanation-checks section when the run has one."""
    path = atomic_write_text(run.card_path, text)
    checks = run.root / CHECKS_FILE
    if checks.is_file():
        try:
            path = write_checks_to_card(run.root, json.loads(checks.read_text()))
        except ValueError:
            pass  # an unreadable checks file: the card stays without the section
    return path
