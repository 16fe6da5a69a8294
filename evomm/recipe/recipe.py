"""Recipes: a merge written down as plain data.

A recipe names the adapter, the source models, the base, the merge method and, for every tensor,
the method's parameters. Parameters live in an ordered list of *entries*; a tensor takes the
parameters of the first entry whose ``groups`` contain its group and whose ``filter`` is a
substring of its name (``None`` matches everything), the way mergekit resolves
``{filter, value}`` lists. Values are what mergekit accepts: a number, a list of numbers
interpolated over the layer stack by the slot's ``t``, or a list of ``{filter, value}``
conditions. Per-source parameters (``weight``, ``density``) hold one such value per source.

``best_recipe.yaml`` is a complete recipe: ``evomm merge best_recipe.yaml OUT`` rebuilds the
same model from the sources, bit for bit.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from evomm.builtin import portable_data
from evomm.errors import ConfigError

RECIPE_VERSION = 1


@dataclass
class Entry:
    """Parameters for the tensors of some groups (and, optionally, a name filter)."""

    params: dict[str, Any]
    groups: list[str] | None = None  # None: every group
    filter: str | None = None  # substring of the tensor name; None: every tensor

    def matches(self, group: str, tensor_name: str) -> bool:
        if self.groups is not None and group not in self.groups:
            return False
        return self.filter is None or self.filter == "*" or self.filter in tensor_name


@dataclass
class Recipe:
    adapter: str
    method: str
    models: list[str]
    base: str | None = None
    method_params: dict[str, Any] = field(default_factory=dict)  # method-wide, e.g. normalize
    entries: list[Entry] = field(default_factory=list)
    seed: int = 0  # DARE masks: per-tensor seeds derive from this
    dtype: str | None = None  # storage dtype of the written model; None: the target's
    adapter_options: dict[str, Any] = field(default_factory=dict)
    route: dict[str, Any] | None = None  # data-flow-space route, when there is one
    notes: dict[str, Any] = field(default_factory=dict)  # facts the adapter recorded (e.g. vocab rows)

    # ---- resolution -------------------------------------------------------------------
    def entry_for(self, group: str, tensor_name: str) -> Entry | None:
        for entry in self.entries:
            if entry.matches(group, tensor_name):
                return entry
        return None

    def params_for(self, group: str, tensor_name: str, t: float) -> dict[str, Any]:
        """The method parameters for one tensor: method-wide values overridden by its entry."""
        merged: dict[str, Any] = {}
        per_source = per_source_params(self.method)
        for key, value in self.method_params.items():
            if isinstance(value, list) and key in per_source:
                merged[key] = [evaluate_setting(v, tensor_name, t) for v in value]
            else:
                merged[key] = evaluate_setting(value, tensor_name, t)
        entry = self.entry_for(group, tensor_name)
        if entry is not None:
            for key, value in entry.params.items():
                if isinstance(value, list) and key in per_source:
                    merged[key] = [evaluate_setting(v, tensor_name, t) for v in value]
                else:
                    merged[key] = evaluate_setting(value, tensor_name, t)
        return merged

    # ---- files ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["entries"] = [_entry_to_dict(e) for e in self.entries]
        # Built-in models are written as builtin:<name>, never as this machine's cache path.
        return {"evomm_recipe": RECIPE_VERSION, **portable_data(d)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recipe:
        if not isinstance(d, dict):
            raise ConfigError(f"a recipe must be a mapping, got {type(d).__name__}")
        d = dict(d)
        d.pop("evomm_recipe", None)
        for key in ("adapter", "method", "models"):
            if key not in d:
                raise ConfigError(f"recipe is missing the required key '{key}'")
        if not isinstance(d["models"], list) or not d["models"] or not all(isinstance(m, str) for m in d["models"]):
            raise ConfigError("recipe key 'models' must be a non-empty list of model ids or paths")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"recipe has unknown keys {unknown}; known keys: {sorted(known)}")
        entries = d.pop("entries", []) or []
        if not isinstance(entries, list):
            raise ConfigError("recipe key 'entries' must be a list")
        recipe = cls(**d)
        recipe.entries = [_entry_from_dict(e, i) for i, e in enumerate(entries)]
        if not isinstance(recipe.method_params, dict):
            raise ConfigError("recipe key 'method_params' must be a mapping")
        if not isinstance(recipe.seed, int) or isinstance(recipe.seed, bool):
            raise ConfigError(f"recipe key 'seed' must be an integer, got {recipe.seed!r}")
        return recipe

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        return cls.from_dict(load_yaml(path))

    def copy(self) -> Recipe:
        return copy.deepcopy(self)


def baseline_recipe(template: Recipe, method: str, params: dict[str, Any]) -> Recipe:
    """A hand-set merge: the same value for every source and every tensor."""
    n = len(template.models)
    recipe = template.copy()
    recipe.method = method
    recipe.method_params = {}
    recipe.route = None
    per_source = per_source_params(method)
    recipe.entries = [Entry(params={k: ([float(v)] * n if k in per_source else v) for k, v in params.items()})]
    return recipe


def fixed_params(method: str, params: dict[str, Any], n: int) -> dict[str, Any]:
    """A config's fixed method parameters (``merge.params``) as recipe values: a per-source
    parameter given as one setting (a number or a per-layer list whose length is not ``n``)
    applies to every source; a list of ``n`` settings is one per source."""
    per_source = per_source_params(method)
    return {
        k: (v if k not in per_source or (isinstance(v, list) and len(v) == n) else [v] * n)
        for k, v in params.items()
    }


def per_source_params(method: str) -> set[str]:
    """Parameters that take one value per source model (``weight``, ``density``, ...)."""
    from evomm.merging.methods import get_method  # methods import nothing from here; keep it lazy

    return set(get_method(method).tensor_params)


def _entry_to_dict(e: Entry) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if e.groups is not None:
        d["groups"] = list(e.groups)
    if e.filter is not None:
        d["filter"] = e.filter
    d["params"] = e.params
    return d


def _entry_from_dict(d: Any, index: int) -> Entry:
    if not isinstance(d, dict) or "params" not in d:
        raise ConfigError(f"recipe entry {index} must be a mapping with a 'params' mapping")
    if not isinstance(d["params"], dict):
        raise ConfigError(f"recipe entry {index}: 'params' must be a mapping")
    groups = d.get("groups")
    if groups is not None and (not isinstance(groups, list) or not all(isinstance(g, str) for g in groups)):
        raise ConfigError(f"recipe entry {index}: 'groups' must be a list of group names")
    flt = d.get("filter")
    if flt is not None and not isinstance(flt, str):
        raise ConfigError(f"recipe entry {index}: 'filter' must be a string")
    extra = set(d) - {"params", "groups", "filter"}
    if extra:
        raise ConfigError(f"recipe entry {index} has unknown keys {sorted(extra)}")
    return Entry(params=dict(d["params"]), groups=groups, filter=flt)


def load_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such file: {path}")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def evaluate_setting(setting: Any, tensor_name: str, t: float) -> Any:
    """Evaluate a mergekit parameter setting for one tensor at layer position ``t`` in [0, 1].

    - a scalar is itself;
    - a list of numbers is a gradient: linearly interpolated at ``t`` over evenly spaced knots;
    - a list of ``{filter, value}`` mappings: the first whose filter is in the tensor name (or
      has no filter) gives the value, itself evaluated recursively.
    """
    if isinstance(setting, (bool, int, float, str)) or setting is None:
        return setting
    if isinstance(setting, list):
        if setting and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(math.floor(scaled))
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if setting and all(isinstance(v, dict) for v in setting):
            for cond in setting:
                if "value" not in cond:
                    raise ConfigError(f"a {{filter, value}} condition has no 'value': {cond}")
                flt = cond.get("filter")
                if flt is None or flt == "*" or flt in tensor_name:
                    return evaluate_setting(cond["value"], tensor_name, t)
            return None
    if isinstance(setting, dict) and "value" in setting:
        return evaluate_setting([setting], tensor_name, t)
    raise ConfigError(
        f"cannot read parameter value {setting!r}: use a number, a list of numbers "
        "(interpolated over layers) or a list of {filter, value} conditions"
    )


def _leaves(setting: Any) -> list[Any]:
    """Every plain value inside a mergekit setting (gradients and {filter, value} conditions)."""
    if isinstance(setting, list):
        return [leaf for item in setting for leaf in _leaves(item)]
    if isinstance(setting, dict):
        if "value" not in setting:
            raise ConfigError(f"a {{filter, value}} condition has no 'value': {setting}")
        return _leaves(setting["value"])
    return [setting]


def check_settings(spec: Any, params: dict[str, Any], n: int, where: str) -> None:
    """Check every value of a recipe's parameter mapping (per-source lists, per-layer gradients
    and {filter, value} conditions included) against a method's names and ranges."""
    known = {**spec.tensor_params, **spec.global_params}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ConfigError(f"{where}: method '{spec.name}' does not take {unknown}; known: {sorted(known)}")
    # check_params also insists on required parameters; fill those so one key is checked at a time
    filler = {k: [1.0] * n for k, default in spec.tensor_params.items() if default is None}
    for key, setting in params.items():
        try:
            if key in spec.tensor_params:
                if not isinstance(setting, list) or len(setting) != n:
                    raise ConfigError(f"'{key}' needs a list of one value per model ({n}), got {setting!r}")
                for value in (leaf for item in setting for leaf in _leaves(item)):
                    spec.check_params({**filler, key: [value] * n}, n)
            else:
                for value in _leaves(setting):
                    spec.check_params({**filler, key: value}, n)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None


