"""The streamed one-shot merge of one tensor on numpy arrays and numba kernels, without torch.

``evomm merge`` of a task-arithmetic-family recipe (task_arithmetic, ties, dare_ties,
dare_linear) on the CPU with numba reads each tensor from the memory-mapped checkpoints
(``evomm.merging.safetensors_io``), merges it with the fused kernel the resident engine uses
(``evomm.merging.mix``, ``evomm.merging.kernels``) and hands back its bytes: a cold command
then never imports torch. The tensors equal the engine's bit for bit (the tests compare them):
the same float32 kernel, exact TIES trims (``topk.array_trim``: the same k entries, ties in
the same order) with the kept ties recomputed as the engine's fix-up does, and the same
rounding to the storage dtype. A tensor merged once needs no magnitude index, so the trims
are taken straight from each |tau|.
"""

from __future__ import annotations

import numpy as np

from evomm.merging.mix import Mix, Trims, recompute_at, sorted_union
from evomm.merging.topk import array_trim, top_k
from evomm.merging.safetensors_io import from_float32, to_float32

# The methods computed here (with the engine's defaults filled in, TIES without ``rescale``).
ARRAY_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")


def handles(method: str, params: dict) -> bool:
    """Whether a tensor with these (defaulted) parameters is merged here."""
    return method in ARRAY_METHODS and not (method == "ties" and params.get("rescale"))


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
    threshold = np.zeros(m, np.float32)
    ties: dict[int, np.ndarray] = {}
    if method == "ties":
        scratch = np.empty(n, np.float32)
        for i, d in enumerate(density):
            if d >= 1.0:
                continue
            np.abs(np.subtract(sources[i], base, out=scratch), out=scratch)  # |tau| as the kernel computes it
            trim = array_trim(scratch, top_k(d, n), p["tie_order"])
            threshold[i] = trim.threshold
            if trim.ties is not None and trim.ties.size:
                ties[i] = trim.ties
    out = np.empty(n, np.float32)
    mix.run(base, tuple(sources), out, 0, Trims(threshold))
    where = sorted_union(list(ties.values()))
    if where.size:  # the kernel dropped the kept ties (below its threshold): merge them again
        out[where] = recompute_at(mix, base[where], [s[where] for s in sources], where, threshold, ties)
    return out
