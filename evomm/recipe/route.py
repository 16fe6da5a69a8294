"""A DFS route as plain data, and its search-space encoding (torch-free).

A route is the path a token's hidden state takes through the decoder layers of M source models
(Sakana's data-flow-space merging). The search sees it as a vector x in [0, 1]^d:

  * T = (L_0 + ... + L_{M-1}) * r indicator slots. The slots lay out model 0's layers 0..L_0-1,
    then model 1's layers, ..., and repeat that sequence r times. Slot s is used when x[s] > 0.5.
    The path is the used slots in slot order.
  * M * (M - 1) numbers for the off-diagonal entries of the scaling matrix W (row-major, the
    diagonal skipped), mapped linearly from [0, 1] onto ``w_range`` (default [0, 2], so 0.5 is a
    scale of 1). When the path goes from a layer of model i to a layer of model j != i, the hidden
    state is multiplied by W[i, j] before it enters the layer. W[i, i] is fixed at 1: a path that
    stays inside one model is that model's own computation, and x0 must decode to model A exactly.
    (The paper indexes W by layer, 64 x 64, through a small network; this W is indexed by model.)

Fixed ends (model A = source 0 gives the embeddings, tokenizer, final norm, head):
  * the first step is always model A's layer 0: slot 0 counts as used whatever x[0] says;
  * the last step is always model A's last layer: when the last used slot is not model A's last
    layer, that layer is appended after it (it may then also appear earlier in the path);
  * the first step's scale is 1 (the embedding output comes from model A).

The model surgery that runs a route lives in ``evomm.merging.dfs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from evomm.errors import ConfigError

THRESHOLD = 0.5  # an indicator slot is used when its value is > THRESHOLD
DEFAULT_W_RANGE = (0.0, 2.0)


# ============================================================================================
# Route: plain data
# ============================================================================================


@dataclass
class Route:
    """A path through the source models' decoder layers.

    steps:        (model index, layer index) per step, in order.
    scales:       the factor applied to the hidden states entering each step.
    source_names: the source models' references, for the record (optional).
    layer_counts, repeats, w_range, w: the search space the route was decoded from (optional;
                  :func:`encode_route` uses them, plots and reports read them).
    """

    steps: list[tuple[int, int]]
    scales: list[float]
    source_names: list[str] = field(default_factory=list)
    layer_counts: list[int] | None = None
    repeats: int | None = None
    w_range: tuple[float, float] | None = None
    w: list[list[float]] | None = None  # the M x M scaling matrix

    def __post_init__(self) -> None:
        try:
            self.steps = [(int(m), int(l)) for m, l in self.steps]
            self.scales = [float(s) for s in self.scales]
        except (TypeError, ValueError):
            raise ConfigError(
                "route: steps must be [model, layer] integer pairs and scales numbers"
            ) from None
        if not self.steps:
            raise ConfigError("route: a route needs at least one step")
        if len(self.scales) != len(self.steps):
            raise ConfigError(
                f"route: {len(self.steps)} steps but {len(self.scales)} scales; give one scale per step"
            )
        if any(m < 0 or l < 0 for m, l in self.steps):
            raise ConfigError("route: model and layer indices must be >= 0")
        if not all(np.isfinite(self.scales)):
            raise ConfigError("route: every scale must be a finite number")
        self.source_names = [str(n) for n in self.source_names]
        if self.layer_counts is not None:
            self.layer_counts = [int(n) for n in self.layer_counts]
            _check_layer_counts(self.layer_counts)
            check_route_fits(self, self.layer_counts)
        if self.w_range is not None:
            self.w_range = _check_w_range(self.w_range)

    @classmethod
    def model_a(cls, num_layers: int, source_names: Sequence[str] = ()) -> "Route":
        """Model A alone: its layers in order, every scale 1."""
        return cls(steps=[(0, l) for l in range(num_layers)], scales=[1.0] * num_layers,
                   source_names=list(source_names))

    @property
    def num_models(self) -> int:
        return 1 + max(m for m, _ in self.steps)

    def unique_layers(self) -> list[tuple[int, int]]:
        """The distinct (model, layer) pairs of the path, in order of first use."""
        return list(dict.fromkeys(self.steps))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, floats, strings) for YAML / JSON."""
        out: dict[str, Any] = {
            "steps": [[m, l] for m, l in self.steps],
            "scales": [float(s) for s in self.scales],
            "source_names": list(self.source_names),
        }
        if self.layer_counts is not None:
            out["layer_counts"] = list(self.layer_counts)
        if self.repeats is not None:
            out["repeats"] = int(self.repeats)
        if self.w_range is not None:
            out["w_range"] = [float(v) for v in self.w_range]
        if self.w is not None:
            out["w"] = [[float(v) for v in row] for row in self.w]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Route":
        if not isinstance(data, dict) or "steps" not in data or "scales" not in data:
            raise ConfigError("route: expected a mapping with 'steps' and 'scales'")
        known = {"steps", "scales", "source_names", "layer_counts", "repeats", "w_range", "w"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"route: unknown field(s) {unknown}; known fields: {sorted(known)}")
        w_range = data.get("w_range")
        return cls(
            steps=[tuple(s) for s in data["steps"]],
            scales=list(data["scales"]),
            source_names=list(data.get("source_names") or []),
            layer_counts=data.get("layer_counts"),
            repeats=data.get("repeats"),
            w_range=None if w_range is None else tuple(w_range),
            w=data.get("w"),
        )


