"""The streamed one-shot merge of one tensor on numpy arrays and numba kernels, without torch.

``evomm merge`` of a task-arithmetic-family recipe (task_arithmetic, ties, dare_ties,
dare_linear) on the CPU with numba reads each tensor from the memory-mapped checkpoints
(``evomm.merging.safetensors_io``), merges it with the fused kernel the resident engine uses
(``evomm.merging.mix``, ``evomm.merging.kernels``) and hands back its bytes: a cold command
then never imports torch. The tensors equal the engine's bit for bit (the tests compare them):
the same float32 kernel, exact TIES trims (``topk.array_trim``: the same k entries, ties in
the same order) with the kept ties recomputed as the engine's fix-up does, and the same
rounding to the storage dtype. A tensor merged once needs no magnitude index: the k-th largest
|tau| comes from a sample and one counting pass (``ties_select``), as in the engine's first
merge of a slot, and only where entries tie at it is |tau| materialised to choose among them.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import as_strided

from evomm.merging import kernels
from evomm.merging.mix import Mix, Trims, recompute_at, sorted_union
from evomm.merging.methods import get_method
from evomm.merging.random_stream import tensor_seed
from evomm.merging.safetensors_io import FLOATING, ArrayReader, from_float32, to_float32
from evomm.merging.ties_select import sample_geometry, select_thresholds
from evomm.merging.topk import Trim, array_trim, next_up, top_k
from evomm.recipe.recipe import Recipe

# Smaller tensors take their trims from |tau| directly (as the engine's SMALL_TENSOR).
SMALL_TENSOR = 1 << 16


class ArrayMerge:
    """name, storage dtype -> the output tensor's bytes, merged on numpy arrays (no torch).

    ``params``: every merged tensor's parameters, defaults filled in (``MethodSpec.resolved``);
    the other tensors (persistent buffers) are the first source's.
    """

    def __init__(self, recipe: Recipe, params: dict[str, dict], readers: list[ArrayReader], dtype: str,
                 n_sources: int):
        self.recipe, self.params, self.readers, self.dtype = recipe, params, readers, dtype
        self.random, self.n_sources = get_method(recipe.method).random, n_sources
        self.workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self.session = nullcontext

    def __call__(self, name: str, out_dtype: str) -> np.ndarray:
        first = self.readers[0]
        if name not in self.params:  # a persistent buffer: source 0's
            stored = first.dtype(name)
            return from_float32(to_float32(first.raw(name), stored), out_dtype) if stored in FLOATING else first.raw(name)
        seed = tensor_seed(self.recipe.seed, name) if self.random else None
        arrays = [as_compute(r.raw(name), r.dtype(name), self.dtype) for r in self.readers]
        merged = merge_arrays(self.recipe.method, self.params[name], seed, arrays[self.n_sources], arrays[:self.n_sources])
        return from_float32(merged, out_dtype)


def as_compute(values: np.ndarray, stored: str, dtype: str) -> np.ndarray:
    """A source tensor as the adapter loads it (cast to the run's ``dtype``), in float32."""
    f32 = to_float32(values, stored)
    if dtype != "F32" and stored != dtype:  # from_pretrained(dtype=...) rounds it first
        f32 = to_float32(from_float32(f32, dtype), dtype)
    return f32


def merge_arrays(method: str, p: dict, seed: int | None, base: np.ndarray, sources: list[np.ndarray]) -> np.ndarray:
    """The merged tensor (flat float32) of flat float32 ``base`` and ``sources``; ``p`` holds
    every parameter, defaults filled in (``lambda`` as ``lambda_``)."""
    m, n = len(sources), base.size
    density = p.get("density", [1.0] * m)
    mix = Mix.of(method, p, density, seed)
    trims = Trims(np.zeros(m, np.float32))
    ties: dict[int, np.ndarray] = {}
    collect: dict[int, Tied] = {}
    if method == "ties":
        ks = {i: top_k(d, n) for i, d in enumerate(density) if d < 1.0}
        for i, trim in one_shot_trims(base, sources, ks, p["tie_order"]).items():
            if isinstance(trim, Tied):  # the kernel's pass lists the tied entries, in index order
                collect[i] = trim
                trims.threshold[i] = next_up(trim.value)
                trims.window[i] = (trim.value, next_up(trim.value))
                continue
            trims.threshold[i] = trim.threshold
            if trim.ties is not None and trim.ties.size:
                ties[i] = trim.ties
    if collect:
        room = max(t.equal for t in collect.values()) + kernels.BLOCK  # the kernel may write a BLOCK beyond
        trims.found_idx, trims.found_val = np.empty((m, room), np.int64), np.empty((m, room), np.float32)
    out = np.empty(n, np.float32)
    mix.run(base, tuple(sources), out, 0, trims)
    for i, tied in collect.items():
        if trims.found_n[i] != tied.equal:  # counted by the same arithmetic: a bug, not input
            raise RuntimeError(f"TIES tie count changed ({trims.found_n[i]} != {tied.equal})")
        ties[i] = trims.found_idx[i, :tied.k - tied.greater].copy()
    where = sorted_union(list(ties.values()))
    if where.size:  # the kernel dropped the kept ties (below its threshold): merge them again
        out[where] = recompute_at(mix, base[where], [s[where] for s in sources], where, trims.threshold, ties)
    return out


@dataclass(frozen=True)
class Tied:
    """The k-th largest |tau| is ``value``, with ``greater`` entries above it and ``equal`` at it
    (greater < k < greater + equal): the first k - greater of those at it are kept."""

    k: int
    greater: int
    equal: int
    value: float


def one_shot_trims(base: np.ndarray, sources: list[np.ndarray], ks: dict[int, int],
                   tie_order: str) -> dict[int, Trim | Tied]:
    """Source i's exact trim keeping ks[i] entries, for the sources in ``ks``. A source whose
    ties are kept in index order is answered by a :class:`Tied` (the merge kernel lists them in
    its pass) instead of a pass of its own."""
    n = base.size
    found: dict[int, tuple[float, int, int] | None] = dict.fromkeys(ks)
    if n > SMALL_TENSOR and ks:
        runs, run, step = sample_geometry(n)
        strides = (step * base.itemsize, base.itemsize)  # contiguous float32: a strided view, no copy
        sample = as_strided(base, (runs, run), strides)
        samples = [np.abs(as_strided(sources[i], (runs, run), strides) - sample).reshape(-1) for i in ks]
        chosen = tuple(sources[i] for i in ks)
        found = dict(zip(ks, select_thresholds(n, list(ks.values()), samples, lambda: [(base, chosen)])))
    trims: dict[int, Trim | Tied] = {}
    for i, k in ks.items():
        if found[i] is not None:
            value, greater, equal = found[i]
            if value <= 0.0:
                trims[i] = Trim(0.0)  # tied zeros are zeros whether kept or not
                continue
            if greater + equal <= k:
                trims[i] = Trim(value)  # no tie to choose among
                continue
            if tie_order == "index":
                trims[i] = Tied(k, greater, equal, value)
                continue
        trims[i] = array_trim(np.abs(sources[i] - base), k, tie_order)  # |tau| as the kernel computes it
    return trims
