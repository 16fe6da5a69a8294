"""Config validation that runs before any model or dataset loads.

A mistake in a config must fail in the first second, not after loading 30 GB of weights. Each
check raises ConfigError with a message that names the key and says what to change.
"""

from __future__ import annotations

import difflib

from evomm import plugins
from evomm.adapters.availability import check_all_available
from evomm.config_moves import MOVED_KEYS, check_merge_section
from evomm.config_values import require_int as _int
from evomm.config_values import require_number as _number
from evomm.errors import ConfigError
from evomm.merging.methods import get_method
from evomm.search.scoring import FitnessSettings
from evomm.search.space_kinds import space_kind

# The merge group is the merge method only; what the search evolves is the space group's.
MERGE_SECTION_KEYS = ("method", "params")


def validate_config(c: dict) -> None:
    """Check a resolved run config (a plain dict) without loading anything heavy."""
    for section in ("adapter", "merge", "space", "optimizer", "task"):
        if not isinstance(c.get(section), dict):
            raise ConfigError(f"the config has no '{section}' section; pick one with {section}=<name>")

    check_merge_section(c["merge"])  # space keys still written under merge: name the new key
    _validate_merge_keys(c["merge"])
    get_method(c["merge"].get("method"))  # an unknown method name, whatever the space
    _validate_plugins(c)
    space_kind(c).validate(c)
    _validate_budget(c)
    _validate_final_eval(c)
    if not isinstance(c.get("resample_fitness", False), bool):
        raise ConfigError(f"resample_fitness must be true or false, got {c['resample_fitness']!r}")
    fitness = FitnessSettings.from_config(c.get("fitness"), resample=bool(c.get("resample_fitness")))
    optimizer_cls = plugins.load_class("optimizer", plugins.reference(c["optimizer"], "optimizer"))
    if fitness.racing and getattr(optimizer_cls, "multi_objective", False):
        raise ConfigError("fitness.racing ranks candidates by one fitness, but the optimizer is multi-objective; "
                          "set fitness.racing=false")


def check_models_available(c: dict) -> None:
    """Once the config and the task data are sound, and before any model loads: every model can be loaded (a folder holds its
    config, a hub id is cached or on a reachable hub), found in seconds, not after the hub
    client's retries."""
    adapter, kind = c["adapter"], space_kind(c)
    modality = getattr(plugins.load_class("adapter", plugins.reference(adapter, "adapter")), "modality", None)
    refs = [(ref, "model") for ref in adapter.get("models") or []]
    refs += [(ref, "model") for ref in (kind.model_refs(c) if hasattr(kind, "model_refs") else [])]
    if adapter.get("base") is not None:
        refs.append((adapter["base"], "base model"))
    check_all_available(refs, modality, adapter.get("single_file_config"))


def _validate_plugins(c: dict) -> None:
    """Adapter, space, optimizer and task: each resolves to a class that takes every key its section
    sets, and the task scores what the adapter produces."""
    adapter, opt, task = c["adapter"], c["optimizer"], c["task"]
    adapter_cls = plugins.check_options("adapter", plugins.reference(adapter, "adapter"), plugins.options(adapter))
    plugins.check_options("space", plugins.reference(c["space"], "space"), plugins.options(c["space"]))
    plugins.check_options("optimizer", plugins.reference(opt, "optimizer"), plugins.options(opt, "generations"),
                          supplied=("dim", "seed"))
    task_cls = plugins.check_options("task", plugins.reference(task, "task"), plugins.options(task))
    check_modality(task_cls, adapter_cls, "task")
    extra_tasks = (c.get("final_eval") or {}).get("extra_tasks") or {}
    if not isinstance(extra_tasks, dict):
        raise ConfigError("final_eval.extra_tasks must map task names to their options")
    for name, options in extra_tasks.items():
        options = options or {}
        extra_cls = plugins.check_options("task", plugins.reference({"name": name, **options}, "task"), plugins.options(options))
        check_modality(extra_cls, adapter_cls, f"final_eval.extra_tasks.{name}")


def check_modality(task_cls: type, adapter_cls: type, where: str) -> None:
    """A task scores one kind of handle (``modality``); refuse a task that cannot score the adapter's."""
    wanted = getattr(task_cls, "modality", None)
    have = getattr(adapter_cls, "modality", None)
    if wanted is None or have is None:
        return  # a plugin that does not declare its modality is trusted
    wanted = (wanted,) if isinstance(wanted, str) else tuple(wanted)
    if have not in wanted:
        raise ConfigError(
            f"{where} '{getattr(task_cls, 'name', task_cls.__name__)}' scores {' or '.join(wanted)} models, "
            f"but the {have} adapter gives {have} models; pick a {have} task or a {' / '.join(wanted)} adapter"
        )


def _validate_merge_keys(merge: dict) -> None:
    """A misspelt merge key (``+merge.params_=...``) would be ignored: refuse it, naming the close
    match (a space key too: ``merge.granularty`` -> space.granularity) and the keys merge takes."""
    for key in merge:
        if key not in MERGE_SECTION_KEYS:
            close = difflib.get_close_matches(str(key), MERGE_SECTION_KEYS, n=1)
            moved = difflib.get_close_matches(str(key), list(MOVED_KEYS), n=1)
            hint = (f" (did you mean merge.{close[0]}?)" if close
                    else f" (did you mean space.{MOVED_KEYS[moved[0]]}?)" if moved else "")
            raise ConfigError(f"unknown key merge.{key}{hint}; merge takes: {', '.join(MERGE_SECTION_KEYS)} "
                              "(what the search evolves is the space group's: space.granularity, space.evolve, ...)")


def _validate_budget(c: dict) -> None:
    opt = c["optimizer"]
    if opt.get("popsize") is not None:
        _int(opt["popsize"], "optimizer.popsize", 2)
    _int(opt.get("generations"), "optimizer.generations", 0)
    if opt.get("sigma0") is not None and _number(opt["sigma0"], "optimizer.sigma0") <= 0:
        raise ConfigError(f"optimizer.sigma0 must be > 0, got {opt['sigma0']}")
    if opt.get("max_evals") is not None:
        _int(opt["max_evals"], "optimizer.max_evals", 1)
    _int(c.get("seed", 0), "seed", 0)
    if c.get("threads") is not None:
        _int(c["threads"], "threads", 1)


def _validate_final_eval(c: dict) -> None:
    front_size = (c.get("final_eval") or {}).get("front_size")
    if front_size is not None:
        _int(front_size, "final_eval.front_size", 1)

    for name, params in ((c.get("final_eval") or {}).get("baselines") or {}).items():
        base_spec = get_method(name)
        if not isinstance(params, dict):
            raise ConfigError(f"final_eval.baselines.{name} must be a mapping of parameters")
        density = params.get("density")
        if density is not None and not (0 < _number(density, f"final_eval.baselines.{name}.density") <= 1):
            raise ConfigError(f"final_eval.baselines.{name}.density must lie in (0, 1], got {density}")
        unknown = set(params) - set(base_spec.tensor_params) - set(base_spec.global_params)
        if unknown:
            raise ConfigError(f"final_eval.baselines.{name} has unknown parameters {sorted(unknown)}")
