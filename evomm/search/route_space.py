"""The data-flow-space search space: x in [0, 1]^d  <->  a routed recipe.

x holds one indicator per layer slot (the M models' layers in order, repeated r times; a slot is
used when its value is > 0.5) and the off-diagonal entries of the M x M scaling matrix W.
The recipe it decodes to is the template (how model A is built) plus ``route``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from evomm.errors import ConfigError
from evomm.recipe.route import decode_route, encode_route, initial_vector, route_dim, route_of
from evomm.recipe.recipe import Recipe


@dataclass
class RouteSpace:
    template: Recipe  # model A's recipe; decode() adds the route
    route_models: list[str]  # model B, ... (model A is index 0 of the route)
    layer_counts: list[int]  # layers of A, B, ...
    repeats: int
    w_range: tuple[float, float]
    x0_margin: float = 0.25
    dim: int = field(init=False)
    units: list = field(init=False)

    def __post_init__(self) -> None:
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ConfigError(f"space.repeats (r) must be an integer >= 1, got {self.repeats!r}")
        if not 0 < self.x0_margin <= 0.5:
            raise ConfigError(f"space.x0_margin must lie in (0, 0.5], got {self.x0_margin}")
        self.dim = route_dim(self.layer_counts, self.repeats, len(self.layer_counts))
        self.units = []  # no parameter-space units: the route is the whole genome

    @property
    def names(self) -> list[str]:
        return ["A", *self.route_models]

    def x0(self) -> np.ndarray:
        """Model A alone, with every indicator a margin away from the 0.5 threshold."""
        return initial_vector(self.layer_counts, self.repeats, self.w_range, margin=self.x0_margin)

    def decode(self, x: np.ndarray) -> Recipe:
        route = decode_route(np.clip(np.asarray(x, float), 0, 1), self.layer_counts, self.repeats,
                             self.w_range, source_names=self.names)
        recipe = self.template.copy()
        recipe.route = {"models": list(self.route_models), **route.to_dict()}
        return recipe

    def encode(self, recipe: Recipe) -> np.ndarray:
        return encode_route(route_of(recipe), self.layer_counts, self.repeats, self.w_range)

    def describe(self, x: np.ndarray) -> dict[str, float]:
        """The path as steps, and W, for history.jsonl (the raw x is kept beside it)."""
        route = decode_route(np.clip(np.asarray(x, float), 0, 1), self.layer_counts, self.repeats,
                             self.w_range, source_names=self.names)
        out: dict[str, float] = {"route/length": float(len(route.steps))}
        for i, row in enumerate(route.w or []):
            for j, value in enumerate(row):
                if i != j:
                    out[f"W/{i}{j}"] = round(float(value), 6)
        out["route/steps"] = " ".join(f"{m}:{layer}" for m, layer in route.steps)  # type: ignore[assignment]
        return out
