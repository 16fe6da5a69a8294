"""TIES thresholds for the fused CPU kernel: exact top-k per source without sorting a tensor.

A slot's first TIES merge takes single-use thresholds: a sample brackets each k-th largest
|tau|, and one pass counts the entries above and at the bracket's ends and collects those
inside. From its second merge on, a cached *magnitude index* per source (the exact number of
entries at or above edges placed every ~WINDOW entries, from one histogram of the float bits of
|tau|) brackets the k-th largest for any density; the fused kernel trims at the upper edge and
collects the entries between the edges, and ``Thresholds.fix_up`` finds the exact threshold
among them and recomputes the entries it adds. 12 bytes per WINDOW entries (~2% of a float32
tensor) per source. Where several entries tie at the k-th largest magnitude, the kept ones are
mergekit's (``evomm.merging.topk``) and are recomputed by the fix-up as well.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from evomm.merging import kernels
from evomm.merging import ties_select
from evomm.merging.mix import Trims, recompute_at, sorted_union
from evomm.merging.ties_select import sample_geometry
from evomm.merging.slot_cache import SlotCache
from evomm.merging.sparsify import magnitude_threshold
from evomm.merging.topk import Trim, exact_trim, next_up, top_k
from evomm.merging.workspace import Workspace, as_f32

# Magnitude index: an edge every WINDOW entries (at least INDEX_EDGES edges per tensor), so the
# entries between two edges that the fused pass collects are ~WINDOW (or n / INDEX_EDGES) per
# tensor and source; the index costs 12 bytes per WINDOW entries (~2% of a float32 tensor).
INDEX_EDGES = 256
WINDOW = 128
OCTAVES = 24  # the index resolves magnitudes down to 2^-24 of the largest; below, one bucket
_SHIFT = 8  # magnitude buckets: float32 bits >> 8 (2^15 buckets per octave)
# TIES on tensors up to this size takes its exact thresholds from kthvalue (no index needed).
SMALL_TENSOR = 1 << 16
_MIN_SUBNORMAL = float(np.nextafter(np.float32(0), np.float32(1)))  # smallest positive float32


@dataclass
class MagnitudeIndex:
    """Exact counts of |tau| >= e for ~INDEX_EDGES edges e (descending, last edge 0.0)."""

    edges: np.ndarray  # float32 [E], descending, edges[-1] == 0
    at_least: np.ndarray  # int64 [E], entries with |tau| >= edges[j]; non-decreasing, last == n
    zeros: int  # entries with tau == 0 exactly

    @classmethod
    def build(cls, base: Tensor, source: Tensor, work: Workspace) -> MagnitudeIndex:
        """Two passes over |tau|: its largest value, then a histogram of its float bits.

        Buckets are 1/32768 octave (bits >> 8) over the OCTAVES octaves below the largest
        magnitude (smaller ones share the lowest bucket), so a bucket rarely holds more than
        WINDOW entries and the edges can be placed every WINDOW entries.
        """
        n = source.numel()
        cpu = torch.device("cpu")
        chunk = work.fused_chunk(n, [base, source])

        def chunks():
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                yield (as_f32(work, "b", base[start:stop], cpu).detach().numpy(),
                       as_f32(work, "s0", source[start:stop], cpu).detach().numpy())

        top = max(float(kernels.magnitude_max(b, s)) for b, s in chunks())
        high = int(np.float32(top).view(np.uint32)) >> _SHIFT
        low = max(0, high - OCTAVES * (1 << (23 - _SHIFT)))
        counts = np.zeros(high - low + 1, dtype=np.int64)
        zeros = sum(int(kernels.magnitude_histogram(b, s, counts, np.uint32(_SHIFT), np.uint32(low)))
                    for b, s in chunks())
        # at_least[b] = entries whose bucket is >= b = entries >= the bucket's lower edge
        # (bucket 0's edge is 0: it holds everything below bucket 1).
        at_least = np.cumsum(counts[::-1])[::-1]
        step = max(1, min(n // INDEX_EDGES, WINDOW))
        levels = np.arange(step, n + step, step)
        buckets = np.searchsorted(-at_least, -levels, side="right") - 1  # largest b: at_least[b] >= level
        buckets = np.unique(np.concatenate([buckets[buckets >= 0], [0]]))[::-1]  # descending
        edges = ((buckets + low).astype(np.uint32) << _SHIFT).view(np.float32)
        edges[buckets == 0] = 0.0
        return cls(edges=edges.copy(), at_least=at_least[buckets].astype(np.int64), zeros=zeros)

    def bracket(self, k: int, n: int) -> tuple[float, float, int, int] | float:
        """(lo, hi, entries >= hi, entries in [lo, hi)) around the k-th largest |tau|, or its
        exact value when that is known (0.0: the k-th largest is a zero)."""
        j = int(np.searchsorted(self.at_least, k, side="left"))
        hi = float("inf") if j == 0 else float(self.edges[j - 1])
        above = 0 if j == 0 else int(self.at_least[j - 1])
        lo = float(self.edges[j])
        inside = int(self.at_least[j]) - above
        if lo == 0.0:
            if k > n - self.zeros:
                return 0.0  # the k-th largest is a zero: every entry is kept
            lo, inside = _MIN_SUBNORMAL, inside - self.zeros
        return lo, hi, above, inside


def select_thresholds(base: Tensor, sources: list[Tensor], ks: list[int],
                      work: Workspace) -> list[tuple[float, int, int] | None]:
    """``ties_select.select_thresholds`` on flat tensors: the samples taken with strided views, the
    counting pass over float32 chunks (bf16/fp16 tensors converted chunk by chunk)."""
    n = base.numel()
    runs, run, step = sample_geometry(n)
    sampled_base = base.as_strided((runs, run), (step, 1)).float()
    samples = [(s.as_strided((runs, run), (step, 1)).float() - sampled_base).abs().reshape(-1).numpy() for s in sources]
    cpu = torch.device("cpu")
    chunk = work.fused_chunk(n, [base, *sources])

    def chunks():
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            yield (as_f32(work, "b", base[start:stop], cpu).detach().numpy(),
                   tuple(as_f32(work, f"s{i}", s[start:stop], cpu).detach().numpy() for i, s in enumerate(sources)))

    return ties_select.select_thresholds(n, ks, samples, chunks)


class Thresholds(Trims):
    """Per-source TIES trims for the fused kernel, for one slot and one candidate.

    The kernel keeps |tau_i| >= threshold[i] and collects the entries inside window[i] = [lo, hi)
    (positions and values, in index order). Small tensors: the exact trim (kthvalue). Larger
    ones: the first merge's single-use thresholds, or, from the magnitude index, a provisional
    threshold at the bracket's upper edge with the bracket as the window. Where entries tie at
    the k-th largest magnitude v, the threshold is just above v and ``fix_up`` adds the kept ties
    (``index`` order: the window [v, next float) collects them in the kernel's pass; ``mergekit``
    order: ``topk.kept_ties``). ``fix_up`` then recomputes every entry the final trims keep below
    the thresholds the kernel used.
    """

    def __init__(self, m: int, tie_order: str = "index"):
        super().__init__(np.zeros(m, np.float32))  # keeps everything, no windows, until set
        self.tie_order = tie_order
        self.pending: dict[int, tuple[int, int, int]] = {}  # bracket sources: i -> (k, above, count)
        self.tied: dict[int, tuple[int, int, int, float]] = {}  # i -> (k, greater, equal, v): collect ties
        self.ties: dict[int, np.ndarray] = {}  # i -> sorted positions of the tied entries kept
        self.cache: SlotCache | None = None

    def _set(self, i: int, trim: Trim) -> None:
        self.threshold[i] = trim.threshold
        if trim.ties is not None:
            self.ties[i] = trim.ties

    def _exact(self, i: int, base: Tensor, source: Tensor, k: int, value: float, greater: int, equal: int,
               tied: np.ndarray | None = None) -> None:
        """Source i's final trim from the k-th largest |tau| and the counts around it."""
        n = base.numel()
        if self.tie_order == "index" and tied is None and value > 0.0 and greater + equal > k:
            self.tied[i] = (k, greater, equal, value)  # the kernel's pass collects the ties
            self.threshold[i] = next_up(value)
            self.window[i] = (value, next_up(value))
            return
        self._set(i, exact_trim(_magnitudes(base, source), k, value, greater, equal,
                                self.cache.orders(i, n), self.tie_order, tied))

    @classmethod
    def for_ties(cls, cache: SlotCache, base: Tensor, sources: list[Tensor], density: list[float],
                 work: Workspace, tie_order: str = "index") -> Thresholds:
        m, n = len(sources), base.numel()
        self = cls(m, tie_order)
        self.cache = cache
        todo: dict[int, int] = {}  # source -> k, for those the sources' magnitudes decide
        for i, d in enumerate(density):
            if d >= 1.0:
                continue
            k = top_k(d, n)
            if n <= SMALL_TENSOR:
                magnitudes = (sources[i].float() - base.float()).abs()
                value = float(magnitude_threshold(magnitudes, k))
                self._set(i, exact_trim(magnitudes, k, value, orders=cache.orders(i, n), tie_order=tie_order))
            else:
                todo[i] = k
        if todo and cache.ties_merges == 0:  # the first merge: no index yet (it may stay the only one)
            exact = select_thresholds(base, [sources[i] for i in todo], list(todo.values()), work)
            for i, found in zip(list(todo), exact):
                if found is not None:
                    self._exact(i, base, sources[i], todo.pop(i), *found)
        for i, k in todo.items():
            index = cache.indexes.get(i)
            if index is None:
                index = cache.indexes[i] = MagnitudeIndex.build(base, sources[i], work)
            bracket = index.bracket(k, n)
            if isinstance(bracket, float):
                self.threshold[i] = bracket
                continue
            lo, hi, above, inside = bracket
            self.threshold[i] = hi  # provisional: keeps what is surely kept
            self.window[i] = (lo, hi)
            self.pending[i] = (k, above, inside)
        cache.ties_merges += 1
        counts = [count for _, _, count in self.pending.values()] + [equal for _, _, equal, _ in self.tied.values()]
        capacity = max(counts, default=0) + kernels.BLOCK  # slack
        self.found_idx = np.empty((m, capacity), np.int64)
        self.found_val = np.empty((m, capacity), np.float32)
        return self

    def fix_up(self, mix, base: Tensor, sources: list[Tensor], tflat: Tensor) -> None:
        """Set the exact trims of the window sources, and recompute every entry that the final
        trims keep but the kernel's thresholds dropped (entries inside a window, kept ties)."""
        positions = []
        for i, (k, greater, equal, value) in self.tied.items():
            if self.found_n[i] != equal:  # counted in this very merge: a bug, not input
                raise RuntimeError(f"TIES tie count changed ({self.found_n[i]} != {equal})")
            self._set(i, Trim(next_up(value), self.found_idx[i, :k - greater].copy()))
        for i, (k, above, count) in self.pending.items():
            if self.found_n[i] != count:  # the index counted these very entries: a bug, not input
                raise RuntimeError(f"TIES magnitude index out of date ({self.found_n[i]} != {count})")
            values, where = self.found_val[i, :count], self.found_idx[i, :count]
            value = np.partition(values, above + count - k)[above + count - k]  # the k-th largest
            greater = above + int(np.count_nonzero(values > value))
            tied = where[values == value]
            self._exact(i, base, sources[i], k, float(value), greater, tied.size,
                        tied if self.tie_order == "index" else None)
            positions.append(where[values >= self.threshold[i]])
        positions.extend(self.ties.values())
        where = sorted_union(positions)
        if where.size:
            self._recompute(mix, base, sources, tflat, where)

    def _recompute(self, mix, base: Tensor, sources: list[Tensor], tflat: Tensor, where: np.ndarray) -> None:
        """The merge at positions ``where`` with the final trims, written into ``tflat``."""
        idx = torch.from_numpy(where)
        out = recompute_at(mix, base.index_select(0, idx).float().numpy(),
                           [s.index_select(0, idx).float().numpy() for s in sources], where, self.threshold, self.ties)
        tflat.index_copy_(0, idx, torch.from_numpy(out).to(tflat.dtype))


def _magnitudes(base: Tensor, source: Tensor):
    """|source - base| as a flat float32 tensor, computed only when called (for tie orders)."""
    return lambda: (source.float() - base.float()).abs()
