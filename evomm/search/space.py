"""Search spaces: a flat vector x in [0, 1]^d  <->  a recipe.

CMA-ES sees only x. The space cuts the model into *units* and gives each unit its own copy of
the evolved parameters:

- ``model``: one unit for the whole model (one weight/density per source, the paper's PS setup);
- ``layer``: the adapter's layer groups in chunks of ``group_size``, plus one unit ``io`` for the
  non-layer groups (embeddings, final norm, head; BASE for SDXL);
- ``layer_filter``: each layer chunk split by tensor-name filters (default attention / MLP /
  the rest), plus ``io``.

Each evolved parameter has bounds; x_k in [0, 1] maps linearly onto them. Decoding is pure: it
needs group names, not models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from evomm.errors import ConfigError
from evomm.recipe.recipe import Entry, Recipe, per_source_params

GRANULARITIES = ("model", "layer", "layer_filter")


@dataclass(frozen=True)
class Unit:
    """A part of the model that gets its own parameter values."""

    name: str
    groups: tuple[str, ...] | None  # None: all groups
    filter: str | None = None


@dataclass(frozen=True)
class Gene:
    """One coordinate of x: which unit, which parameter, which source (None: method-wide)."""

    unit: int
    param: str
    source: int | None
    low: float
    high: float

    @property
    def label(self) -> str:
        src = "" if self.source is None else f"/src{self.source}"
        return f"{self.param}{src}"


@dataclass
class SearchSpace:
    template: Recipe  # adapter, models, base, method, method-wide params, seed: copied into every decode
    units: list[Unit]
    evolve: list[str]  # parameter names evolved per unit, e.g. ["weight", "density"]
    bounds: dict[str, tuple[float, float]]
    genes: list[Gene] = field(init=False)
    per_source: set[str] = field(init=False)

    def __post_init__(self) -> None:
        n_sources = len(self.template.models)
        self.per_source = per_source_params(self.template.method)
        for name in self.evolve:
            if name not in self.bounds:
                raise ConfigError(f"no bounds for evolved parameter '{name}'; set space.bounds.{name}: [low, high]")
            low, high = self.bounds[name]
            if not (np.isfinite(low) and np.isfinite(high) and low <= high):
                raise ConfigError(f"space.bounds.{name} must be [low, high] with low <= high, got {[low, high]}")
            if name == "density" and not (0 < low <= high <= 1):
                raise ConfigError(f"space.bounds.density must lie in (0, 1], got {[low, high]}")
            if name == "t" and not (0 <= low <= high <= 1):
                raise ConfigError(f"space.bounds.t must lie in [0, 1], got {[low, high]}")
        self.genes = []
        for u in range(len(self.units)):
            for name in self.evolve:
                low, high = self.bounds[name]
                sources = range(n_sources) if name in self.per_source else [None]
                for s in sources:
                    self.genes.append(Gene(u, name, s, float(low), float(high)))

    @property
    def dim(self) -> int:
        return len(self.genes)

    def decode(self, x: np.ndarray) -> Recipe:
        x = np.asarray(x, dtype=np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"expected a vector of length {self.dim}, got shape {x.shape}")
        x = np.clip(x, 0.0, 1.0)
        n_sources = len(self.template.models)
        params: list[dict[str, Any]] = [
            {name: ([0.0] * n_sources if name in self.per_source else 0.0) for name in self.evolve}
            for _ in self.units
        ]
        for xi, gene in zip(x, self.genes):
            value = float(gene.low + xi * (gene.high - gene.low))
            if gene.source is None:
                params[gene.unit][gene.param] = value
            else:
                params[gene.unit][gene.param][gene.source] = value
        recipe = self.template.copy()
        recipe.entries = [
            Entry(params=p, groups=None if u.groups is None else list(u.groups), filter=u.filter)
            for u, p in zip(self.units, params)
        ]
        return recipe

    def encode(self, recipe: Recipe) -> np.ndarray:
        """Inverse of decode for recipes this space produced (same units, in order)."""
        if len(recipe.entries) != len(self.units):
            raise ValueError(f"recipe has {len(recipe.entries)} entries, this space has {len(self.units)} units")
        x = np.empty(self.dim)
        for k, gene in enumerate(self.genes):
            value = recipe.entries[gene.unit].params[gene.param]
            if gene.source is not None:
                value = value[gene.source]
            span = gene.high - gene.low
            x[k] = 0.5 if span == 0 else (float(value) - gene.low) / span
        return x

    def describe(self, x: np.ndarray) -> dict[str, float]:
        """Flat, readable parameter values of a candidate: ``{"layers.0-1/mlp/weight/src0": 0.7}``."""
        x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
        return {
            f"{self.units[g.unit].name}/{g.label}": round(float(g.low + xi * (g.high - g.low)), 6)
            for xi, g in zip(x, self.genes)
        }


def build_units(
    granularity: str,
    groups: list[str],
    layer_groups: list[str],
    group_size: int = 1,
    filters: list[str] | tuple[str, ...] = ("self_attn", "mlp"),
) -> list[Unit]:
    """Cut the adapter's groups into the units a granularity asks for."""
    if granularity not in GRANULARITIES:
        raise ConfigError(f"unknown space.granularity '{granularity}'; known: {', '.join(GRANULARITIES)}")
    if granularity == "model":
        return [Unit("all", None)]
    if not isinstance(group_size, int) or group_size < 1:
        raise ConfigError(f"space.group_size must be an integer >= 1, got {group_size!r}")
    unknown = [g for g in layer_groups if g not in groups]
    if unknown:
        raise ValueError(f"layer groups {unknown} are not among the adapter's groups")
    io = tuple(g for g in groups if g not in layer_groups)
    chunks = [tuple(layer_groups[i : i + group_size]) for i in range(0, len(layer_groups), group_size)]
    units: list[Unit] = [Unit("io", io)] if io else []
    for chunk in chunks:
        name = chunk[0] if len(chunk) == 1 else f"{chunk[0]}-{chunk[-1].split('.')[-1]}"
        if granularity == "layer":
            units.append(Unit(name, chunk))
        else:
            if not filters:
                raise ConfigError("space.filters must name at least one filter for granularity layer_filter")
            for flt in filters:
                units.append(Unit(f"{name}/{flt}", chunk, flt))
            units.append(Unit(f"{name}/other", chunk, None))  # first match wins: the rest
    return units
