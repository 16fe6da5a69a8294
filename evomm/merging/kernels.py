"""Fused CPU kernels for the task-arithmetic family: task_arithmetic, ties, dare_ties, dare_linear.

One call reads the base and every source once and writes the merged tensor once: the task
vectors, the TIES trim or DARE mask, the weights, the sign election, the divisor and lambda are
all applied to a block of ``BLOCK`` elements held in the L1 cache before the next block is
read. A merge through torch operations instead makes ~25 passes over its buffers; fused, it runs
near the memory bandwidth (``bench/materialize.py``).

The arithmetic is the reference's (``evomm.merging.methods``), operation for operation in
float32 (no fast-math: no reassociation, no fused multiply-adds), so the results are the same
bits; ``tests/test_engine.py`` compares them. The DARE masks come from ``uniform24``, the
counter-based stream the reference uses too: a mask entry depends only on the keys and its
position, so any block of any tensor can be drawn on its own.

The kernels are compiled by numba on first use (a few seconds) and cached on disk next to this
file (or in ``NUMBA_CACHE_DIR``); they release the GIL, so CPU threads merge tensors side by side.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Elements per block: the float32 block buffers of a few sources stay in the L1/L2 cache.
BLOCK = 1024

_C1 = np.uint32(0x7FEB352D)  # lowbias32's multipliers (a well-mixing 32-bit integer hash)
_C2 = np.uint32(0x846CA68B)
_GOLDEN = np.uint32(0x9E3779B9)
_S8, _S15, _S16, _S32 = np.uint32(8), np.uint32(15), np.uint32(16), np.uint64(32)


@njit(inline="always")
def _lowbias32(x):
    """A 32-bit integer hash (uint32 in, uint32 out; products wrap modulo 2^32)."""
    x ^= x >> _S16
    x = np.uint32(x * _C1)
    x ^= x >> _S15
    x = np.uint32(x * _C2)
    x ^= x >> _S16
    return x


@njit(inline="always")
def uniform24(key, index):
    """24 random bits for element ``index`` (uint64) of the stream with the 32-bit ``key``.

    One hash round of the index's low 32 bits, the key and the high 32 bits times a constant
    (0 for any tensor of fewer than 2^32 entries). ``evomm.merging.methods.uniform24`` computes
    the same numbers with torch operations.
    """
    high = np.uint32(np.uint32(index >> _S32) * _GOLDEN)
    return _lowbias32(np.uint32(index) ^ key ^ high) >> _S8


@njit(nogil=True, cache=True)
def magnitude_histogram(base, source, counts):
    """counts[b] += entries of |source - base| whose float32 bits >> 16 equal b; returns zeros.

    The top 16 bits of a non-negative float32 order it (2^15 buckets, 1/128 octave each): the
    TIES magnitude index (``engine._MagnitudeIndex``) is built from these counts.
    """
    n = base.size
    block = np.empty(BLOCK, np.float32)
    bits = block.view(np.uint32)
    zeros = 0
    for s0 in range(0, n, BLOCK):
        size = min(BLOCK, n - s0)
        b, s = base[s0:s0 + size], source[s0:s0 + size]  # views: indexing them vectorises
        for j in range(size):
            block[j] = abs(s[j] - b[j])
        for j in range(size):
            counts[bits[j] >> 16] += 1
            zeros += bits[j] == 0
    return zeros


@njit(nogil=True, cache=True)
def merge_task_vectors(base, sources, out, offset, weight, threshold, random, keys, limit, rescale,
                       elect, divisor, lam, window, found_idx, found_val, found_n):
    """out = base + lam * combine_i(w_i * sparsify_i(source_i - base)), block by block.

    base, sources[i], out: float32 [n], one chunk of a tensor; ``offset`` is the chunk's first
    element in the tensor (the DARE stream position, and the positions written to found_idx).
    Per source i (arrays of length m), tau_i = source_i - base is sparsified by
      TIES (``random`` false): keep |tau| >= threshold[i] (0 keeps every entry);
      DARE (``random`` true): keep where uniform24(keys[i], position) < limit[i] (2^24: all),
    then multiplied by rescale[i] (DARE's 1/density; 1 is exact) and by weight[i].
    ``elect``: TIES sign election: majority = sign of the sum (>= 0 counts as +), keep the
    agreeing deltas, divide by the sum of the kept weights (0 -> 1) when ``divisor`` > 0, which
    is the normalize switch here. Otherwise the plain sum divided by ``divisor`` (1: none).
    window[i] = [lo, hi): positions and values of the raw |tau_i| inside are appended to
    found_idx[i] / found_val[i] at found_n[i] (the TIES fix-up; lo >= hi: none). Products with
    1 are exact, so the reference's skipped steps (lambda 1, no rescale) need no branches here.
    """
    n = out.size
    m = len(sources)
    deltas = np.empty((m, BLOCK), np.float32)
    total = np.empty(BLOCK, np.float32)
    kept = np.empty(BLOCK, np.float32)
    kept_weight = np.empty(BLOCK, np.float32)
    one, zero = np.float32(1.0), np.float32(0.0)
    for s0 in range(0, n, BLOCK):
        size = min(BLOCK, n - s0)
        b, o = base[s0:s0 + size], out[s0:s0 + size]  # views: indexing them vectorises
        for i in range(m):
            src = sources[i][s0:s0 + size]
            d = deltas[i]
            lo, hi = window[i, 0], window[i, 1]
            if lo < hi:
                c = found_n[i]
                for j in range(size):
                    a = abs(src[j] - b[j])
                    if a >= lo and a < hi:
                        if c < found_idx.shape[1]:
                            found_idx[i, c] = offset + s0 + j
                            found_val[i, c] = a
                        c += 1
                found_n[i] = c
            t, w, r = threshold[i], weight[i], rescale[i]
            first_source = i == 0  # the reference sums from zero: 0 + d_0 + d_1 + ...
            if random:
                key, lim = keys[i], limit[i]
                first = np.uint64(offset + s0)
                for j in range(size):
                    x = src[j] - b[j]
                    x = x if uniform24(key, first + np.uint64(j)) < lim else zero
                    x = (x * r) * w
                    d[j] = x
                    total[j] = (zero if first_source else total[j]) + x
            else:
                for j in range(size):
                    x = src[j] - b[j]
                    x = x if abs(x) >= t else zero
                    x = x * w
                    d[j] = x
                    total[j] = (zero if first_source else total[j]) + x
        if elect:
            # sign(d) == majority  <=>  d * majority > 0 (majority = +-1; zeros never agree).
            # The last source's sums go straight into the output.
            for i in range(m - 1):
                d, w, first_source = deltas[i], weight[i], i == 0
                for j in range(size):
                    agree = d[j] * (one if total[j] >= zero else -one) > zero
                    kept[j] = (zero if first_source else kept[j]) + (d[j] if agree else zero)
                    kept_weight[j] = (zero if first_source else kept_weight[j]) + (w if agree else zero)
            d, w, only = deltas[m - 1], weight[m - 1], m == 1
            if divisor > zero:  # normalize: divide by the kept weights (0 -> 1)
                for j in range(size):
                    agree = d[j] * (one if total[j] >= zero else -one) > zero
                    k = (zero if only else kept[j]) + (d[j] if agree else zero)
                    kw = (zero if only else kept_weight[j]) + (w if agree else zero)
                    o[j] = b[j] + (k / (one if kw == zero else kw)) * lam
            else:
                for j in range(size):
                    agree = d[j] * (one if total[j] >= zero else -one) > zero
                    k = (zero if only else kept[j]) + (d[j] if agree else zero)
                    o[j] = b[j] + k * lam
        elif divisor != one:
            for j in range(size):
                o[j] = b[j] + (total[j] / divisor) * lam
        else:
            for j in range(size):
                o[j] = b[j] + total[j] * lam
