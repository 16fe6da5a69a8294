"""Config validation that runs before any model or dataset loads.

A mistake in a config must fail in the first second, not after loading 30 GB of weights. Each
check raises ConfigError with a message that names the key and says what to change.
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

from evomm import plugins
from evomm.adapters.availability import check_available
from evomm.adapters.loading import check_ref
from evomm.errors import ConfigError
from evomm.merging.methods import get_method
from evomm.recipe.recipe import check_settings, fixed_params
from evomm.search.scoring import FitnessSettings
from evomm.search.space import GRANULARITIES


def _int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")
    return value


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def validate_config(c: dict) -> None:
    """Check a resolved run config (a plain dict) without loading anything heavy."""
    for section in ("adapter", "merge", "optimizer", "task"):
        if not isinstance(c.get(section), dict):
            raise ConfigError(f"the config has no '{section}' section; pick one with {section}=<name>")

    _validate_plugins(c)
    merge = c["merge"]
    _validate_merge_keys(merge)
    if merge.get("method") in ("dfs", "ps_dfs"):
        _validate_routing(c)
    else:
        _validate_parameter_space(c)
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
    adapter, merge = c["adapter"], c["merge"]
    modality = getattr(plugins.load_class("adapter", plugins.reference(adapter, "adapter")), "modality", None)
    refs = [(ref, "model") for ref in adapter.get("models") or []]
    refs += [(ref, "model") for ref in merge.get("route_models") or []]
    if adapter.get("base") is not None:
        refs.append((adapter["base"], "base model"))
    for ref, what in dict.fromkeys(refs):
        check_available(ref, what, modality, adapter.get("single_file_config"))


def _validate_plugins(c: dict) -> None:
    """Adapter, optimizer and task: each resolves to a class that takes every key its section sets,
    and the task scores what the adapter produces."""
    adapter, opt, task = c["adapter"], c["optimizer"], c["task"]
    adapter_cls = plugins.check_options("adapter", plugins.reference(adapter, "adapter"), plugins.options(adapter))
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


def _validate_routing(c: dict) -> None:
    adapter, merge = c["adapter"], c["merge"]
    if getattr(plugins.load_class("adapter", plugins.reference(adapter, "adapter")), "modality", None) not in ("llm", "vlm"):
        raise ConfigError(f"merge={merge['method']} routes through decoder stacks: use adapter=llm or adapter=vlm")
    models = adapter.get("models")
    if not isinstance(models, list) or not models or models == "???":
        raise ConfigError("adapter.models must list the models to route through (model A first for dfs)")
    for ref in models:
        check_ref(ref)
    if merge["method"] == "dfs" and len(models) < 2:
        raise ConfigError("merge=dfs routes between models: adapter.models needs model A and at least one more")
    if merge["method"] == "ps_dfs":
        ps = merge.get("ps_recipe")
        if ps == "???":
            raise ConfigError("merge.ps_recipe is not set: give the best_recipe.yaml of a parameter-space run (model A)")
        if ps is not None and not Path(ps).is_file():
            raise ConfigError(f"merge.ps_recipe {ps} does not exist: give the best_recipe.yaml of a parameter-space run")
        if ps is None:
            fallback = merge.get("ps_fallback") or {}
            spec = get_method(fallback.get("method"))
            if spec.needs_base and adapter.get("base") is None:
                raise ConfigError(f"merge.ps_fallback uses '{spec.name}', which needs adapter.base")
    for ref in merge.get("route_models") or []:
        check_ref(ref)
    _int(merge.get("repeats"), "merge.repeats", 1)
    w_range = merge.get("w_range")
    if not (isinstance(w_range, list) and len(w_range) == 2):
        raise ConfigError(f"merge.w_range must be [low, high], got {w_range!r}")
    low, high = (_number(v, "merge.w_range") for v in w_range)
    if not low <= 1.0 <= high:
        raise ConfigError(f"merge.w_range must contain 1.0 (no scaling), got {w_range}")


def _validate_parameter_space(c: dict) -> None:
    adapter, merge = c["adapter"], c["merge"]
    spec = get_method(merge.get("method"))

    models = adapter.get("models")
    if models in (None, "???") or not isinstance(models, list) or not models:
        raise ConfigError("adapter.models must list the models to merge (hub ids or paths), e.g. adapter.models=[a/b,c/d]")
    for ref in models:
        check_ref(ref)
    if adapter.get("base") is not None:
        check_ref(adapter["base"], "base model")
    if spec.needs_base and adapter.get("base") is None:
        raise ConfigError(f"merge method '{spec.name}' computes task vectors and needs adapter.base (the common ancestor)")
    if spec.exact_sources is not None and len(models) != spec.exact_sources:
        raise ConfigError(
            f"merge method '{spec.name}' takes exactly {spec.exact_sources} model(s) besides the base; "
            f"adapter.models has {len(models)}"
        )

    if merge.get("granularity") not in GRANULARITIES:
        raise ConfigError(f"unknown merge.granularity '{merge.get('granularity')}'; known: {', '.join(GRANULARITIES)}")
    _int(merge.get("group_size", 1), "merge.group_size", 1)
    known_params = set(spec.tensor_params) | set(spec.global_params)
    evolve = merge.get("evolve") or []
    for name in evolve:
        if name not in known_params:
            raise ConfigError(
                f"merge.evolve names '{name}', which method '{spec.name}' does not take; "
                f"its parameters: {', '.join(sorted(known_params))}"
            )
    bounds = merge.get("bounds") or {}
    for name in evolve:
        b = bounds.get(name)
        if not (isinstance(b, list) and len(b) == 2):
            raise ConfigError(f"merge.bounds.{name} must be [low, high], got {b!r}")
        low, high = (_number(v, f"merge.bounds.{name}") for v in b)
        if low > high:
            raise ConfigError(f"merge.bounds.{name} must have low <= high, got {b}")
        if name == "density" and not (0 < low and high <= 1):
            raise ConfigError(f"density must lie in (0, 1]; merge.bounds.density is {b}")
    _validate_fixed_params(merge, spec, evolve, len(models))


def _validate_fixed_params(merge: dict, spec: Any, evolve: list, n_sources: int) -> None:
    """merge.params: known names, every value in range (per-source and per-layer lists too), and
    none that the search also evolves (the evolved value would silently override it)."""
    params = merge.get("params") or {}
    if not isinstance(params, dict):
        raise ConfigError(f"merge.params must map parameter names to values, got {params!r}")
    known_params = set(spec.tensor_params) | set(spec.global_params)
    unknown = set(params) - known_params
    if unknown:
        raise ConfigError(
            f"merge.params has {sorted(unknown)}, which method '{spec.name}' does not take; "
            f"its parameters: {', '.join(sorted(known_params))}"
        )
    for key in params:
        if key in evolve:
            rest = [e for e in evolve if e != key]
            raise ConfigError(
                f"merge.params.{key} fixes a parameter that merge.evolve={list(evolve)} also evolves (the "
                f"evolved value would override it): drop one, '~merge.params.{key}' or merge.evolve=[{','.join(rest)}]"
            )
    check_settings(spec, fixed_params(spec.name, params, n_sources), n_sources, "merge.params")


MERGE_KEYS = {
    "parameter space": ("method", "granularity", "group_size", "filters", "evolve", "bounds", "params"),
    "dfs": ("method", "repeats", "w_range", "x0_margin"),
    "ps_dfs": ("method", "ps_recipe", "ps_fallback", "route_models", "repeats", "w_range", "x0_margin"),
}


def _validate_merge_keys(merge: dict) -> None:
    """A misspelt merge key (``+merge.granularty=layer``) would be ignored: refuse it, naming the
    close match and the keys the section takes."""
    known = MERGE_KEYS.get(merge.get("method"), MERGE_KEYS["parameter space"])
    for key in merge:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean merge.{close[0]}?)" if close else ""
            raise ConfigError(f"unknown key merge.{key}{hint}; merge={merge.get('method')} takes: {', '.join(known)}")


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
