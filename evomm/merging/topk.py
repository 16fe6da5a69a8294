"""mergekit's magnitude top-k: exactly k entries, ties broken as torch's CPU argsort breaks them.

mergekit 0.1.5 (``sparsify.magnitude``) keeps k = max(1, int(density * numel)) entries of a task
vector: the first k of ``torch.argsort(|tau|.float(), descending=True)`` on the CPU. Every entry
above the k-th largest magnitude v is kept, every entry below it dropped; of the entries equal to v
(common in bf16 checkpoints, whose task vectors take few distinct values) only the first
k - count(> v) in that sort's order are kept. That order is not the index order: torch's CPU sort
is libstdc++'s unstable introsort. ``kept_ties`` reproduces it (``sort_kernels.sort_range``,
compiled by numba; ``torch.argsort`` itself where numba is missing or ``EVOMM_KERNELS=torch``).

A :class:`Trim` is one source's decision for one tensor, which every merge path applies the same
way: keep |tau| >= ``threshold``, plus the tied entries listed in ``ties``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from evomm.merging.backend import fast_kernels

__all__ = ["Trim", "TieOrders", "apply_trim", "exact_trim", "kept_ties", "next_up", "sorted_slice", "top_k"]


def top_k(density: float, n: int) -> int:
    """Entries a magnitude trim keeps: mergekit's max(1, int(density * n)) (n for density >= 1)."""
    if density >= 1.0:
        return n
    return max(1, int(density * n)) if n else 0


def next_up(value: float) -> float:
    """The smallest float32 above ``value``: |x| >= next_up(v) keeps exactly |x| > v."""
    return float(np.nextafter(np.float32(value), np.float32(np.inf)))


@dataclass(frozen=True)
class Trim:
    """Keep the entries with |tau| >= threshold and those at ``ties`` (sorted flat positions)."""

    threshold: float
    ties: np.ndarray | None = None


class TieOrders:
    """Per tensor and source: the order in which the CPU sort lists the entries of one tied
    magnitude, by magnitude. The order depends on |tau| alone, not on the density, so a search
    that comes back to a level reuses it; at most ``cap`` positions are kept (then it starts over).
    """

    def __init__(self, cap: int):
        self.cap, self.orders, self.size = cap, {}, 0

    def get(self, value: float) -> np.ndarray | None:
        return self.orders.get(value)

    def put(self, value: float, order: np.ndarray) -> None:
        if self.size + order.size > self.cap:
            self.orders, self.size = {}, 0
        if order.size <= self.cap:
            self.orders[value] = order.astype(np.int32) if order.size and order.max() < 2**31 else order
            self.size += order.size


def sorted_slice(values: np.ndarray, descending: bool, start: int, stop: int) -> np.ndarray:
    """Positions that ``torch.sort(values, descending=...)`` on the CPU puts at [start, stop)."""
    if fast_kernels():
        from evomm.merging.sort_kernels import sort_range

        vals = np.array(values, dtype=np.float32, copy=True)
        idx = np.arange(vals.size, dtype=np.int64)
        depth = 2 * (vals.size.bit_length() - 1) if vals.size else 0
        sort_range(vals, idx, descending, start, stop, depth)
        return idx[start:stop].copy()
    order = torch.argsort(torch.from_numpy(np.ascontiguousarray(values, np.float32)), descending=descending)
    return order[start:stop].numpy().copy()


def kept_ties(magnitudes: Tensor | Callable[[], Tensor], value: float, greater: int, equal: int, k: int,
              orders: TieOrders | None = None) -> np.ndarray:
    """Sorted positions of the k - greater entries equal to ``value`` that mergekit keeps.

    ``magnitudes``: the flat float32 |tau| (any device), or a function that computes it (called
    only when the order is not cached); ``greater``/``equal``: its entries above and at
    ``value``, with greater < k < greater + equal.
    """
    order = orders.get(value) if orders is not None else None
    if order is None:
        magnitudes = magnitudes() if callable(magnitudes) else magnitudes
        values = magnitudes.detach().reshape(-1).float().cpu().numpy()
        order = sorted_slice(values, True, greater, greater + equal)
        if orders is not None:
            orders.put(value, order)
    return np.sort(order[: k - greater]).astype(np.int64)


def exact_trim(magnitudes: Tensor | Callable[[], Tensor], k: int, value: float, greater: int | None = None,
               equal: int | None = None, orders: TieOrders | None = None) -> Trim:
    """The trim that keeps exactly mergekit's k entries, given the k-th largest magnitude.

    ``greater`` and ``equal`` (entries above and at ``value``) are counted when not given (then
    ``magnitudes`` must be a tensor). A
    threshold of 0 keeps every entry: tied zeros are zeros whether kept or not.
    """
    if value <= 0.0:
        return Trim(0.0)
    if greater is None or equal is None:
        greater = int(torch.count_nonzero(magnitudes > value))
        equal = int(torch.count_nonzero(magnitudes == value))
    if greater + equal <= k:
        return Trim(value)
    return Trim(next_up(value), kept_ties(magnitudes, value, greater, equal, k, orders))


def apply_trim(delta: Tensor, trim: Trim) -> Tensor:
    """``delta`` (float32, any shape) with the entries the trim drops set to zero (a new tensor)."""
    if trim.threshold <= 0.0 and trim.ties is None:
        return delta.clone()
    flat = delta.reshape(-1)
    keep = flat.abs() >= trim.threshold
    if trim.ties is not None and trim.ties.size:
        keep[torch.from_numpy(trim.ties).to(flat.device)] = True
    return torch.where(keep, flat, 0.0).reshape(delta.shape)
