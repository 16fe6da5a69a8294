"""Fitness tasks. Each module registers its task class in ``TASKS`` under its config name."""

from __future__ import annotations

import importlib

from evomm.errors import UnknownNameError
from evomm.registry import Registry

TASKS: Registry = Registry("task")

# Task modules are imported lazily by name so that a text run never imports open_clip.
_MODULES = {
    "toy_arith": "tasks.toy_arith",
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
    return TASKS.get(name)(**options)


def task_names() -> list[str]:
    return sorted(set(_MODULES) | set(TASKS.names()))
