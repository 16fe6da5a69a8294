"""Read mergekit YAML configs as evomm recipes.

Supported: ``merge_method``, ``base_model``, ``models[].model``, ``models[].parameters``
(``weight``, ``density`` as numbers, per-layer lists or ``{filter, value}`` lists), top-level
``parameters`` (``normalize``, ``t``, ``lambda``, ``rescale``, and defaults for ``weight`` /
``density``), ``dtype``. Not supported (refused with a message): ``slices``, ``modules``.
The same semantics as mergekit: a model's own setting wins; where it gives nothing for a tensor,
the top-level value applies.
"""

from __future__ import annotations

from typing import Any

from evomm.errors import ConfigError
from evomm.merging.methods import get_method
from evomm.recipe.recipe import Entry, Recipe

_IGNORED = {"tokenizer_source", "tokenizer", "chat_template", "out_dtype", "name"}


def is_mergekit_config(d: Any) -> bool:
    return isinstance(d, dict) and "merge_method" in d


def _model_ref(item: Any, index: int) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict) and isinstance(item.get("model"), str):
        return item["model"]
    raise ConfigError(f"mergekit config: models[{index}] needs a 'model' (hub id or path)")


def _with_fallback(setting: Any, fallback: Any) -> Any:
    """A model's setting, falling back to the top-level one where its conditions match nothing."""
    if fallback is None:
        return setting
    if setting is None:
        return fallback
    if isinstance(setting, list) and setting and all(isinstance(c, dict) for c in setting):
        return setting + [{"value": fallback}]
    return setting


def recipe_from_mergekit(d: dict) -> Recipe:
    if not is_mergekit_config(d):
        raise ConfigError("not a mergekit config: it has no 'merge_method'")
    for key in ("slices", "modules"):
        if d.get(key):
            raise ConfigError(f"mergekit '{key}' configs are not supported; list the models under 'models'")
    unknown = set(d) - {"merge_method", "base_model", "models", "parameters", "dtype", "slices", "modules"} - _IGNORED
    if unknown:
        raise ConfigError(f"mergekit config has unknown keys {sorted(unknown)}")
    if not isinstance(d["merge_method"], str):
        raise ConfigError(f"mergekit config: merge_method must be a name, got {d['merge_method']!r}")
    spec = get_method(d["merge_method"])
    models = d.get("models")
    if not isinstance(models, list) or not models:
        raise ConfigError("mergekit config: 'models' must be a non-empty list")
    base = d.get("base_model")
    if base is not None and not isinstance(base, str):
        raise ConfigError("mergekit config: base_model must be a hub id or path")
    top = d.get("parameters") or {}
    if not isinstance(top, dict):
        raise ConfigError("mergekit config: 'parameters' must be a mapping")

    sources: list[str] = []
    per_model: list[dict] = []
    for i, item in enumerate(models):
        ref = _model_ref(item, i)
        params = (item.get("parameters") if isinstance(item, dict) else None) or {}
        if not isinstance(params, dict):
            raise ConfigError(f"mergekit config: models[{i}].parameters must be a mapping")
        # Task-vector methods and slerp use the base only as the anchor, never as a source.
        if spec.needs_base and ref == base:
            continue
        sources.append(ref)
        per_model.append(params)
    if not sources:
        raise ConfigError("mergekit config: no models to merge besides the base model")

    entry_params: dict[str, Any] = {}
    for name in spec.tensor_params:
        values = [_with_fallback(p.get(name), top.get(name)) for p in per_model]
        if all(v is None for v in values):
            continue
        if any(v is None for v in values):
            if spec.tensor_params[name] is None:
                missing = [sources[i] for i, v in enumerate(values) if v is None]
                raise ConfigError(f"mergekit config: '{name}' is required for every model; missing for {missing}")
            values = [spec.tensor_params[name] if v is None else v for v in values]
        entry_params[name] = values
    # Top-level per-source values were folded into the entry above as fallbacks.
    method_params = {k: v for k, v in top.items() if k not in spec.tensor_params and k != "int8_mask"}
    if "tie_order" in spec.global_params:  # a mergekit YAML keeps the ties mergekit keeps
        method_params.setdefault("tie_order", "mergekit")
    dtype = d.get("dtype")
    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise ConfigError(f"mergekit config: dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return Recipe(
        adapter="llm",
        method=spec.name,
        models=sources,
        base=base,
        method_params=method_params,
        entries=[Entry(params=entry_params)] if entry_params else [],
        seed=0,
        dtype=dtype,
        adapter_options={"dtype": dtype} if dtype else {},
    )
