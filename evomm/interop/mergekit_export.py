"""Write a parameter-space text-LLM recipe as a mergekit YAML config (``evomm export-mergekit``).

The reverse of ``mergekit_config.py``. A recipe resolves a tensor's parameters from the first
entry whose groups hold the tensor's group and whose filter is in its name; mergekit resolves a
model's parameter from the first ``{filter, value}`` condition whose filter is in the tensor name.
So each entry becomes, in entry order, one condition per group, with the group written as a
tensor-name substring (Llama/Mistral/Qwen2 names, e.g. ``model.layers.3.self_attn.q_proj.weight``):

    layers.i            -> "layers.{i}."        (the dot keeps layers.1 from matching layers.10)
    layers.i + filter f -> "layers.{i}.{f}"     (f must follow the layer prefix: self_attn, mlp, ...)
    embed               -> "embed_tokens"
    norm                -> "model.norm."
    head                -> "lm_head"
    groups None         -> the entry's filter, or no filter at all

Per-source parameters (``weight``, ``density``, ...) go into each model's ``parameters`` as its
own condition list; method-wide ones that entries set go to the top-level ``parameters`` as a
condition list; the remaining method-wide values (given or evomm's defaults) are written out so
that mergekit's own defaults never decide anything. An entry that leaves a parameter unset takes
the recipe-wide value (``method_params``) or the method default, as evomm does. Gradient values
(lists of numbers) are kept as they are: mergekit evaluates them at the same per-layer position
t = i/(N-1) (t = 0 outside the layer stack) as evomm.

When the first model is a local checkpoint, its tensor names are read from the safetensors
headers and every tensor is checked to take the same entry in both tools before anything is
written.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from evomm import builtin
from evomm.errors import ConfigError
from evomm.recipe.recipe import Entry, Recipe, check_recipe

# Methods mergekit 0.1.5 has under the same name and with the same semantics as evomm's.
MERGEKIT_METHODS = (
    "linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "breadcrumbs", "della", "slerp", "model_stock",
)
# Fixed tensor-name substrings of the non-layer groups of a decoder LM.
GROUP_SUBSTRINGS = {"embed": "embed_tokens", "norm": "model.norm.", "head": "lm_head"}
_LAYER_GROUP = re.compile(r"layers\.(\d+)")
_MISSING = object()


def check_exportable(recipe: Recipe) -> None:
    """Refuse, on one line, what mergekit cannot express."""
    if recipe.route is not None:
        raise ConfigError(
            "the recipe has a data-flow-space route (dfs / ps_dfs); mergekit cannot express layer routing, "
            "so only parameter-space recipes can be exported (rebuild routed models with evomm merge)"
        )
    if recipe.adapter != "llm":
        raise ConfigError(
            f"the recipe's adapter is '{recipe.adapter}'; mergekit export covers text LLMs (adapter llm) only "
            "(rebuild this model with evomm merge)"
        )
    if recipe.method not in MERGEKIT_METHODS:
        raise ConfigError(
            f"merge method '{recipe.method}' has no mergekit equivalent; exportable methods: {', '.join(MERGEKIT_METHODS)}"
        )


def group_substring(group: str, flt: str | None, where: str) -> str | None:
    """The mergekit filter that selects the tensors of ``group`` (and the entry's ``flt``)."""
    flt = None if flt in (None, "*") else flt
    m = _LAYER_GROUP.fullmatch(group)
    if m:
        return f"layers.{m.group(1)}." if flt is None else f"layers.{m.group(1)}.{flt}"
    if group not in GROUP_SUBSTRINGS:
        raise ConfigError(
            f"{where}: group '{group}' has no tensor-name equivalent in mergekit "
            f"(exportable groups: layers.i, {', '.join(GROUP_SUBSTRINGS)})"
        )
    fixed = GROUP_SUBSTRINGS[group]
    if flt is not None and flt not in fixed:
        raise ConfigError(
            f"{where}: group '{group}' with filter '{flt}' cannot be one mergekit name filter; "
            "drop the filter or split the entry"
        )
    return fixed


def entry_filters(entry: Entry, index: int) -> list[str | None]:
    """The mergekit filters of one entry, in order; ``[None]`` for an entry that matches every tensor."""
    where = f"entry {index}"
    if entry.groups is None:
        return [None if entry.filter in (None, "*") else entry.filter]
    if not entry.groups:
        raise ConfigError(f"{where} lists no groups; it matches nothing (remove it or set groups)")
    return [group_substring(g, entry.filter, where) for g in entry.groups]


def _first_match(filters: list[list[str | None]], name: str) -> int | None:
    for i, fs in enumerate(filters):
        if any(f is None or f in name for f in fs):
            return i
    return None


def verify_against_names(recipe: Recipe, filters: list[list[str | None]], tensor_names: list[str]) -> None:
    """Every tensor must take the same entry under evomm's rule and under mergekit's filters."""
    from evomm.adapters.llm_names import llm_group

    for name in tensor_names:
        ours = next((i for i, e in enumerate(recipe.entries) if e.matches(llm_group(name), name)), None)
        theirs = _first_match(filters, name)
        if ours != theirs:
            raise ConfigError(
                f"tensor '{name}' takes entry {ours} in the recipe but entry {theirs} as a mergekit name filter "
                f"({filters[ours if ours is not None else theirs]}); rewrite the entry's filter so it follows the "
                "layer prefix (e.g. self_attn, mlp, input_layernorm)"
            )


def checkpoint_tensor_names(ref: str) -> list[str] | None:
    """Tensor names of a local safetensors checkpoint (headers only); None when not local."""
    folder = Path(builtin.resolve(ref) if builtin.is_builtin(ref) else ref)
    if not folder.is_dir():
        return None
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return sorted(json.loads(index.read_text())["weight_map"])
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    from safetensors import safe_open

    names: list[str] = []
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names += list(handle.keys())
    return sorted(names)


def _is_conditions(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _conditions(
    entries: list[Entry], filters: list[list[str | None]], key: str, pick, fallback: Any, covered: bool = False
) -> Any:
    """One parameter's mergekit setting: a {filter, value} list in entry order, simplified.

    ``pick`` takes an entry's value for this parameter (the source's element for per-source
    parameters); ``fallback`` is the value where an entry leaves the parameter unset and where
    no entry matches (``_MISSING``: none); ``covered``: every tensor is known to match an entry,
    so that last fallback is left out.
    """
    conds: list[dict] = []
    exhaustive = False  # an entry matching every tensor ends the resolution: later ones never apply
    for i, (entry, fs) in enumerate(zip(entries, filters)):
        value = pick(entry.params[key]) if key in entry.params else fallback
        if value is _MISSING:
            raise ConfigError(f"entry {i} does not set '{key}' and the method has no default for it; set it")
        unconditional = fs == [None]
        if _is_conditions(value):
            if not unconditional:
                raise ConfigError(
                    f"entry {i}: a {{filter, value}} list for '{key}' inside an entry limited to groups or a "
                    "filter cannot be written as mergekit conditions; give a number or a per-layer list"
                )
            conds += [_plain_condition(c) for c in value]
        else:
            conds += [{"value": value} if f is None else {"filter": f, "value": value} for f in fs]
        if unconditional:
            exhaustive = True
            break
    if not exhaustive and not covered and fallback is not _MISSING:
        conds += [_plain_condition(c) for c in fallback] if _is_conditions(fallback) else [{"value": fallback}]
    if len(conds) == 1 and "filter" not in conds[0]:
        return conds[0]["value"]
    return conds


def _plain_condition(cond: Any) -> dict:
    """A recipe condition as mergekit writes one: ``{filter, value}`` with a number or a gradient."""
    if not isinstance(cond, dict) or "value" not in cond or _is_conditions(cond["value"]):
        raise ConfigError(f"cannot write {cond!r} for mergekit: a condition holds a number or a list of numbers")
    flt = cond.get("filter")
    return {"value": cond["value"]} if flt in (None, "*") else {"filter": flt, "value": cond["value"]}


def recipe_to_mergekit(recipe: Recipe, tensor_names: list[str] | None = None) -> dict[str, Any]:
    """The mergekit config (a plain dict) that merges the same tensors as ``recipe``."""
    from evomm.merging.methods import get_method

    check_exportable(recipe)
    check_recipe(recipe)
    spec = get_method(recipe.method)
    n = len(recipe.models)
    filters = [entry_filters(e, i) for i, e in enumerate(recipe.entries)]
    covered = False
    if tensor_names is not None:
        verify_against_names(recipe, filters, tensor_names)
        covered = all(_first_match(filters, name) is not None for name in tensor_names)

    in_entries: list[str] = list(dict.fromkeys(k for e in recipe.entries for k in e.params))
    model_params: list[dict[str, Any]] = [{} for _ in range(n)]
    top: dict[str, Any] = {}
    for key in in_entries:
        if key in spec.tensor_params:
            for s in range(n):
                if key in recipe.method_params:
                    fallback = recipe.method_params[key][s]
                else:
                    fallback = _MISSING if spec.tensor_params[key] is None else spec.tensor_params[key]
                model_params[s][key] = _conditions(recipe.entries, filters, key, lambda v, s=s: v[s], fallback, covered)
        else:
            fallback = recipe.method_params.get(key, spec.global_params.get(key))
            fallback = _MISSING if fallback is None else fallback
            top[key] = _conditions(recipe.entries, filters, key, lambda v: v, fallback, covered)
    for key, value in recipe.method_params.items():
        if key in in_entries:
            continue
        if key in spec.tensor_params:  # one value per source, the same for every tensor
            for s in range(n):
                model_params[s][key] = value[s]
        else:
            top[key] = value
    for key, default in spec.global_params.items():  # explicit: mergekit's defaults never decide
        if key not in top and default is not None:
            top[key] = default

    config: dict[str, Any] = {"merge_method": recipe.method}
    if spec.needs_base:
        config["base_model"] = recipe.base
    models = [{"model": ref, **({"parameters": p} if p else {})} for ref, p in zip(recipe.models, model_params)]
    if recipe.method == "slerp":  # mergekit's slerp takes the base as one of its two inputs
        models.insert(0, {"model": recipe.base})
    config["models"] = models
    if top:
        config["parameters"] = top
    config["dtype"] = recipe.dtype or recipe.adapter_options.get("dtype") or "float32"
    return config


def header_lines(recipe: Recipe, source: str | None, checked: bool) -> list[str]:
    from evomm.merging.methods import get_method

    lines = [
        f"mergekit config exported by `evomm export-mergekit`{f' from {source}' if source else ''}.",
        "Run it with: mergekit-yaml THIS_FILE OUT_DIR",
        "Conditions are matched on tensor names, first match wins, in the order of the recipe's entries.",
    ]
    if get_method(recipe.method).random:
        lines += [
            f"WARNING: {recipe.method} drops entries at random. The YAML is valid, but mergekit draws its own",
            "masks (and rescales by L1 norm, evomm by 1/density), so its model differs from `evomm merge`",
            "(seeded by the recipe). Only the deterministic methods give the same tensors in both tools.",
        ]
    if not checked:
        lines.append("The name filters were not checked against a checkpoint (the first model is not a local folder).")
    lines.append("mergekit copies the base model's tokenizer; evomm saves that of adapter_options.tokenizer_from.")
    return lines


def mergekit_yaml(recipe: Recipe, source: str | None = None, local_paths: bool = False) -> str:
    """The YAML text, with a comment header, checked against local tensor names when it can be.

    Built-in models are written as ``builtin:<name>`` (the same on every machine), which mergekit
    cannot read; ``local_paths`` writes this machine's folders for them instead.
    """
    recipe = Recipe.from_dict(recipe.to_dict())  # built-in models by name, whatever the recipe held
    refs = [*recipe.models, *([recipe.base] if recipe.base else [])]
    builtins = [r for r in dict.fromkeys(refs) if builtin.is_builtin(r)]
    if local_paths:
        recipe.models = [builtin.resolve(r) for r in recipe.models]
        recipe.base = builtin.resolve(recipe.base) if recipe.base else None
    names = checkpoint_tensor_names(recipe.models[0]) if recipe.models else None
    config = recipe_to_mergekit(recipe, tensor_names=names)
    lines = header_lines(recipe, source, checked=names is not None)
    if builtins and not local_paths:
        lines += [
            f"{', '.join(builtins)}: evomm's built-in models, which mergekit cannot read by name.",
            "For a runnable config on this machine: evomm export-mergekit --local-paths (writes their folders).",
        ]
    header = "".join(f"# {line}\n" for line in lines)
    return header + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def export_mergekit(recipe_path: str | Path, out: str | Path | None = None, local_paths: bool = False) -> str:
    """Read an evomm recipe (a file, or a run directory holding best_recipe.yaml); write or return YAML."""
    path = Path(recipe_path)
    if path.is_dir():
        path = path / "best_recipe.yaml"
    if not path.is_file():
        raise ConfigError(f"no recipe at {path}: give best_recipe.yaml or the run directory that holds it")
    recipe = Recipe.load(path)
    text = mergekit_yaml(recipe, source=str(path), local_paths=local_paths)
    if out is not None:
        Path(out).write_text(text)
    return text
