"""The data-flow space kinds: ``space=dfs`` (a layer route through ``adapter.models``, model A
first, weights unchanged) and ``space=ps_dfs`` (a parameter-space merge is model A, routed with
model B, ...). See ``space_kinds.py`` for what a kind offers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomm import plugins
from evomm.adapters.loading import check_ref
from evomm.config_values import require_int, require_number
from evomm.errors import ConfigError
from evomm.recipe.recipe import Entry, Recipe, baseline_recipe, check_settings, fixed_params
from evomm.search.route_space import RouteSpace
from evomm.search.space_kinds import check_sources


class DFSKind:
    """``space=dfs``: evolve the path through the layers of ``adapter.models`` (model A first).
    The merge group is unused: no weights change."""

    name = "dfs"

    def __init__(self, repeats: int = 3, w_range: Any = (0.0, 2.0), x0_margin: float = 0.25):
        self.repeats = repeats
        self.w_range = w_range
        self.x0_margin = x0_margin

    def validate(self, c: dict) -> None:
        models = self._validate_route(c)
        if len(models) < 2:
            raise ConfigError("space=dfs routes between models: adapter.models needs model A and at least one more")

    def _validate_route(self, c: dict) -> list:
        adapter = c["adapter"]
        if getattr(plugins.load_class("adapter", plugins.reference(adapter, "adapter")), "modality", None) not in ("llm", "vlm"):
            raise ConfigError(f"space={self.name} routes through decoder stacks: use adapter=llm or adapter=vlm")
        models = check_sources(c, "route through (model A first for dfs)")
        require_int(self.repeats, "space.repeats", 1)
        w_range = self.w_range
        if not (isinstance(w_range, (list, tuple)) and len(w_range) == 2):
            raise ConfigError(f"space.w_range must be [low, high], got {w_range!r}")
        low, high = (require_number(v, "space.w_range") for v in w_range)
        if not low <= 1.0 <= high:
            raise ConfigError(f"space.w_range must contain 1.0 (no scaling), got {list(w_range)}")
        if not 0 < require_number(self.x0_margin, "space.x0_margin") <= 0.5:
            raise ConfigError(f"space.x0_margin must lie in (0, 0.5], got {self.x0_margin}")
        return models

    def model_a(self, c: dict) -> tuple[Any, Recipe, Recipe | None]:
        """The adapter of model A, the recipe every candidate starts from, the PS recipe (none)."""
        from evomm.adapters import build_adapter

        a = c["adapter"]
        adapter_ref = plugins.reference(a, "adapter")
        inner = build_adapter(adapter_ref, **{**plugins.options(a, "models", "base"), "models": a["models"][:1]})
        template = Recipe(
            adapter=adapter_ref, method="linear", models=list(inner.source_names),
            entries=[Entry(params={"weight": [1.0]})],  # model A itself, exactly
            seed=c["seed"], adapter_options=plugins.options(a, "models", "base", "device"), notes=dict(inner.notes()),
        )
        return inner, template, None

    def route_models(self, c: dict) -> list:
        return c["adapter"]["models"][1:]

    def build(self, c: dict) -> tuple[Any, RouteSpace]:
        from evomm.adapters.routed import RoutedAdapter

        inner, template, ps_recipe = self.model_a(c)
        adapter = RoutedAdapter(inner, self.route_models(c), ps_recipe=ps_recipe)
        space = RouteSpace(template=template, route_models=adapter.route_models, layer_counts=adapter.layer_counts,
                           repeats=self.repeats, w_range=tuple(self.w_range), x0_margin=self.x0_margin)
        return adapter, space

    def merge_view(self, c: dict) -> dict:
        """The merge section as ``merge=dfs`` wrote it before the space group."""
        return {"method": "dfs", "repeats": self.repeats, "w_range": self.w_range, "x0_margin": self.x0_margin}


class PSDFSKind(DFSKind):
    """``space=ps_dfs``: model A is a parameter-space merge (a finished PS run's ``ps_recipe``, or
    a hand-set merge by the merge group's method with ``fallback_params``), routed with
    ``route_models`` (default: the first of ``adapter.models``)."""

    name = "ps_dfs"

    def __init__(self, ps_recipe: str | None = None, fallback_params: dict | None = None,
                 route_models: list | None = None, repeats: int = 3, w_range: Any = (0.0, 2.0),
                 x0_margin: float = 0.25):
        super().__init__(repeats=repeats, w_range=w_range, x0_margin=x0_margin)
        self.ps_recipe = ps_recipe
        self.fallback_params = {"weight": 1.0, "density": 0.5} if fallback_params is None else fallback_params
        self.route_model_refs = route_models

    def model_refs(self, c: dict) -> list:
        return list(self.route_model_refs or [])

    def validate(self, c: dict) -> None:
        self._validate_route(c)
        ps = self.ps_recipe
        if ps == "???":
            raise ConfigError("space.ps_recipe is not set: give the best_recipe.yaml of a parameter-space run (model A)")
        if ps is not None and not Path(ps).is_file():
            raise ConfigError(f"space.ps_recipe {ps} does not exist: give the best_recipe.yaml of a parameter-space run")
        if ps is None:
            self._validate_fallback(c)
        for ref in self.route_model_refs or []:
            check_ref(ref)

    def _validate_fallback(self, c: dict) -> None:
        """No PS run given: model A is merge.method with merge.params and space.fallback_params."""
        from evomm.merging.methods import get_method

        spec = get_method(c["merge"].get("method"))
        if spec.needs_base and c["adapter"].get("base") is None:
            raise ConfigError(f"space=ps_dfs without space.ps_recipe merges model A by '{spec.name}', which needs "
                              "adapter.base (or pick merge=linear)")
        if not isinstance(self.fallback_params, dict):
            raise ConfigError(f"space.fallback_params must map parameter names to values, got {self.fallback_params!r}")
        known = set(spec.tensor_params) | set(spec.global_params)
        for key in self.fallback_params:
            if key not in known:
                raise ConfigError(
                    f"space.fallback_params.{key}: merge method '{spec.name}' does not take it (its parameters: "
                    f"{', '.join(sorted(known))}); drop it with '~space.fallback_params.{key}'"
                )
        n = len(c["adapter"]["models"])
        check_settings(spec, fixed_params(spec.name, self._fallback(c), n), n, "space.fallback_params")

    def _fallback(self, c: dict) -> dict:
        """Every setting of the hand-set model A: merge.params, then space.fallback_params."""
        return {**(c["merge"].get("params") or {}), **self.fallback_params}

    def model_a(self, c: dict) -> tuple[Any, Recipe, Recipe]:
        from evomm.adapters import adapter_for_recipe

        a = c["adapter"]
        if self.ps_recipe:
            ps_recipe = Recipe.load(self.ps_recipe)
            ps_recipe.route = None
        else:  # no PS run given: model A is a hand-set merge of adapter.models (smoke runs, ablations)
            method = c["merge"]["method"]
            sources = Recipe(adapter=plugins.reference(a, "adapter"), method=method, models=list(a["models"]),
                             base=a.get("base"), seed=c["seed"], adapter_options=plugins.options(a, "models", "base", "device"))
            ps_recipe = baseline_recipe(sources, method, self.fallback_params)
            # merge.params are method-wide settings, as in a parameter-space run's recipes
            ps_recipe.method_params = fixed_params(method, dict(c["merge"].get("params") or {}), len(sources.models))
        inner = adapter_for_recipe(ps_recipe, device=a.get("device"))
        ps_recipe.models, ps_recipe.base = list(inner.source_names), inner.base_name  # record paths
        return inner, ps_recipe.copy(), ps_recipe

    def route_models(self, c: dict) -> list:
        return self.route_model_refs or c["adapter"]["models"][:1]

    def merge_view(self, c: dict) -> dict:
        """The merge section as ``merge=ps_dfs`` wrote it before the space group."""
        params = c["merge"].get("params") or {}
        return {"method": "ps_dfs", "ps_recipe": self.ps_recipe,
                "ps_fallback": {"method": c["merge"]["method"], **self.fallback_params, **({"params": params} if params else {})},
                "route_models": self.route_model_refs, "repeats": self.repeats, "w_range": self.w_range,
                "x0_margin": self.x0_margin}
