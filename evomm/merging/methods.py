"""Merge methods: pure tensor functions behind a registry that fails loudly on unknown names.

Each method merges ONE tensor: a base tensor (or ``None``) and the same-named tensor of every
source model, all of the same shape, into a new float32 tensor of that shape. Semantics and
parameter names follow mergekit, so a mergekit recipe means the same thing here:

- ``linear``           sum_i w_i * theta_i, divided by sum_i w_i when ``normalize``.
- ``task_arithmetic``  base + lambda * sum_i w_i * tau_i with tau_i = theta_i - base.
- ``ties``             trim each tau_i to its top-``density`` magnitudes, elect a sign per element,
                       keep the agreeing weighted deltas, weighted mean (``normalize``).
- ``dare_ties``        ties with random drop (keep with probability ``density``) instead of trim.
- ``dare_linear``      random drop, then task_arithmetic's plain sum.
- ``breadcrumbs``      drop the ``gamma`` largest and the smallest magnitudes, plain sum.
- ``della``            random drop with a keep probability that grows with magnitude, then ties.
- ``slerp``            spherical interpolation between base (t=0) and the one source (t=1).
- ``model_stock``      interpolate base and the sources' average by their task vectors' angle.

Every function computes in float32 whatever the storage dtype (each input is upcast with
``.float()`` where it is used, so only one float32 copy is alive at a time), never writes into
its inputs, and returns a fresh tensor.

Where this differs from mergekit 0.1.5 (on purpose):
- ``rescale`` of the random methods (DARE, DELLA) scales each kept entry by its inverse keep
  probability (the DARE paper's 1/density; DELLA's 1/p_i), which keeps E[delta] exactly.
  mergekit 0.1.5 instead rescales the kept entries to the L1 norm of the undropped delta (older
  mergekit used 1/density, as here). Random methods cannot be bit-compared with mergekit anyway:
  here the random numbers are a counter-based hash of (seed, source, position) (``uniform24``),
  so a seed rebuilds the same tensor on any device, in any chunking, in any process.
- ``rescale`` of the magnitude trims (ties, breadcrumbs) is mergekit 0.1.5's L1-norm match.
- DELLA ranks magnitudes per output row (``shape[0]`` rows, everything else flattened), for
  every tensor rank; mergekit ranks along dim 1, which for 4-D conv kernels is the input-channel
  axis.
- ``linear`` with ``normalize`` and weights summing to ~0 is a ConfigError (mergekit: NaN).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.registry import Registry

__all__ = [
    "METHODS",
    "MethodSpec",
    "combine_task_vectors",
    "drop_by_rank",
    "drop_random",
    "get_method",
    "keep_limit",
    "magnitude_threshold",
    "merge_method",
    "stream_key",
    "trim_magnitude",
    "trim_outliers",
    "uniform24",
]

# Divisors smaller than this are replaced by 1 in task_arithmetic-style normalisation (mergekit).
_TINY_DIVISOR = 1e-8
# Norms below this are not used to rescale (mergekit's rescaled_masked_tensor / slerp eps).
_TINY_NORM = 1e-7
# |cos| above this: slerp falls back to linear interpolation (mergekit's dot_threshold).
_SLERP_DOT_THRESHOLD = 0.9995


# ---------------------------------------------------------------------------------------------
# Parameter validation
# ---------------------------------------------------------------------------------------------
def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_))


# name -> (predicate on a float, human-readable allowed range). Params not listed here accept
# any finite number.
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "density": (lambda v: 0.0 < v <= 1.0, "0 < density <= 1"),
    "t": (lambda v: 0.0 <= v <= 1.0, "0 <= t <= 1"),
    "gamma": (lambda v: 0.0 <= v <= 1.0, "0 <= gamma <= 1"),
    "epsilon": (lambda v: 0.0 <= v < 1.0, "0 <= epsilon < 1"),
}
# Global params that are switches rather than numbers.
_BOOL_PARAMS = frozenset({"normalize", "rescale", "filter_wise"})


@dataclass(frozen=True)
class MethodSpec:
    """A registered merge method: its tensor function and the parameters it takes.

    ``tensor_params`` are per-source (one value per source, in source order) and
    ``global_params`` method-wide; the dict values are defaults, ``None`` meaning required.
    """

    name: str
    fn: Callable[..., Tensor]
    needs_base: bool
    tensor_params: dict[str, float | None]
    global_params: dict[str, Any]
    random: bool
    exact_sources: int | None = None
    min_sources: int = 1
    # Checks across parameters (all present, each already in range): an error message or None.
    cross_check: Callable[[dict], str | None] | None = None

    # ---- validation -----------------------------------------------------------------------
    def _err(self, message: str) -> ConfigError:
        return ConfigError(f"merge method '{self.name}': {message}")

    def _check_number(self, key: str, value: Any, where: str) -> float:
        if not _is_real(value):
            raise self._err(f"parameter '{key}'{where} must be a number, got {value!r}")
        number = float(value)
        if not math.isfinite(number):
            raise self._err(f"parameter '{key}'{where} = {number} must be finite")
        check, allowed = _RANGES.get(key, (None, ""))
        if check is not None and not check(number):
            raise self._err(
                f"parameter '{key}'{where} = {number} is out of range; allowed: {allowed}"
            )
        return number

    def check_params(self, params: dict, n_sources: int) -> None:
        """Raise ConfigError naming the parameter, its value and the allowed range.

        Missing parameters with a default are fine (``merge`` fills them); missing required ones,
        unknown names, wrong counts and out-of-range values are errors.
        """
        if self.exact_sources is not None and n_sources != self.exact_sources:
            raise self._err(
                f"takes exactly {self.exact_sources} source model(s) besides the base, got "
                f"{n_sources}; list {self.exact_sources} model(s) or pick another method"
            )
        if n_sources < self.min_sources:
            raise self._err(f"needs at least {self.min_sources} source model(s), got {n_sources}")
        known = {**self.tensor_params, **self.global_params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise self._err(
                f"unknown parameter(s) {', '.join(repr(k) for k in unknown)}; "
                f"known: {', '.join(sorted(known)) or '(none)'}"
            )
        for key, default in known.items():
            if key not in params and default is None:
                raise self._err(f"parameter '{key}' is required")

        for key in self.tensor_params:
            if key not in params:
                continue
            values = params[key]
            if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
                raise self._err(
                    f"parameter '{key}' must be a list with one value per source ({n_sources}), "
                    f"got {values!r}"
                )
            if len(values) != n_sources:
                raise self._err(
                    f"parameter '{key}' has {len(values)} value(s) but there are {n_sources} "
                    f"source model(s); give one value per source"
                )
            for i, value in enumerate(values):
                self._check_number(key, value, f" for source #{i}")

        for key in self.global_params:
            if key not in params:
                continue
            value = params[key]
            if key in _BOOL_PARAMS:
                if not _is_bool(value):
                    raise self._err(f"parameter '{key}' must be true or false, got {value!r}")
            else:
                self._check_number(key, value, "")

        if self.cross_check is not None:
            problem = self.cross_check(self.with_defaults(params, n_sources))
            if problem:
                raise self._err(problem)

    def with_defaults(self, params: dict, n_sources: int) -> dict[str, Any]:
        """``params`` with every missing defaulted parameter filled in (per-source: repeated)."""
        full = dict(params)
        for key, default in self.tensor_params.items():
            if key not in full and default is not None:
                full[key] = [default] * n_sources
        for key, default in self.global_params.items():
            if key not in full and default is not None:
                full[key] = default
        return full

    # ---- merging --------------------------------------------------------------------------
    def merge(
        self,
        base: Tensor | None,
        sources: Sequence[Tensor],
        params: dict,
        seed: int | None = None,
    ) -> Tensor:
        """Merge one tensor; returns a new float32 tensor of the inputs' shape."""
        sources = list(sources)
        full = self.with_defaults(params, len(sources))
        self.check_params(full, len(sources))
        if self.needs_base and base is None:
            raise self._err("needs a base model tensor; set a base model")
        if self.random and seed is None:
            raise self._err("is random and needs a seed; set the recipe's seed")
        shapes = {tuple(s.shape) for s in sources}
        if base is not None:
            shapes.add(tuple(base.shape))
        if len(shapes) > 1:
            raise IncompatibleModelsError(
                f"merge method '{self.name}': tensors of different shapes {sorted(shapes)}; "
                f"the models do not share an architecture"
            )

        kwargs: dict[str, Any] = {}
        for key, value in full.items():
            if key in self.tensor_params:
                kwargs[key] = [float(v) for v in value]
            elif key in _BOOL_PARAMS:
                kwargs[key] = bool(value)
            else:
                kwargs[_py_name(key)] = float(value)
        if self.random:
            kwargs["seed"] = int(seed)
        return self.fn(base, sources, **kwargs)


