"""Load the models and build the search space a run's merge config asks for."""

from __future__ import annotations

from typing import Any

from evomm import plugins
from evomm.adapters import adapter_for_recipe, build_adapter
from evomm.adapters.routed import RoutedAdapter
from evomm.recipe.recipe import Entry, Recipe, baseline_recipe, fixed_params
from evomm.search.route_space import RouteSpace
from evomm.search.space import SearchSpace, build_units

ROUTING_METHODS = ("dfs", "ps_dfs")


def build_space(merge: dict, adapter: Any, seed: int, adapter_options: dict, adapter_ref: str) -> SearchSpace:
    """The parameter-space search space; recipes name the adapter by ``adapter_ref`` (a built-in
    name or a user adapter's import path) so that ``evomm merge`` can load it again."""
    units = build_units(
        merge["granularity"],
        adapter.groups(),
        adapter.layer_groups(),
        group_size=merge.get("group_size", 1),
        filters=merge.get("filters") or (),
    )
    template = Recipe(
        adapter=adapter_ref,
        method=merge["method"],
        models=list(adapter.source_names),
        base=adapter.base_name,
        method_params=fixed_params(merge["method"], dict(merge.get("params") or {}), len(adapter.source_names)),
        seed=seed,
        dtype=None,
        adapter_options=adapter_options,
        notes=dict(adapter.notes()),
    )
    bounds = {k: tuple(v) for k, v in (merge.get("bounds") or {}).items()}
    return SearchSpace(template=template, units=units, evolve=list(merge.get("evolve") or []), bounds=bounds)


def build_search(c: dict) -> tuple[Any, SearchSpace | RouteSpace]:
    """Load the models and build the search space the merge config asks for.

    Parameter-space methods search recipe parameters over the adapter's sources. ``dfs``
    routes through ``adapter.models`` (model A first); ``ps_dfs`` routes a finished PS run's
    merged model (``merge.ps_recipe``, model A) through ``adapter.models`` (model B, ...).
    """
    merge, a = c["merge"], c["adapter"]
    recipe_options = plugins.options(a, "models", "base", "device")
    adapter_ref = plugins.reference(a, "adapter")
    if merge["method"] not in ROUTING_METHODS:
        adapter = build_adapter(adapter_ref, **plugins.options(a))
        return adapter, build_space(merge, adapter, c["seed"], recipe_options, adapter_ref)

    if merge["method"] == "dfs":
        inner = build_adapter(adapter_ref, **{**plugins.options(a, "models", "base"), "models": a["models"][:1]})
        template = Recipe(
            adapter=adapter_ref, method="linear", models=list(inner.source_names),
            entries=[Entry(params={"weight": [1.0]})],  # model A itself, exactly
            seed=c["seed"], adapter_options=recipe_options, notes=dict(inner.notes()),
        )
        ps_recipe, route_models = None, a["models"][1:]
    else:
        if merge.get("ps_recipe"):
            ps_recipe = Recipe.load(merge["ps_recipe"])
            ps_recipe.route = None
        else:  # no PS run given: model A is a hand-set merge of adapter.models (smoke runs, ablations)
            fallback = dict(merge["ps_fallback"])
            method = fallback.pop("method")
            sources = Recipe(adapter=adapter_ref, method=method, models=list(a["models"]), base=a.get("base"),
                             seed=c["seed"], adapter_options=recipe_options)
            ps_recipe = baseline_recipe(sources, method, fallback)
        inner = adapter_for_recipe(ps_recipe, device=a.get("device"))
        ps_recipe.models, ps_recipe.base = list(inner.source_names), inner.base_name  # record paths
        template = ps_recipe.copy()
        route_models = merge.get("route_models") or a["models"][:1]
    adapter = RoutedAdapter(inner, route_models, ps_recipe=ps_recipe)
    space = RouteSpace(
        template=template,
        route_models=adapter.route_models,
        layer_counts=adapter.layer_counts,
        repeats=merge["repeats"],
        w_range=tuple(merge["w_range"]),
        x0_margin=merge.get("x0_margin", 0.25),
    )
    return adapter, space
