"""The task seam: every registered task answers the whole interface; lookups fail with one line."""

from __future__ import annotations

import inspect

import pytest

from medlens.pipelines.config import list_presets, load_config
from medlens.pipelines.errors import ConfigError, RunDirError
from medlens.pipelines.tasks import TASKS, Task, task_named, task_of_run
from medlens.pipelines.tasks.base import _named

# Implemented once on the base, from what each task names (evaluation, applier; headline by default).
SHARED = ("wrong_command", "build_config", "evaluate_model", "evaluate", "headline", "load")


def test_every_task_implements_the_interface() -> None:
    assert set(TASKS) == {"classification", "multilabel", "ordinal", "segmentation"}
    interface = [name for name, value in vars(Task).items() if callable(value) and not name.startswith("_")]
    for name, task in TASKS.items():
        assert task.name == name and task.batch_command and task.endpoint.startswith("/")
        for method in interface:
            assert getattr(type(task), method) is not getattr(Task, method) or method in SHARED, (name, method)
        # The shared evaluate / load name what they call: each resolves to the task's own function or class.
        module, evaluate, write_card = task.evaluation
        evaluator, card_writer = _named(module, evaluate), _named(module, write_card)
        applier = _named(*task.applier.split(":"))
        assert callable(evaluator) and callable(card_writer) and isinstance(applier, type), name
        assert {"split", "model", "dataset", "cfg"} <= set(inspect.signature(evaluator).parameters), name
    # Tasks may share a command (single- and multi-label runs are both applied by `predict`), but one
    # command always maps to one service route, and the run's own task tells the outputs apart.
    routes = {task.batch_command: set() for task in TASKS.values()}
    for task in TASKS.values():
        routes[task.batch_command].add(task.endpoint)
    assert all(len(endpoints) == 1 for endpoints in routes.values()) and len(routes) == 2


def test_every_preset_builds_through_its_task() -> None:
    seen = set()
    for preset in list_presets():
        cfg = load_config(preset)
        task = task_named(cfg.task)
        assert isinstance(cfg, type(task.build_config({"task": task.name})))
        assert task.describe_model(cfg) and task.describe_target(cfg)
        seen.add(task.name)
    assert seen == set(TASKS)  # a preset ships for every task


def test_unknown_tasks_are_one_line_errors() -> None:
    with pytest.raises(ConfigError, match="config key 'task' is 'regression'; choose one of classification"):
        load_config({"task": "regression"})
    with pytest.raises(RunDirError, match="unknown task 'volumes'") as caught:
        task_of_run({"task": "volumes"}, "runs/x")
    assert "runs/x" in str(caught.value) and "\n" not in str(caught.value)
    # run.json files written before tasks were recorded belong to classifiers.
    assert task_of_run({}).name == "classification"


def test_a_run_applied_with_the_other_tasks_command_says_which_to_use() -> None:
    message = TASKS["segmentation"].wrong_command("runs/vessels", "predict")
    assert message == "runs/vessels: a segmentation run; use `medlens segment` to apply it, not `predict`"


def test_an_output_folder_names_its_task_and_older_folders_are_told_by_what_they_list():
    from medlens.pipelines.tasks import TASKS, task_of_outputs

    assert task_of_outputs({"task": "ordinal", "class_names": ["a", "b", "c"]}) is TASKS["ordinal"]
    # Written before predictions.json named the task: findings, grades or classes.
    assert task_of_outputs({"class_names": ["A", "B"], "findings": ["A", "B"]}) is TASKS["multilabel"]
    assert task_of_outputs({"class_names": ["g0", "g1", "g2"], "grades": ["g0", "g1", "g2"]}) is TASKS["ordinal"]
    assert task_of_outputs({"class_names": ["no", "yes"], "threshold": 0.4}) is TASKS["classification"]
    with pytest.raises(RunDirError, match=r"out/predictions.json: run.json names an unknown task 'x'"):
        task_of_outputs({"task": "x"}, "out/predictions.json")


def test_each_classifier_task_reads_a_prediction_row_for_the_report():
    from medlens.pipelines.tasks import TASKS

    binary = TASKS["classification"].report_case({"label": "yes", "p_no": "0.45", "p_yes": "0.55"},
                                                 {"class_names": ["no", "yes"], "threshold": 0.5}, 0.1)
    assert binary == {"label": "yes", "probability": 0.55, "probabilities": {"no": 0.45, "yes": 0.55},
                      "positive": 0.55, "uncertain": True}
    three = TASKS["classification"].report_case({"label": "b", "p_a": "0.1", "p_b": "0.7", "p_c": "0.2"},
                                                {"class_names": ["a", "b", "c"]}, 0.1)
    assert three["uncertain"] is False and three["probability"] == 0.7
    summary = {"class_names": ["A", "B"], "findings": ["A", "B"], "thresholds": {"A": 0.3, "B": 0.8}}
    row = {"label": "A", "p_A": "0.9", "p_B": "0.75", "pos_A": "1", "pos_B": "0"}
    findings = TASKS["multilabel"].report_case(row, summary, 0.1)
    assert findings["findings"] == ["A"] and findings["probability"] == 0.9 and findings["uncertain"] is True
    assert TASKS["multilabel"].report_targets(summary) == ["A", "B"] and TASKS["ordinal"].report_targets(summary) is None
