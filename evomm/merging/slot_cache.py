"""What the engine remembers about one slot while its base and sources are unchanged."""

from __future__ import annotations

import weakref
from typing import Any
from dataclasses import dataclass, field

from evomm.merging.slots import TensorSlot
from evomm.merging.topk import TieOrders


@dataclass
class SlotCache:
    """What the engine remembers about one slot while its base and sources are unchanged."""

    inputs: tuple  # (id, version) of base and sources: a change invalidates the cache
    indexes: dict[int, Any] = field(default_factory=dict)  # TIES magnitude index, per source
    ties_merges: int = 0  # TIES merges done with these inputs: the index pays off from the second
    slerp_dot: float | None = None
    tie_orders: dict[int, TieOrders] = field(default_factory=dict)  # TIES, per source

    def orders(self, source: int, n: int) -> TieOrders:
        """Source ``source``'s cached tie orders: at most n / 64 positions (n / 16 bytes)."""
        if source not in self.tie_orders:
            self.tie_orders[source] = TieOrders(cap=max(1024, n // 64))
        return self.tie_orders[source]


_CACHES: dict[int, SlotCache] = {}


def slot_cache(slot: TensorSlot) -> SlotCache:
    inputs = tuple((id(t), t._version) for t in [slot.base, *slot.sources] if t is not None)
    key = id(slot)
    cache = _CACHES.get(key)
    if cache is None:
        weakref.finalize(slot, _CACHES.pop, key, None)  # forget the slot when it is gone
    if cache is None or cache.inputs != inputs:
        cache = _CACHES[key] = SlotCache(inputs)
    return cache

