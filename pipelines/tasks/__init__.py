"""The task seam: what differs between classification and segmentation, in one place.

A :class:`~medlens.pipelines.tasks.base.Task` knows its configuration type, how a run
of it trains and evaluates, which model object applies it, which batch command and
service endpoint serve it, and how it describes itself. Training, evaluation, the
CLI, the service and the predictors ask ``TASKS[name]`` (or :func:`task_of_run` /
:func:`task_named`) and never compare task names themselves. Adding a task is one
module here plus its entry in ``TASKS`` (docs/architecture.md, "Adding a task").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.tasks.base import Task
from medlens.pipelines.tasks.classification import ClassificationTask
from medlens.pipelines.tasks.multilabel import MultiLabelTask
from medlens.pipelines.tasks.ordinal import OrdinalTask
from medlens.pipelines.tasks.segmentation import SegmentationTask

__all__ = ["TASKS", "DEFAULT_TASK", "Task", "require_command", "task_named", "task_of_outputs", "task_of_run"]

DEFAULT_TASK = "classification"

TASKS: dict[str, Task] = {task.name: task for task in (ClassificationTask(), MultiLabelTask(), OrdinalTask(),
                                                        SegmentationTask())}


def task_named(name: Any) -> Task:
    """The task called ``name`` (a config's ``task:``); one-line error for an unknown one."""
    try:
        return TASKS[str(name)]
    except KeyError:
        raise ConfigError(f"config key 'task' is {name!r}; choose one of {', '.join(TASKS)}") from None


def task_of_run(state: Mapping[str, Any], where: Any = "run") -> Task:
    """The task of a run from its ``run.json`` (runs written before tasks existed are classifiers)."""
    name = state.get("task", DEFAULT_TASK)
    if name not in TASKS:
        raise RunDirError(f"{where}: run.json names an unknown task {name!r} (this medlens knows {', '.join(TASKS)})")
    return TASKS[name]


def task_of_outputs(summary: Mapping[str, Any], where: Any = "predictions.json") -> Task:
    """The task whose predictor wrote an output folder's ``predictions.json``.

    Folders written before the file named its task are told apart by what it lists: findings
    (multi-label), grades (ordinal), or classes.
    """
    if "task" in summary:
        return task_of_run(summary, where)
    for task in TASKS.values():
        if task.output_kind not in ("", "classes") and summary.get(task.output_kind):
            return task
    return TASKS[DEFAULT_TASK]


def require_command(state: Mapping[str, Any], where: Any, command: str) -> Task:
    """The run's task, if ``medlens COMMAND`` applies it; else a one-line error naming the right command."""
    task = task_of_run(state, where)
    if task.batch_command != command:
        raise RunDirError(task.wrong_command(where, command))
    return task