def check_recipe(recipe: Recipe) -> None:
    """Validate a whole recipe before any model loads: names, counts and every parameter value."""
    from evomm import plugins
    from evomm.errors import UnknownNameError
    from evomm.merging.methods import get_method

    # A user's adapter is recorded by its import path; only a bare name must be a built-in.
    if not isinstance(recipe.adapter, str) or ("." not in recipe.adapter and recipe.adapter not in plugins.names("adapter")):
        raise UnknownNameError(
            f"unknown adapter '{recipe.adapter}'; built-in adapters: {', '.join(plugins.names('adapter'))}, "
            "or the import path of your own adapter class"
        )
    if not isinstance(recipe.method, str):
        raise ConfigError(f"recipe key 'method' must be a merge method name, got {recipe.method!r}")
    spec = get_method(recipe.method)
    if recipe.base is not None and not isinstance(recipe.base, str):
        raise ConfigError(f"recipe key 'base' must be a hub id or path, got {recipe.base!r}")
    if spec.needs_base and recipe.base is None:
        raise ConfigError(f"merge method '{spec.name}' needs a base model: set 'base' (base_model in mergekit)")
    if recipe.dtype not in (None, "float32", "float16", "bfloat16"):
        raise ConfigError(f"recipe key 'dtype' must be float32, float16 or bfloat16, got {recipe.dtype!r}")
    for key in ("adapter_options", "notes"):
        if not isinstance(getattr(recipe, key), dict):
            raise ConfigError(f"recipe key '{key}' must be a mapping")
    n = len(recipe.models)

    def check(params: dict[str, Any], where: str) -> None:
        check_settings(spec, params, n, where)

    check(recipe.method_params, "method_params")
    for i, entry in enumerate(recipe.entries):
        check(entry.params, f"entry {i}")
    if recipe.route is not None:
        from evomm.recipe.route import route_of

        route_of(recipe)
        models = recipe.route.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise ConfigError("recipe route: 'models' must list the route models (model B, ...)")
