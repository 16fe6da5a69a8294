"""Modality adapters: one per modality (llm, vlm, sdxl), plus the routed (DFS) wrapper.

An adapter class is a plugin (``evomm.plugins``): a built-in name or the import path of a user's
own class; each is imported only when selected (diffusers only for sdxl).
"""

from __future__ import annotations

from typing import Any

from evomm import plugins


def build_adapter(ref: str, **options: Any):
    """Load the models of one modality; options are the adapter config's other keys."""
    return plugins.build("adapter", ref, options)


def adapter_for_recipe(recipe, device: str | None = None, **overrides):
    """Load what a recipe needs: its adapter over its sources, wrapped for routing when it has a route."""
    options = {**recipe.adapter_options, **overrides}
    if device is not None:
        options["device"] = device
    adapter = build_adapter(recipe.adapter, models=list(recipe.models), base=recipe.base, **options)
    if recipe.route:
        from evomm.adapters.routed import RoutedAdapter

        adapter = RoutedAdapter(adapter, list(recipe.route.get("models") or []))
    return adapter
