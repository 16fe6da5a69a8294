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
its inputs, and returns a fresh tensor. The tensor functions live in ``evomm.merging.method_functions`` (this registry imports no torch:
``evomm merge`` checks a recipe before it decides whether torch is needed at all), those of the
sparsification steps in ``evomm.merging.sparsify``, the random stream in ``evomm.merging.random_stream``, the parameter
checks in ``evomm.merging.method_spec``.

The magnitude trims (ties, breadcrumbs) keep exactly mergekit 0.1.5's entries: its counts
(k = max(1, int(density * numel)) for ties) and, among entries of equal magnitude at a boundary,
the ones its CPU ``torch.argsort`` / ``torch.sort`` puts first (``evomm.merging.topk``).

Where this differs from mergekit 0.1.5 (on purpose):
- ``rescale`` of the random methods (DARE, DELLA) scales each kept entry by its inverse keep
  probability (the DARE paper's 1/density; DELLA's 1/p_i), which keeps E[delta] exactly.
  mergekit 0.1.5 instead rescales the kept entries to the L1 norm of the undropped delta (older
  mergekit used 1/density, as here). Random methods cannot be bit-compared with mergekit anyway:
  here the random numbers are a counter-based hash of (seed, source, position) (``uniform24``),
  so a seed rebuilds the same tensor on any device, in any chunking, in any process.
- ``rescale`` of the magnitude trims (ties, breadcrumbs) is mergekit 0.1.5's L1-norm match.
- mergekit computes in the merge's dtype (bf16 task vectors and sums for ``dtype: bfloat16``);
  here everything is float32, rounded once at the end. For the deterministic methods the result
  is mergekit's ``dtype: float32`` result, rounded to the storage dtype.
- DELLA ranks magnitudes per output row (``shape[0]`` rows, everything else flattened), for
  every tensor rank; mergekit ranks along dim 1, which for 4-D conv kernels is the input-channel
  axis.
- ``linear`` with ``normalize`` and weights summing to ~0 is a ConfigError (mergekit: NaN).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from evomm.merging.method_spec import MethodSpec
from evomm.registry import Registry

__all__ = ["METHODS", "MethodSpec", "get_method", "merge_method"]

# Divisors smaller than this are replaced by 1 in task_arithmetic-style normalisation (mergekit).
TINY_DIVISOR = 1e-8

METHODS: Registry[MethodSpec] = Registry("merge method")


def sum_divisor(weight: list[float]) -> float:
    """Task arithmetic's normalisation: sum of the weights, 1 when it is ~0 (as mergekit)."""
    divisor = math.fsum(weight)
    return 1.0 if abs(divisor) < TINY_DIVISOR else divisor


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
) -> Callable[[Callable], Callable]:
    """Register a tensor function under ``name`` (the function itself is returned unchanged)."""

    def decorate(fn: Callable) -> Callable:
        _register(name, fn, needs_base=needs_base, tensor_params=tensor_params, global_params=global_params,
                  random=random, exact_sources=exact_sources, min_sources=min_sources, cross_check=cross_check)
        return fn

    return decorate


def _register(name: str, fn: Callable | str, **spec: Any) -> None:
    spec["tensor_params"], spec["global_params"] = dict(spec["tensor_params"]), dict(spec["global_params"])
    METHODS.add(name, MethodSpec(name=name, fn=fn, **spec))


def _builtin(name: str, **spec: Any) -> None:
    """A built-in method: its tensor function ``name`` in ``evomm.merging.method_functions``."""
    spec.setdefault("random", False)  # MethodSpec's one field without a default
    _register(name, f"evomm.merging.method_functions.{name}", **spec)


# ---------------------------------------------------------------------------------------------
# Checks across parameters (the dict has every defaulted parameter filled in)
# ---------------------------------------------------------------------------------------------
def _weights_can_normalize(params: dict) -> str | None:
    weights = params.get("weight")
    if params["normalize"] and weights is not None:
        if abs(math.fsum(float(w) for w in weights)) < TINY_DIVISOR:
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
# The built-in methods (semantics: the module docstring; tensor functions: method_functions)
# ---------------------------------------------------------------------------------------------
_builtin("linear", needs_base=False, tensor_params={"weight": None}, global_params={"normalize": True},
         cross_check=_weights_can_normalize)
_builtin("task_arithmetic", needs_base=True, tensor_params={"weight": None},
         global_params={"normalize": False, "lambda": 1.0})
_builtin("ties", needs_base=True, tensor_params={"weight": None, "density": 1.0},
         global_params={"normalize": True, "lambda": 1.0, "rescale": False, "tie_order": "index"})
_builtin("dare_ties", needs_base=True, tensor_params={"weight": None, "density": 1.0},
         global_params={"normalize": False, "lambda": 1.0, "rescale": True}, random=True)
_builtin("dare_linear", needs_base=True, tensor_params={"weight": None, "density": 1.0},
         global_params={"normalize": False, "lambda": 1.0, "rescale": True}, random=True)
_builtin("breadcrumbs", needs_base=True, tensor_params={"weight": None, "density": 1.0, "gamma": 0.01},
         global_params={"normalize": False, "lambda": 1.0, "rescale": False, "tie_order": "index"})
_builtin("della", needs_base=True, tensor_params={"weight": None, "density": 1.0, "epsilon": 0.15},
         global_params={"normalize": True, "lambda": 1.0, "rescale": True}, random=True,
         cross_check=_della_probabilities_in_range)
_builtin("slerp", needs_base=True, tensor_params={}, global_params={"t": None}, exact_sources=1)
_builtin("model_stock", needs_base=True, tensor_params={}, global_params={"filter_wise": False},
         min_sources=2)
