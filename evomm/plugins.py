"""Plugins: fitness tasks, modality adapters, optimizers and search-space kinds are classes named
in the config.

One style for every kind. A config section either names a built-in (``name: toy_skills``) or
points at any class by its import path, Hydra's way (``_target_: my_pkg.my_task.MyTask``); its
other keys are the constructor's keyword arguments. A user's own task, adapter or optimizer
lives in the user's module and is never registered inside evomm.

The built-in names below are aliases for import paths, kept as strings so that resolving one
imports only the module it needs (a text run never imports diffusers or open_clip). A recipe
records its adapter by the same reference (alias or import path), so ``evomm merge`` can rebuild
a model made with a user's adapter.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from typing import Any

from evomm.errors import ConfigError, UnknownNameError

BUILTINS: dict[str, dict[str, str]] = {
    "adapter": {
        "llm": "evomm.adapters.llm.LLMAdapter",
        "vlm": "evomm.adapters.vlm.VLMAdapter",
        "sdxl": "evomm.adapters.sdxl.SDXLAdapter",
    },
    "optimizer": {
        "cmaes": "evomm.search.optimizers.CMAES",
        "random": "evomm.search.optimizers.RandomSearch",
        "nsga2": "evomm.search.nsga2.NSGA2",
    },
    "space": {
        "ps": "evomm.search.space_kinds.ParameterSpaceKind",
        "dfs": "evomm.search.route_kinds.DFSKind",
        "ps_dfs": "evomm.search.route_kinds.PSDFSKind",
    },
    "task": {
        "toy_arith": "evomm.tasks.toy_arith.ToyArithTask",
        "toy_skills": "evomm.tasks.toy_skills.ToySkillsTask",
        "toy_ja_math": "evomm.tasks.toy_ja_math.ToyJaMathTask",
        "toy_vqa_skills": "evomm.tasks.toy_vqa_skills.ToyVQASkillsTask",
        "toy_ja_vqa": "evomm.tasks.toy_vqa_skills.ToyJaVQATask",
        "ja_vg_vqa": "evomm.tasks.ja_vg_vqa.JaVGVQATask",
        "ja_vlm_bench": "evomm.tasks.ja_vlm_bench.JaVLMBenchTask",
        "mgsm_ja": "evomm.tasks.mgsm_ja.MGSMJaTask",
        "clip_score": "evomm.tasks.clip_score.ClipScoreTask",
        "lm_eval": "evomm.tasks.lm_eval_harness.LMEvalTask",
        "multi": "evomm.tasks.multi.MultiTask",
        "toy_skill": "evomm.tasks.toy_skill.ToySkillTask",
    },
}

# Keys of a plugin's config section that are not constructor arguments.
SECTION_KEYS = ("name", "_target_")


def names(kind: str) -> list[str]:
    return sorted(BUILTINS[kind])


def reference(section: dict[str, Any], kind: str) -> str:
    """The class a config section selects: its ``_target_``, else its built-in ``name``."""
    ref = section.get("_target_") or section.get("name")
    if not ref:
        raise ConfigError(f"the {kind} config needs `name: <{'|'.join(names(kind))}>` or `_target_: <module.Class>`")
    return str(ref)


def options(section: dict[str, Any], *drop: str) -> dict[str, Any]:
    """A section's constructor arguments (everything but ``name``, ``_target_`` and ``drop``)."""
    return {k: v for k, v in section.items() if k not in SECTION_KEYS and k not in drop}


def load_class(kind: str, ref: str) -> type:
    """The class for a built-in name or an import path ``pkg.module.Class``."""
    path = BUILTINS[kind].get(ref, ref)
    module_name, _, attr = path.rpartition(".")
    if not module_name:
        raise UnknownNameError(
            f"unknown {kind} '{ref}'; built-in {kind}s: {', '.join(names(kind))}, "
            f"or give `_target_: <module.Class>` for your own"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the named module itself is missing
            raise UnknownNameError(
                f"{kind} '{ref}': cannot import module '{module_name}' (is it on PYTHONPATH?); "
                f"built-in {kind}s: {', '.join(names(kind))}"
            ) from None
        raise
    cls = getattr(module, attr, None)
    if cls is None:
        raise UnknownNameError(f"{kind} '{ref}': module '{module_name}' has no '{attr}'")
    return cls


def accepted_options(cls: type) -> tuple[list[str], bool]:
    """The keyword arguments a class takes, and whether it also takes ``**kwargs``."""
    params = inspect.signature(cls).parameters.values()
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return named, any(p.kind == p.VAR_KEYWORD for p in params)


def check_options(kind: str, ref: str, given: dict[str, Any], supplied: tuple[str, ...] = ()) -> type:
    """Refuse keys the class does not take (a typo), naming the valid ones; returns the class.

    ``supplied`` are arguments the caller passes itself (``dim``, ``seed`` for an optimizer):
    they are not the user's to set and are left out of the list of valid keys.
    """
    cls = load_class(kind, ref)
    named, takes_any = accepted_options(cls)
    unknown = sorted(set(given) - set(named))
    if unknown and not takes_any:
        valid = [n for n in named if n not in supplied]
        close = difflib.get_close_matches(unknown[0], valid, n=1)
        hint = f"; did you mean {kind}.{close[0]}?" if close else ""
        raise ConfigError(f"{kind} '{ref}' does not take {', '.join(unknown)}; its keys: {', '.join(valid)}{hint}")
    return cls


def build(kind: str, ref: str, given: dict[str, Any], **supplied: Any) -> Any:
    """Check the options, then instantiate the class with them (and what the caller supplies)."""
    cls = check_options(kind, ref, given, tuple(supplied))
    return cls(**given, **supplied)