def check_route_fits(route: Route, layer_counts: Sequence[int]) -> None:
    """Raise ConfigError unless every step names an existing model and layer."""
    for k, (m, l) in enumerate(route.steps):
        if m >= len(layer_counts):
            raise ConfigError(
                f"route step {k} uses model {m}, but there are only {len(layer_counts)} source models"
            )
        if l >= layer_counts[m]:
            raise ConfigError(
                f"route step {k} uses layer {l} of model {m}, which has {layer_counts[m]} layers"
            )


# ============================================================================================
# Search space: x in [0, 1]^d  <->  Route
# ============================================================================================


def _check_layer_counts(layer_counts: Sequence[int]) -> None:
    if len(layer_counts) < 1 or any(int(n) < 1 for n in layer_counts):
        raise ConfigError(f"layer_counts must list >= 1 layer per model, got {list(layer_counts)}")


def _check_w_range(w_range: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in w_range)
    except (TypeError, ValueError):
        raise ConfigError(f"w_range must be two numbers [low, high], got {w_range!r}") from None
    if not lo < hi:
        raise ConfigError(f"w_range must have low < high, got [{lo}, {hi}]")
    return lo, hi


def num_slots(layer_counts: Sequence[int], r: int) -> int:
    """T = (sum of the models' layer counts) x r."""
    _check_layer_counts(layer_counts)
    if int(r) < 1:
        raise ConfigError(f"the number of repetitions r must be >= 1, got {r}")
    return sum(layer_counts) * int(r)


def route_dim(layer_counts: Sequence[int], r: int, M: int | None = None) -> int:
    """Length of the search vector: T indicators + M*(M-1) off-diagonal entries of W."""
    if M is not None and M != len(layer_counts):
        raise ConfigError(f"route_dim: M={M} but layer_counts lists {len(layer_counts)} models")
    m = len(layer_counts)
    return num_slots(layer_counts, r) + m * (m - 1)


def slot_step(slot: int, layer_counts: Sequence[int]) -> tuple[int, int]:
    """The (model, layer) that indicator slot ``slot`` stands for (repetitions wrap around)."""
    offset = slot % sum(layer_counts)
    for m, n in enumerate(layer_counts):
        if offset < n:
            return m, offset
        offset -= n
    raise AssertionError("unreachable")


def _w_offdiag_index(M: int) -> list[tuple[int, int]]:
    """Row-major (i, j) pairs with i != j: the order of W's entries in the search vector."""
    return [(i, j) for i in range(M) for j in range(M) if i != j]