def _py_name(key: str) -> str:
    """``lambda`` is a Python keyword: the tensor functions take it as ``lambda_``."""
    return "lambda_" if key == "lambda" else key


METHODS: Registry[MethodSpec] = Registry("merge method")


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; UnknownNameError listing the known methods otherwise."""
    return METHODS.get(name)


def merge_method(
    name: str,
    *,
    needs_base: bool,
    tensor_params: dict[str, float | None],
    global_params: dict[str, Any],
    random: bool = False,
    exact_sources: int | None = None,
    min_sources: int = 1,
    cross_check: Callable[[dict], str | None] | None = None,
) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Register a tensor function under ``name`` (the function itself is returned unchanged)."""

    def decorate(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        METHODS.add(
            name,
            MethodSpec(
                name=name,
                fn=fn,
                needs_base=needs_base,
                tensor_params=dict(tensor_params),
                global_params=dict(global_params),
                random=random,
                exact_sources=exact_sources,
                min_sources=min_sources,
                cross_check=cross_check,
            ),
        )
        return fn

    return decorate


# ---------------------------------------------------------------------------------------------
# Sparsification of one task vector (all take and return a float32 tensor of any shape)
# ---------------------------------------------------------------------------------------------
def _rescale_l1(delta: Tensor, kept: Tensor) -> Tensor:
    """Scale ``kept`` so that its L1 norm equals ``delta``'s (mergekit 0.1.5's ``rescale``)."""
    before = delta.abs().sum()
    after = kept.abs().sum()
    if before < _TINY_NORM or after < _TINY_NORM:
        return kept
    return kept * (before / after)


def magnitude_threshold(magnitudes: Tensor, k: int) -> Tensor:
    """The k-th largest value of ``magnitudes`` (a 0-d tensor), found without a full sort.

    Measured on 4M float32 magnitudes, density 0.01-0.9, 2 CPU cores: torch.kthvalue
    30-58 ms (89-174 ms with the cores busy), torch.topk(k, sorted=False).values.min() 25-61 ms
    (122-173 ms busy), a full torch.sort 380 ms (810-1034 ms busy, what an argsort-based trim
    pays). kthvalue is as fast as topk and returns one value instead of k values plus int64
    indices (up to 3x the tensor's memory for large k), so it is used.
    """
    flat = magnitudes.reshape(-1)
    return torch.kthvalue(flat, flat.numel() - k + 1).values


def trim_magnitude(delta: Tensor, density: float, rescale: bool = False) -> Tensor:
    """Keep the top-``density`` fraction of ``delta`` by magnitude, zero the rest (TIES trim).

    k = max(1, int(density * numel)) entries are kept, as in mergekit. Entries whose magnitude
    equals the k-th largest are all kept: that differs from mergekit's argsort only when several
    entries have exactly equal float magnitudes at the threshold, which does not change results
    in practice. Zero entries stay zero either way.
    """
    n = delta.numel()
    if density >= 1.0 or n == 0:
        return delta
    k = max(1, int(density * n))
    magnitudes = delta.abs()
    kept = torch.where(magnitudes >= magnitude_threshold(magnitudes, k), delta, 0.0)
    return _rescale_l1(delta, kept) if rescale else kept


def trim_outliers(delta: Tensor, density: float, gamma: float, rescale: bool = False) -> Tensor:
    """Model Breadcrumbs: drop the ``gamma`` fraction of largest magnitudes, then the smallest.

    In ascending magnitude order the kept entries are ranks [n_bot, n_bot + keep) with
    keep = int(density * n), n_top = int(gamma * n) and n_bot = max(0, n - keep - n_top), as in
    mergekit (outlier removal shrinks when it would leave fewer than ``keep`` entries). The two
    rank boundaries are found with kthvalue; entries equal to a boundary are kept.
    """
    n = delta.numel()
    if density >= 1.0 or n == 0:
        return delta
    keep = int(density * n)
    if keep == 0:
        return torch.zeros_like(delta)
    n_top = int(gamma * n)
    n_bot = max(0, n - keep - n_top)
    flat = delta.abs().reshape(-1)
    low = torch.kthvalue(flat, n_bot + 1).values  # smallest kept magnitude
    high = torch.kthvalue(flat, n_bot + keep).values  # largest kept magnitude
    magnitudes = delta.abs()
    kept = torch.where((magnitudes >= low) & (magnitudes <= high), delta, 0.0)
    return _rescale_l1(delta, kept) if rescale else kept


# ---------------------------------------------------------------------------------------------
# The random stream of DARE and DELLA: counter-based, so any slice of it can be drawn on its own
# ---------------------------------------------------------------------------------------------
_LOW32 = 0xFFFFFFFF
_LOWBIAS32 = (0x7FEB352D, 0x846CA68B)  # lowbias32's multipliers
_GOLDEN32 = 0x9E3779B9


def stream_key(seed: int, source: int) -> int:
    """The 32-bit key of source ``source``'s stream for a random merge seeded with ``seed``.

    splitmix64 of the seed and the source index: every source gets an unrelated stream, and a
    source's mask never depends on another source's parameters.
    """
    z = (int(seed) + (source + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 32


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow (c = c' + 2^31)."""
    if c < 2**31:
        return (x * c) & _LOW32
    return (x * (c - 2**31) + ((x & 1) << 31)) & _LOW32


def uniform24(key: int, numel: int, device: torch.device | str = "cpu", start: int = 0) -> Tensor:
    """24 random bits (int64 in [0, 2^24)) for positions start .. start+numel-1 of a stream.

    Entry j is lowbias32(lo32(j) ^ key ^ hi32(j) * 0x9E3779B9) >> 8: a hash of the position, so
    the numbers are the same on every device, in every chunking and in any order of drawing.
    ``evomm.merging.kernels.uniform24`` computes the same numbers in the fused CPU kernels.
    """
    index = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    x = (index & _LOW32) ^ key ^ _mul32(index >> 32, _GOLDEN32)
    x = x ^ (x >> 16)
    x = _mul32(x, _LOWBIAS32[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _LOWBIAS32[1])
    x = x ^ (x >> 16)
    return x >> 8


def keep_limit(density: float) -> int:
    """DARE keeps an entry where its 24 random bits are below this: u < density for
    u = bits / 2^24 compared in float32, as ``torch.rand(...) < density`` would."""
    return min(2**24, math.ceil(float(np.float32(density)) * 2.0**24))


def drop_random(delta: Tensor, density: float, rescale: bool, key: int) -> Tensor:
    """DARE: keep each entry with probability ``density``; multiply kept ones by 1/density.

    The mask is ``uniform24(key, ...) < keep_limit(density)`` over the flattened tensor.
    """
    keep = uniform24(key, delta.numel(), delta.device).reshape(delta.shape) < keep_limit(density)
    kept = torch.where(keep, delta, 0.0)
    return kept * (1.0 / density) if rescale else kept


def drop_by_rank(delta: Tensor, density: float, epsilon: float, rescale: bool, key: int) -> Tensor:
    """DELLA's MagPrune: per output row, keep probability rises linearly with magnitude rank.

    For a row of m entries the smallest gets density - epsilon, the largest density + epsilon.
    Kept entries are divided by their own keep probability when ``rescale`` (E[delta] kept).
    """
    if delta.numel() == 0:
        return delta
    rows = delta.reshape(delta.shape[0], -1) if delta.dim() >= 2 else delta.reshape(1, -1)
    if density >= 1.0:
        return delta
    u = uniform24(key, rows.numel(), delta.device).reshape(rows.shape).float() * 2.0**-24
    m = rows.shape[1]
    if m > 1:
        order = rows.abs().argsort(dim=1)  # [rows, m], ascending magnitude
        ranks = torch.empty_like(rows)
        steps = torch.arange(m, device=delta.device, dtype=rows.dtype).expand_as(rows)
        ranks.scatter_(1, order, steps / (m - 1))  # normalised rank in [0, 1]
        probs = (density - epsilon) + 2.0 * epsilon * ranks
    else:
        probs = torch.full_like(rows, density)
    kept = torch.where(u < probs, rows, 0.0)
    if rescale:
        kept = kept / probs
    return kept.reshape(delta.shape)


# ---------------------------------------------------------------------------------------------
# Combining task vectors
# ---------------------------------------------------------------------------------------------
def combine_task_vectors(
    base: Tensor,
    deltas: list[Tensor],
    weight: Sequence[float],
    *,
    elect_sign: bool,
    normalize: bool,
    lambda_: float,
) -> Tensor:
    """base + lambda * combine(w_i * delta_i), in float32 (mergekit's generalized task arithmetic).

    ``deltas`` are float32 task vectors owned by the caller's computation (they are scaled in
    place). With ``elect_sign`` the majority sign per element is the sign of the sum of the
    weighted deltas (>= 0 counts as +); only weighted deltas of that sign are summed (zeros have
    sign 0 and never count) and the divisor is the sum of the kept weights (0 becomes 1).
    Without it all weighted deltas are summed and the divisor is sum(w) (|d| < 1e-8 becomes 1).
    """
    for delta, w in zip(deltas, weight):
        delta.mul_(w)
    mixed = torch.zeros_like(deltas[0])
    if elect_sign:
        for delta in deltas:
            mixed.add_(delta)
        majority = torch.where(mixed >= 0, 1.0, -1.0)  # [shape]
        mixed.zero_()
        divisor = torch.zeros_like(mixed)
        for delta, w in zip(deltas, weight):
            agree = torch.sign(delta) == majority
            mixed.add_(torch.where(agree, delta, 0.0))
            divisor.add_(agree, alpha=w)
        divisor[divisor == 0] = 1.0
    else:
        for delta in deltas:
            mixed.add_(delta)
        divisor = math.fsum(weight)
        if abs(divisor) < _TINY_DIVISOR:
            divisor = 1.0
    if normalize:
        mixed.div_(divisor)
    if lambda_ != 1.0:
        mixed.mul_(lambda_)
    return base.float() + mixed


def _task_vectors(base: Tensor, sources: Sequence[Tensor]) -> list[Tensor]:
    """tau_i = theta_i - base in float32 (fresh tensors, safe to modify)."""
    base32 = base.float()
    return [source.float() - base32 for source in sources]


# ---------------------------------------------------------------------------------------------
# Checks across parameters (the dict has every defaulted parameter filled in)
# ---------------------------------------------------------------------------------------------
def _weights_can_normalize(params: dict) -> str | None:
    weights = params.get("weight")
    if params["normalize"] and weights is not None:
        if abs(math.fsum(float(w) for w in weights)) < _TINY_DIVISOR:
            return (
                f"weights {list(weights)} sum to ~0, so normalize cannot divide by them; "
                f"change the weights or set normalize: false"
            )
    return None


def _della_probabilities_in_range(params: dict) -> str | None:
    """DELLA's keep probabilities span density +/- epsilon and must stay inside (0, 1)."""
    for i, (d, e) in enumerate(zip(params.get("density", ()), params.get("epsilon", ()))):
        if d < 1.0 and not (0.0 < d - e and d + e < 1.0):
            return (
                f"source #{i}: density {d} +/- epsilon {e} must lie inside (0, 1); "
                f"lower epsilon below min(density, 1 - density)"
            )
    return None


# ---------------------------------------------------------------------------------------------
# The methods
# ---------------------------------------------------------------------------------------------
@merge_method(
    "linear",
    needs_base=False,
    tensor_params={"weight": None},
    global_params={"normalize": True},
    cross_check=_weights_can_normalize,
)
def linear(
    base: Tensor | None, sources: Sequence[Tensor], *, weight: list[float], normalize: bool
) -> Tensor:
    """sum_i w_i * theta_i, divided by sum_i w_i when ``normalize``. ``base`` is not used."""
    out = torch.zeros(sources[0].shape, dtype=torch.float32, device=sources[0].device)
    for source, w in zip(sources, weight):
        out.add_(source.float(), alpha=w)
    if normalize:
        out.div_(math.fsum(weight))
    return out


@merge_method(
    "task_arithmetic",
    needs_base=True,
    tensor_params={"weight": None},
    global_params={"normalize": False, "lambda": 1.0},
)
def task_arithmetic(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    normalize: bool,
    lambda_: float,
) -> Tensor:
    """base + lambda * sum_i w_i * (theta_i - base) [/ sum_i w_i when ``normalize``]."""
    deltas = _task_vectors(base, sources)
    return combine_task_vectors(
        base, deltas, weight, elect_sign=False, normalize=normalize, lambda_=lambda_
    )


@merge_method(
    "ties",
    needs_base=True,
    tensor_params={"weight": None, "density": 1.0},
    global_params={"normalize": True, "lambda": 1.0, "rescale": False},
)
def ties(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    density: list[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
) -> Tensor:
    """TIES-Merging: trim each task vector to its top-density magnitudes, elect signs, mean."""
    deltas = [
        trim_magnitude(tau, d, rescale) for tau, d in zip(_task_vectors(base, sources), density)
    ]
    return combine_task_vectors(
        base, deltas, weight, elect_sign=True, normalize=normalize, lambda_=lambda_
    )


def _dare(base: Tensor, sources: Sequence[Tensor], weight: list[float], density: list[float],
          normalize: bool, lambda_: float, rescale: bool, seed: int, elect_sign: bool) -> Tensor:
    """Drop each task-vector entry with probability 1 - density (source i's mask from
    stream_key(seed, i)), rescale the kept ones, then combine with or without sign election."""
    deltas = [
        drop_random(tau, d, rescale, stream_key(seed, i))
        for i, (tau, d) in enumerate(zip(_task_vectors(base, sources), density))
    ]
    return combine_task_vectors(
        base, deltas, weight, elect_sign=elect_sign, normalize=normalize, lambda_=lambda_
    )


@merge_method(
    "dare_ties",
    needs_base=True,
    tensor_params={"weight": None, "density": 1.0},
    global_params={"normalize": False, "lambda": 1.0, "rescale": True},
    random=True,
)
def dare_ties(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    density: list[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    seed: int,
) -> Tensor:
    """DARE drop-and-rescale of each task vector, then TIES sign election."""
    return _dare(base, sources, weight, density, normalize, lambda_, rescale, seed, elect_sign=True)


@merge_method(
    "dare_linear",
    needs_base=True,
    tensor_params={"weight": None, "density": 1.0},
    global_params={"normalize": False, "lambda": 1.0, "rescale": True},
    random=True,
)
def dare_linear(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    density: list[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    seed: int,
) -> Tensor:
    """DARE drop-and-rescale of each task vector, then task arithmetic's weighted sum."""
    return _dare(base, sources, weight, density, normalize, lambda_, rescale, seed, elect_sign=False)


@merge_method(
    "breadcrumbs",
    needs_base=True,
    tensor_params={"weight": None, "density": 1.0, "gamma": 0.01},
    global_params={"normalize": False, "lambda": 1.0, "rescale": False},
)
def breadcrumbs(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    density: list[float],
    gamma: list[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
) -> Tensor:
    """Model Breadcrumbs: drop outliers and small entries of each task vector, weighted sum."""
    deltas = [
        trim_outliers(tau, d, g, rescale)
        for tau, d, g in zip(_task_vectors(base, sources), density, gamma)
    ]
    return combine_task_vectors(
        base, deltas, weight, elect_sign=False, normalize=normalize, lambda_=lambda_
    )


@merge_method(
    "della",
    needs_base=True,
    tensor_params={"weight": None, "density": 1.0, "epsilon": 0.15},
    global_params={"normalize": True, "lambda": 1.0, "rescale": True},
    random=True,
    cross_check=_della_probabilities_in_range,
)
def della(
    base: Tensor,
    sources: Sequence[Tensor],
    *,
    weight: list[float],
    density: list[float],
    epsilon: list[float],
    normalize: bool,
    lambda_: float,
    rescale: bool,
    seed: int,
) -> Tensor:
    """DELLA: magnitude-ranked random drop (MagPrune) of each task vector, then TIES election."""
    deltas = [
        drop_by_rank(tau, d, e, rescale, stream_key(seed, i))
        for i, (tau, d, e) in enumerate(zip(_task_vectors(base, sources), density, epsilon))
    ]
    return combine_task_vectors(
        base, deltas, weight, elect_sign=True, normalize=normalize, lambda_=lambda_
    )


@merge_method(
    "slerp", needs_base=True, tensor_params={}, global_params={"t": None}, exact_sources=1
)
def slerp(base: Tensor, sources: Sequence[Tensor], *, t: float) -> Tensor:
    """Spherical interpolation from ``base`` (t=0) to the single source (t=1), whole tensor.

    The angle comes from normalised copies; the interpolation weights sin((1-t)theta)/sin(theta)
    and sin(t theta)/sin(theta) multiply the ORIGINAL tensors, so norms are interpolated too.
    Nearly colinear (or antipodal) tensors, |cos| > 0.9995, use (1-t) v0 + t v1.
    """
    v0 = base.float()
    v1 = sources[0].float()
    norm0 = torch.linalg.vector_norm(v0)
    norm1 = torch.linalg.vector_norm(v1)
    norm0 = norm0 if norm0 > 1e-8 else torch.ones_like(norm0)  # zero tensors: no direction
    norm1 = norm1 if norm1 > 1e-8 else torch.ones_like(norm1)
    # Divide before the product so that large float16-range weights cannot overflow the dot.
    dot = float(((v0 / norm0) * (v1 / norm1)).sum().clamp(-1.0, 1.0))
    if abs(dot) > _SLERP_DOT_THRESHOLD:
        coef0, coef1 = 1.0 - t, t
    else:
        theta = math.acos(dot)
        coef0 = math.sin((1.0 - t) * theta) / math.sin(theta)
        coef1 = math.sin(t * theta) / math.sin(theta)
    return coef0 * v0 + coef1 * v1


@merge_method(
    "model_stock",
    needs_base=True,
    tensor_params={},
    global_params={"filter_wise": False},
    min_sources=2,
)
def model_stock(base: Tensor, sources: Sequence[Tensor], *, filter_wise: bool) -> Tensor:
    """Model Stock: t * mean(sources) + (1 - t) * base, t from the task vectors' mean cosine.

    t = k cos / (1 + (k - 1) cos) for k sources; where the denominator is ~0 the base is kept.
    With ``filter_wise`` one t per output row (dim 0), else one per tensor.
    """
    shape = base.shape
    if filter_wise:
        w0 = base.float().reshape(shape[0], -1) if base.dim() >= 2 else base.float().reshape(1, -1)
    else:
        w0 = base.float().reshape(1, -1)
    ws = [source.float().reshape(w0.shape) for source in sources]
    offsets = [w - w0 for w in ws]  # [rows, cols] each
    cosines = []
    for i, a in enumerate(offsets):
        for b in offsets[i + 1 :]:
            norms = torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1)
            cosines.append(((a * b).sum(dim=-1) / norms.clamp(min=1e-6)).clamp(-1.0, 1.0))
    cos = torch.stack(cosines).mean(dim=0).unsqueeze(-1)  # [rows, 1]
    k = len(ws)
    denominator = 1.0 + (k - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, 0.0, k * cos / torch.where(singular, 1.0, denominator))
    average = torch.stack(ws).mean(dim=0)
    return (t * average + (1.0 - t) * w0).reshape(shape)
