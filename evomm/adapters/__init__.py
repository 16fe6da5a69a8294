"""Modality adapters, registered by config name and imported lazily (diffusers only for sdxl)."""

from __future__ import annotations

import importlib

from evomm.errors import UnknownNameError

_ADAPTERS = {
    "llm": ("evomm.adapters.llm", "LLMAdapter"),
    "vlm": ("evomm.adapters.vlm", "VLMAdapter"),
    "sdxl": ("evomm.adapters.sdxl", "SDXLAdapter"),
}


def adapter_names() -> list[str]:
    return sorted(_ADAPTERS)


def adapter_class(name: str):
    if name not in _ADAPTERS:
        raise UnknownNameError(f"unknown adapter '{name}'; known adapters: {', '.join(adapter_names())}")
    module, cls = _ADAPTERS[name]
    return getattr(importlib.import_module(module), cls)


def build_adapter(name: str, **options):
    """Load the models of one modality; options are the adapter config's other keys."""
    return adapter_class(name)(**options)


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