def decode_route(
    x: np.ndarray,
    layer_counts: Sequence[int],
    r: int,
    w_range: Sequence[float] = DEFAULT_W_RANGE,
    source_names: Sequence[str] = (),
) -> Route:
    """Decode a search vector into a Route (see the module docstring for the rules)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    layer_counts = [int(n) for n in layer_counts]
    dim = route_dim(layer_counts, r)
    if x.shape[0] != dim:
        raise ConfigError(
            f"a DFS vector for layer_counts={layer_counts}, r={r} has {dim} entries, got {x.shape[0]}"
        )
    if not np.all(np.isfinite(x)):
        raise ConfigError("a DFS vector must hold finite numbers")
    lo, hi = _check_w_range(w_range)
    T = num_slots(layer_counts, r)
    M = len(layer_counts)

    used = x[:T] > THRESHOLD
    used[0] = True  # fixed start: model A's layer 0
    steps = [slot_step(s, layer_counts) for s in np.flatnonzero(used)]
    last_a = (0, layer_counts[0] - 1)
    if steps[-1] != last_a:  # fixed end: model A's last layer
        steps.append(last_a)

    w = np.ones((M, M))
    for (i, j), v in zip(_w_offdiag_index(M), np.clip(x[T:], 0.0, 1.0)):
        w[i, j] = lo + float(v) * (hi - lo)
    scales = [1.0] + [float(w[a[0], b[0]]) for a, b in zip(steps[:-1], steps[1:])]
    return Route(steps=steps, scales=scales, source_names=list(source_names),
                 layer_counts=layer_counts, repeats=int(r), w_range=(lo, hi), w=w.tolist())


def _x_for_scale(scale: float, w_range: tuple[float, float]) -> float:
    lo, hi = w_range
    return (scale - lo) / (hi - lo)


def initial_vector(
    layer_counts: Sequence[int],
    r: int,
    w_range: Sequence[float] = DEFAULT_W_RANGE,
    margin: float = 0.25,
) -> np.ndarray:
    """x0 that decodes to model A alone with every scale 1.

    Indicators are 0.5 + margin on model A's layers in the first repetition and 0.5 - margin
    elsewhere; W entries sit where they decode to 1.0. ``margin`` sets how far x0's indicators are
    from the 0.5 threshold, i.e. how often a CMA-ES sample with a given sigma flips a slot.
    """
    if not 0.0 < margin <= 0.5:
        raise ConfigError(f"initial_vector: margin must be in (0, 0.5], got {margin}")
    lo, hi = _check_w_range(w_range)
    if not lo <= 1.0 <= hi:
        raise ConfigError(
            f"w_range [{lo}, {hi}] must contain 1.0 so that the initial route is model A unchanged"
        )
    layer_counts = [int(n) for n in layer_counts]
    T = num_slots(layer_counts, r)
    x = np.full(route_dim(layer_counts, r), 0.5 - margin)
    x[: layer_counts[0]] = 0.5 + margin
    x[T:] = _x_for_scale(1.0, (lo, hi))
    return x


def encode_route(
    route: Route,
    layer_counts: Sequence[int] | None = None,
    r: int | None = None,
    w_range: Sequence[float] | None = None,
    margin: float = 0.5,
) -> np.ndarray:
    """A search vector that decodes to ``route`` (indicators at 0.5 +- margin).

    The space defaults to the one the route records. Raises ConfigError when the route cannot be
    expressed: it does not start with model A's layer 0, its steps are not a subsequence of the r
    repetitions of the slot order, or its scales disagree with one model-to-model matrix W.
    """
    layer_counts = list(layer_counts if layer_counts is not None else route.layer_counts or [])
    r = r if r is not None else route.repeats
    w_range = w_range if w_range is not None else (route.w_range or DEFAULT_W_RANGE)
    if not layer_counts or r is None:
        raise ConfigError("encode_route: give layer_counts and r (the route does not record them)")
    lo, hi = _check_w_range(w_range)
    check_route_fits(route, layer_counts)
    T = num_slots(layer_counts, r)
    M = len(layer_counts)
    n = sum(layer_counts)
    offsets = np.cumsum([0] + layer_counts[:-1])

    steps = list(route.steps)
    last_a = (0, layer_counts[0] - 1)
    if steps[0] != (0, 0):
        raise ConfigError(f"encode_route: a DFS route starts with model A's layer 0, got {steps[0]}")
    if abs(route.scales[0] - 1.0) > 1e-9:
        raise ConfigError("encode_route: the first step's scale is fixed at 1")
    if steps[-1] != last_a:
        raise ConfigError(
            f"encode_route: a DFS route ends with model A's last layer {last_a}, got {steps[-1]}"
        )

    # Greedy earliest matching of the steps onto the slot sequence (optimal for subsequences).
    x = np.full(route_dim(layer_counts, r), 0.5 - margin)
    pos = 0
    for k, (m, l) in enumerate(steps):
        slot = next((s for s in range(pos, T) if s % n == offsets[m] + l), None)
        if slot is None:
            if k == len(steps) - 1:  # the decoder appends model A's last layer by itself
                break
            raise ConfigError(
                f"encode_route: step {k} {(m, l)} does not fit in {r} repetition(s) of the slot order"
            )
        x[slot] = 0.5 + margin
        pos = slot + 1

    # W from the scales of cross-model transitions; W entries the path does not use stay at 1
    # unless the route records its W.
    w = np.ones((M, M)) if route.w is None else np.asarray(route.w, dtype=np.float64)
    if w.shape != (M, M):
        raise ConfigError(f"encode_route: the route's w is {w.shape}, expected ({M}, {M})")
    seen: dict[tuple[int, int], float] = {}
    for (a, _), (b, _), s in zip(steps[:-1], steps[1:], route.scales[1:]):
        if a == b:
            if abs(s - 1.0) > 1e-9:
                raise ConfigError(f"encode_route: a step inside model {a} must have scale 1, got {s}")
            continue
        if (a, b) in seen and abs(seen[(a, b)] - s) > 1e-9:
            raise ConfigError(
                f"encode_route: transitions {a}->{b} have different scales {seen[(a, b)]} and {s}"
            )
        seen[(a, b)] = s
        w[a, b] = s
    for (i, j) in _w_offdiag_index(M):
        if not lo - 1e-9 <= w[i, j] <= hi + 1e-9:
            raise ConfigError(f"encode_route: W[{i}, {j}] = {w[i, j]} is outside w_range [{lo}, {hi}]")
    x[T:] = [_x_for_scale(w[i, j], (lo, hi)) for i, j in _w_offdiag_index(M)]
    return x


def route_of(recipe: Any) -> Route:
    """The Route stored in a recipe (``recipe.route`` also names the route models)."""
    if not isinstance(recipe.route, dict):
        raise ConfigError("the recipe has no route")
    return Route.from_dict({k: v for k, v in recipe.route.items() if k != "models"})
