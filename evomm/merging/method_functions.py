"""The merge methods' tensor functions (names, parameters and semantics: ``evomm.merging.methods``).

Each merges ONE tensor: a base tensor (or ``None``) and the same-named tensor of every source
model, all of the same shape, into a new float32 tensor of that shape. Everything is computed in
float32 whatever the storage dtype (each input is upcast with ``.float()`` where it is used, so
only one float32 copy is alive at a time); no function writes into its inputs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from evomm.merging.methods import sum_divisor
from evomm.merging.random_stream import stream_key
from evomm.merging.sparsify import drop_by_rank, drop_random, trim_magnitude, trim_outliers

__all__ = ["breadcrumbs", "combine_task_vectors", "dare_linear", "dare_ties", "della", "linear", "model_stock",
           "slerp", "task_arithmetic", "ties"]

# |cos| above this: slerp falls back to linear interpolation (mergekit's dot_threshold).
_SLERP_DOT_THRESHOLD = 0.9995


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
        divisor = sum_divisor(weight)
    if normalize:
        mixed.div_(divisor)
    if lambda_ != 1.0:
        mixed.mul_(lambda_)
    return base.float() + mixed


def _task_vectors(base: Tensor, sources: Sequence[Tensor]) -> list[Tensor]:
    """tau_i = theta_i - base in float32 (fresh tensors, safe to modify)."""
    base32 = base.float()
    return [source.float() - base32 for source in sources]


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

