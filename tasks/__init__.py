"""Fitness tasks, installed as ``evomm.tasks``; a task is any class that follows ``evomm.tasks.base.Task``.

Built-in tasks are named in ``evomm.plugins.BUILTINS``; a user's own task is selected from the
config by its import path (``task: {_target_: my_pkg.my_task.MyTask, ...}``).
"""

from __future__ import annotations

import inspect
from typing import Any

from evomm import plugins


def build_task(ref: str, **options: Any):
    """Instantiate a built-in task (by name) or any task class (by import path) with its options."""
    return plugins.build("task", ref, options)


def build_task_from(section: dict[str, Any]):
    """The task a config section selects (``name`` or ``_target_``, plus its options)."""
    return build_task(plugins.reference(section, "task"), **plugins.options(section))


def validate_for_evaluation(task) -> None:
    """Validate a task that only evaluates (never fitness): held-out-only benchmarks allow that."""
    if "fitness" in inspect.signature(task.validate).parameters:
        task.validate(fitness=False)
    else:
        task.validate()
