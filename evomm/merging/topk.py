"""The magnitude top-k of TIES: exactly mergekit's k entries, ties broken by a stated rule.

mergekit 0.1.5 (``sparsify.magnitude``) keeps k = max(1, int(density * numel)) entries of a task
vector: the first k of ``torch.argsort(|tau|.float(), descending=True)`` on the CPU. Every entry
above the k-th largest magnitude v is kept, every entry below it dropped; of the entries equal to v
(common: bf16 task vectors take few distinct values, and even float32 ones, base + a small
change, fall on the base's float grid) only k - count(> v) are kept. Which ones is the method's
``tie_order``:

- ``index`` (evomm's default): the first in index order, as a stable sort would list them. Cheap
  in every path (the fused kernel collects the tied entries in its pass).
- ``mergekit``: the ones mergekit's CPU sort lists first. That sort is not stable (libstdc++'s
  introsort), so its order among equal values follows from the whole tensor: ``kept_ties``
  replays it (``sort_kernels.sort_range``, numba; ``torch.argsort`` itself where numba is missing
  or ``EVOMM_KERNELS=torch``), about two passes of a quickselect per tied tensor and source.
  Recipes read from a mergekit YAML use it, so ``evomm merge`` gives mergekit's tensors.

A :class:`Trim` is one source's decision for one tensor, which every merge path applies the same
way: keep |tau| >= ``threshold``, plus the tied entries listed in ``ties``. ``array_trim`` is
the whole decision on a numpy array, for the streamed one-shot merge, which runs without torch:
the functions that take tensors import torch themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np

from evomm.merging.backend import fast_kernels

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["TIE_ORDERS", "Trim", "TieOrders", "apply_trim", "band_slice", "exact_trim", "kept_ties", "next_up",
           "sorted_slice", "tied_positions", "top_k", "array_trim"]

TIE_ORDERS = ("index", "mergekit")


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
    import torch

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


def tied_positions(magnitudes: Tensor | Callable[[], Tensor], value: float) -> np.ndarray:
    """Ascending flat positions of the entries equal to ``value``."""
    import torch

    magnitudes = magnitudes() if callable(magnitudes) else magnitudes
    return torch.nonzero(magnitudes.reshape(-1) == value).reshape(-1).cpu().numpy()


def exact_trim(magnitudes: Tensor | Callable[[], Tensor], k: int, value: float, greater: int | None = None,
               equal: int | None = None, orders: TieOrders | None = None, tie_order: str = "index",
               tied: np.ndarray | None = None) -> Trim:
    """The trim that keeps exactly k entries, given the k-th largest magnitude ``value``.

    Of the entries tied at ``value``, ``tie_order`` keeps the first in index order (``index``;
    ``tied``, their ascending positions, when the caller has them) or the ones torch's CPU
    argsort lists first (``mergekit``). ``greater`` and ``equal`` (entries above and at
    ``value``) are counted when not given (then ``magnitudes`` must be a tensor). A threshold of
    0 keeps every entry: tied zeros are zeros whether kept or not.
    """
    if value <= 0.0:
        return Trim(0.0)
    if greater is None or equal is None:
        import torch

        greater = int(torch.count_nonzero(magnitudes > value))
        equal = int(torch.count_nonzero(magnitudes == value))
    if greater + equal <= k:
        return Trim(value)
    if tie_order == "index":
        tied = tied_positions(magnitudes, value) if tied is None else tied
        return Trim(next_up(value), tied[: k - greater].astype(np.int64))
    return Trim(next_up(value), kept_ties(magnitudes, value, greater, equal, k, orders))


def band_slice(magnitudes: Tensor, value: float, first: int, start: int, stop: int, descending: bool,
               tie_order: str) -> np.ndarray:
    """Positions of the entries equal to ``value`` (ranks [first, first + count) in a sort of
    ``magnitudes``) that the sort puts at ranks [start, stop), a part of that band: with
    ``index``, ties in index order (a stable sort); with ``mergekit``, torch's CPU sort."""
    if tie_order == "index":
        return tied_positions(magnitudes, value)[start - first:stop - first]
    return sorted_slice(magnitudes.detach().reshape(-1).float().cpu().numpy(), descending, start, stop)


def apply_trim(delta: Tensor, trim: Trim) -> Tensor:
    """``delta`` (float32, any shape) with the entries the trim drops set to zero (a new tensor)."""
    import torch

    if trim.threshold <= 0.0 and trim.ties is None:
        return delta.clone()
    flat = delta.reshape(-1)
    keep = flat.abs() >= trim.threshold
    if trim.ties is not None and trim.ties.size:
        keep[torch.from_numpy(trim.ties).to(flat.device)] = True
    return torch.where(keep, flat, 0.0).reshape(delta.shape)


def array_trim(magnitudes: np.ndarray, k: int, tie_order: str) -> Trim:
    """The trim that keeps exactly k entries of one flat float32 |tau| (a numpy array, used as
    scratch: reordered by the ``mergekit`` order), without torch.

    ``mergekit``: the first k of torch's CPU argsort are the entries at positions [0, k) once
    the sort is replayed down to the partition that holds the boundary between ranks k - 1
    and k (``sort_kernels.sort_range``; the partitions left out lie wholly on one side of it);
    position k - 1 then holds the k-th largest v. ``index``: v by a radix selection, the ties at
    v kept in index order. Needs numba (the callers check ``fast_kernels``).
    """
    from evomm.merging import kernels
    from evomm.merging.sort_kernels import sort_range

    n = magnitudes.size
    if k >= n:
        return Trim(0.0)
    if tie_order == "mergekit":
        idx = np.arange(n, dtype=np.int32 if n < 2**31 else np.int64)
        sort_range(magnitudes, idx, True, k - 1, k, 2 * (n.bit_length() - 1))
        value = float(magnitudes[k - 1])
        if value <= 0.0:
            return Trim(0.0)  # tied zeros are zeros whether kept or not
        head = magnitudes[:k]
        return Trim(next_up(value), np.sort(idx[:k][head == np.float32(value)]).astype(np.int64))
    value = float(kernels.kth_largest(magnitudes, k))
    if value <= 0.0:
        return Trim(0.0)
    greater = int(np.count_nonzero(magnitudes > np.float32(value)))
    return Trim(next_up(value), np.flatnonzero(magnitudes == np.float32(value))[: k - greater].astype(np.int64))
