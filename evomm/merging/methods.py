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
its inputs, and returns a fresh tensor. The tensor functions of the sparsification steps live in
``evomm.merging.sparsify``, the random stream in ``evomm.merging.random_stream``, the parameter
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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from evomm.merging.method_spec import MethodSpec
from evomm.merging.random_stream import keep_limit, stream_key, uniform24
from evomm.merging.sparsify import (
    drop_by_rank,
    drop_random,
    magnitude_threshold,
    trim_magnitude,
    trim_outliers,
)
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
# |cos| above this: slerp falls back to linear interpolation (mergekit's dot_threshold).
_SLERP_DOT_THRESHOLD = 0.9995

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
    global_params={"normalize": True, "lambda": 1.0, "rescale": False, "tie_order": "index"},
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
    tie_order: str,
) -> Tensor:
    """TIES-Merging: trim each task vector to its top-density magnitudes, elect signs, mean.

    Exactly k = max(1, int(density * numel)) entries per task vector are kept; of the entries
    tied at the k-th largest magnitude, the first in index order (``tie_order: index``) or the
    ones mergekit's CPU argsort lists first (``tie_order: mergekit``; slower).
    """
    deltas = [
        trim_magnitude(tau, d, rescale, tie_order) for tau, d in zip(_task_vectors(base, sources), density)
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
    global_params={"normalize": False, "lambda": 1.0, "rescale": False, "tie_order": "index"},
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
    tie_order: str,
) -> Tensor:
    """Model Breadcrumbs: drop outliers and small entries of each task vector, weighted sum."""
    deltas = [
        trim_outliers(tau, d, g, rescale, tie_order)
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

