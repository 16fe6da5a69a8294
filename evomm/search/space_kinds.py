"""Search-space kinds: the ``space`` config group, one class per option, plugins like tasks.

A kind is built from its config section (``name: ps`` or ``_target_: my_pkg.MySpace``; the other
keys are its constructor's arguments) and offers two methods:

- ``validate(c)``: check the whole resolved config for this kind, cheaply (no model loads);
- ``build(c)``: load the models and return ``(adapter, space)``, where ``space`` maps a vector x in
  [0, 1]^d to a recipe (``dim``, ``decode``, ``units``).

Optional: ``model_refs(c)`` (models it loads beyond ``adapter.models`` / ``adapter.base``, checked
for availability first) and ``merge_view(c)`` (the run's merge settings in the layout before the
space group existed, so that a checkpoint written then still resumes).

Built-ins: ``ps`` (here: the merge method's parameters per unit), ``dfs`` and ``ps_dfs``
(``route_kinds.py``: a layer route).
"""

from __future__ import annotations

from typing import Any

from evomm import plugins
from evomm.adapters.loading import check_ref
from evomm.config_values import require_int, require_range
from evomm.errors import ConfigError
from evomm.recipe.recipe import Recipe, check_settings, fixed_params
from evomm.search.space import GRANULARITIES, SearchSpace, build_units
from evomm.search.space_defaults import DEFAULT_BOUNDS, evolved_params, resolved_bounds


def space_kind(c: dict) -> Any:
    """The space kind the config selects, built from its section (unknown keys refused)."""
    section = c.get("space")
    if not isinstance(section, dict):
        raise ConfigError("the config has no 'space' section; pick one with space=<ps|dfs|ps_dfs>")
    return plugins.build("space", plugins.reference(section, "space"), plugins.options(section))


def check_sources(c: dict, what: str) -> list:
    """``adapter.models`` is a non-empty list of loadable references."""
    models = c["adapter"].get("models")
    if models in (None, "???") or not isinstance(models, list) or not models:
        raise ConfigError(f"adapter.models must list the models to {what} (hub ids or paths), e.g. adapter.models=[a/b,c/d]")
    for ref in models:
        check_ref(ref)
    return models


class ParameterSpaceKind:
    """``space=ps``: the search sets the merge method's parameters per unit (and per source)."""

    name = "ps"

    def __init__(self, granularity: str = "model", group_size: int = 1, filters: Any = ("self_attn", "mlp"),
                 evolve: list | None = None, bounds: dict | None = None):
        self.granularity = granularity
        self.group_size = group_size
        self.filters = filters
        self.evolve = evolve
        self.bounds = bounds or {}

    def evolved(self, c: dict) -> list[str]:
        return evolved_params(c["merge"]["method"], self.evolve)

    def validate(self, c: dict) -> None:
        from evomm.merging.methods import get_method

        adapter, merge = c["adapter"], c["merge"]
        spec = get_method(merge.get("method"))
        models = check_sources(c, "merge")
        if adapter.get("base") is not None:
            check_ref(adapter["base"], "base model")
        if spec.needs_base and adapter.get("base") is None:
            raise ConfigError(f"merge method '{spec.name}' computes task vectors and needs adapter.base (the common ancestor)")
        if spec.exact_sources is not None and len(models) != spec.exact_sources:
            raise ConfigError(
                f"merge method '{spec.name}' takes exactly {spec.exact_sources} model(s) besides the base; "
                f"adapter.models has {len(models)}"
            )
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"unknown space.granularity '{self.granularity}'; known: {', '.join(GRANULARITIES)}")
        require_int(self.group_size, "space.group_size", 1)
        if self.granularity == "layer_filter" and not self.filters:
            raise ConfigError("space.filters must name at least one filter for granularity layer_filter")
        known_params = set(spec.tensor_params) | set(spec.global_params)
        evolve = self.evolved(c)
        for name in evolve:
            if name not in known_params:
                raise ConfigError(
                    f"space.evolve names '{name}', which merge method '{spec.name}' does not take; "
                    f"its parameters: {', '.join(sorted(known_params))}"
                )
        for name, b in resolved_bounds(evolve, self.bounds).items():
            low, high = require_range(b, f"space.bounds.{name}")
            if name == "density" and not (0 < low and high <= 1):
                raise ConfigError(f"density must lie in (0, 1]; space.bounds.density is {b}")
            if name == "t" and not (0 <= low and high <= 1):
                raise ConfigError(f"t must lie in [0, 1]; space.bounds.t is {b}")
        _validate_fixed_params(merge, spec, evolve, len(models))

    def build(self, c: dict) -> tuple[Any, SearchSpace]:
        from evomm.adapters import build_adapter

        a = c["adapter"]
        adapter_ref = plugins.reference(a, "adapter")
        adapter = build_adapter(adapter_ref, **plugins.options(a))
        return adapter, self.space_for(c, adapter, adapter_ref)

    def space_for(self, c: dict, adapter: Any, adapter_ref: str) -> SearchSpace:
        """The search space over a loaded adapter; recipes name the adapter by ``adapter_ref`` (a
        built-in name or a user adapter's import path) so that ``evomm merge`` can load it again."""
        merge = c["merge"]
        units = build_units(self.granularity, adapter.groups(), adapter.layer_groups(),
                            group_size=self.group_size, filters=self.filters or ())
        template = Recipe(
            adapter=adapter_ref,
            method=merge["method"],
            models=list(adapter.source_names),
            base=adapter.base_name,
            method_params=fixed_params(merge["method"], dict(merge.get("params") or {}), len(adapter.source_names)),
            seed=c["seed"],
            dtype=None,
            adapter_options=plugins.options(c["adapter"], "models", "base", "device"),
            notes=dict(adapter.notes()),
        )
        evolve = self.evolved(c)
        bounds = {k: tuple(v) for k, v in resolved_bounds(evolve, self.bounds).items()}
        return SearchSpace(template=template, units=units, evolve=evolve, bounds=bounds)

    def merge_view(self, c: dict) -> dict:
        """The merge section as it was written before the space group: the method's yaml held
        its default evolve and their bounds, overrides changed them."""
        method = c["merge"]["method"]
        evolve, default = self.evolved(c), evolved_params(method, None)
        listed = default + [p for p in evolve if p not in default]
        bounds = {p: self.bounds.get(p) or list(DEFAULT_BOUNDS[p]) for p in listed
                  if self.bounds.get(p) is not None or p in DEFAULT_BOUNDS}
        return {"method": method, "granularity": self.granularity, "group_size": self.group_size,
                "filters": list(self.filters) if self.filters is not None else None, "evolve": evolve,
                "bounds": bounds, "params": c["merge"].get("params", {})}


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
                f"merge.params.{key} fixes a parameter that space.evolve={list(evolve)} also evolves (the "
                f"evolved value would override it): drop one, '~merge.params.{key}' or space.evolve=[{','.join(rest)}]"
            )
    check_settings(spec, fixed_params(spec.name, params, n_sources), n_sources, "merge.params")
