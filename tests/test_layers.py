"""The layering rules of docs/architecture.md, checked on the source: who may import whom."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _modules(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def _imports(path: Path, *, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def test_pipelines_and_models_never_import_the_app() -> None:
    offenders = [f"{path.relative_to(REPO)}: {name}" for folder in ("pipelines", "models")
                 for path in _modules(folder) for name in _imports(path) if name.startswith("medlens.app")]
    assert offenders == []


def test_models_import_keras_not_tensorflow_at_module_level() -> None:
    # Backend-specific steps import their backend inside the function that needs it.
    offenders = [f"{path.relative_to(REPO)}: {name}" for path in _modules("models")
                 for name in _imports(path, top_level_only=True)
                 if name.split(".")[0] in ("tensorflow", "jax", "torch")
                 or (name.startswith("medlens.") and not name.startswith(("medlens.models", "medlens.pipelines.errors")))]
    assert offenders == []


def test_no_task_name_branches_outside_the_task_seam() -> None:
    # A task's name compared, or a task's predictor class tested, outside the seam.
    pattern = re.compile(r"""task *(==|!=|in) *[("']|===? *["'](segmentation|classification|multilabel|ordinal)["']"""
                         r"""|isinstance\([^)]*(MultiLabel|Ordinal)Predictor""")
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for folder in ("app", "pipelines") for path in _modules(folder)
                 if "tasks" not in path.relative_to(REPO).parts
                 for number, line in enumerate(path.read_text().splitlines(), start=1) if pattern.search(line)]
    assert offenders == []


def test_the_image_readers_import_no_deep_learning_framework() -> None:
    # docs/architecture.md: reading images needs numpy, Pillow, pydicom, nibabel, OpenCV; never Keras.
    offenders = [f"{path.relative_to(REPO)}: {name}" for path in _modules("pipelines/imaging")
                 for name in _imports(path)
                 if name.split(".")[0] in ("keras", "tensorflow", "jax", "torch")
                 or (name.startswith("medlens.") and not name.startswith(("medlens.pipelines.imaging",
                                                                          "medlens.pipelines.errors")))]
    assert offenders == [] and len(_modules("pipelines/imaging")) >= 6
