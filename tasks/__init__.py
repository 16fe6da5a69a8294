"""Fitness tasks. Each module registers its task class in ``TASKS`` under its config name."""

from __future__ import annotations

import importlib
import inspect

from evomm.errors import ConfigError, UnknownNameError
from evomm.registry import Registry

TASKS: Registry = Registry("task")

# Task modules are imported lazily by name so that a text run never imports open_clip.
_MODULES = {
    "toy_arith": "tasks.toy_arith",
    "toy_skills": "tasks.toy_skills",
    "toy_ja_math": "tasks.toy_ja_math",
    "toy_vqa_skills": "tasks.toy_vqa_skills",
    "toy_ja_vqa": "tasks.toy_vqa_skills",
    "ja_vg_vqa": "tasks.ja_vg_vqa",
    "ja_vlm_bench": "tasks.ja_vlm_bench",
    "mgsm_ja": "tasks.mgsm_ja",
    "clip_score": "tasks.clip_score",
}


def build_task(name: str, **options):
    """Instantiate the task registered as ``name`` with its config options."""
    module = _MODULES.get(name)
    if module is not None and name not in TASKS:
        importlib.import_module(module)
    if name not in TASKS:
        raise UnknownNameError(f"unknown task '{name}'; known tasks: {', '.join(task_names())}")
    cls = TASKS.get(name)
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"task '{name}' does not take {unknown}; its options: {', '.join(accepted)}")
    return cls(**options)


def validate_for_evaluation(task) -> None:
    """Validate a task that only evaluates (never fitness): held-out-only benchmarks allow that."""
    if "fitness" in inspect.signature(task.validate).parameters:
        task.validate(fitness=False)
    else:
        task.validate()


def task_names() -> list[str]:
    return sorted(set(_MODULES) | set(TASKS.names()))
