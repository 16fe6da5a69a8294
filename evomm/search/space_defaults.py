"""What a parameter-space search evolves when the config does not say: per merge method, and the
range of each parameter by name. Torch-free (the model card reads it too).

``space.evolve: null`` means the method's own searchable parameters below, so that ``merge=linear``
with the default space needs no other override; ``space.bounds`` entries missing for an evolved
parameter take the range of its name.
"""

from __future__ import annotations

from typing import Any

from evomm.errors import ConfigError

# The parameters the search sets per unit (and per source) for each built-in method.
DEFAULT_EVOLVE: dict[str, tuple[str, ...]] = {
    "linear": ("weight",),
    "task_arithmetic": ("weight",),
    "ties": ("weight", "density"),
    "dare_ties": ("weight", "density"),
    "dare_linear": ("weight", "density"),
    "breadcrumbs": ("weight", "density"),
    "della": ("weight", "density"),
    "slerp": ("t",),
    "model_stock": (),
}

# The range of a parameter by name, when space.bounds has none.
DEFAULT_BOUNDS: dict[str, tuple[float, float]] = {
    "weight": (0.0, 1.0),
    "density": (0.1, 1.0),
    "t": (0.0, 1.0),
}


def default_evolve(method: str) -> list[str]:
    """The method's searchable parameters; a method registered elsewhere evolves its required ones."""
    if method in DEFAULT_EVOLVE:
        return list(DEFAULT_EVOLVE[method])
    from evomm.merging.methods import get_method  # torch; only for methods outside the table

    spec = get_method(method)
    required = {**spec.tensor_params, **spec.global_params}
    return [name for name, default in required.items() if default is None]


def evolved_params(method: str, evolve: Any) -> list[str]:
    """``space.evolve`` resolved: the list given, or the method's own when it is null."""
    if evolve is None:
        return default_evolve(method)
    if isinstance(evolve, str) or not isinstance(evolve, (list, tuple)):
        raise ConfigError(f"space.evolve must list parameter names (or be null for the method's own), got {evolve!r}")
    return [str(name) for name in evolve]


def resolved_bounds(evolve: list[str], bounds: Any) -> dict[str, list[float]]:
    """``[low, high]`` for every evolved parameter: ``space.bounds``'s entry, else its name's range."""
    bounds = bounds or {}
    if not isinstance(bounds, dict):
        raise ConfigError(f"space.bounds must map parameter names to [low, high], got {bounds!r}")
    out = {}
    for name in evolve:
        if bounds.get(name) is not None:
            out[name] = bounds[name]
        elif name in DEFAULT_BOUNDS:
            out[name] = list(DEFAULT_BOUNDS[name])
        else:
            raise ConfigError(f"space.evolve evolves '{name}', which has no default range: set +space.bounds.{name}=[low,high]")
    return out
