"""Fused CPU kernels for the task-arithmetic family: task_arithmetic, ties, dare_ties, dare_linear.

One call reads the base and every source once and writes the merged tensor once: the task
vectors, the TIES trim or DARE mask, the weights, the sign election, the divisor and lambda are
all computed per element in registers (a vectorised loop). A merge through torch operations
instead makes ~25 passes over its buffers; fused, it runs near a streaming pass (figures:
``bench/materialize.py``, README). Elements go in blocks of ``BLOCK`` only so that the rare blocks
holding TIES window entries can be scanned again while they are in the cache.

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
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

# Elements per block: a block is re-read from the cache when it holds TIES window entries.
# A multiple of 16 (the packed window copy takes 16 at a time).
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
    (0 for any tensor of fewer than 2^32 entries). ``evomm.merging.random_stream.uniform24`` computes
    the same numbers with torch operations.
    """
    high = np.uint32(np.uint32(index >> _S32) * _GOLDEN)
    return _lowbias32(np.uint32(index) ^ key ^ high) >> _S8


@njit(nogil=True, cache=True)
def magnitude_max(base, source):
    """The largest |source - base| (float32)."""
    top = np.float32(0.0)
    for s0 in range(0, base.size, BLOCK):
        size = min(BLOCK, base.size - s0)
        b, s = base[s0:s0 + size], source[s0:s0 + size]  # views: indexing them vectorises
        for j in range(size):
            top = max(top, abs(s[j] - b[j]))
    return top


@njit(nogil=True, cache=True)
def magnitude_histogram(base, source, counts, shift, low):
    """counts[max(bits >> shift, low) - low] += 1 for the float32 bits of every |source - base|.

    A non-negative float32 is ordered by its bits, so bits >> shift is a bucket of magnitudes
    (shift 8: 1/32768 octave); everything below bucket ``low`` lands in bucket 0. Returns the
    number of exact zeros. The TIES magnitude index (``engine._MagnitudeIndex``) is built from
    these counts.
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
            counts[max(bits[j] >> shift, low) - low] += 1
            zeros += bits[j] == 0
    return zeros


RADIX = 4096  # buckets per round of the radix selections


@njit(inline="always")
def _bounds(bits):
    low, high = bits[0], bits[0]
    for j in range(bits.size):
        low = min(low, bits[j])
        high = max(high, bits[j])
    return low, high


@njit(inline="always")
def _histogram(bits, low, high, counts):
    """counts[b] = values in bucket b of RADIX over [low, high]; returns the buckets' shift."""
    shift = np.uint32(0)
    while (high - low) >> shift >= RADIX:
        shift += np.uint32(1)
    counts[:] = 0
    for j in range(bits.size):
        counts[(bits[j] - low) >> shift] += 1
    return shift


@njit(inline="always")
def _bucket_of(counts, bucket, rank):
    """From ``bucket`` down: the bucket holding the rank-th largest, and its rank in there."""
    while counts[bucket] < rank:
        rank -= counts[bucket]
        bucket -= 1
    return bucket, rank


@njit(nogil=True, cache=True)
def kth_largest(values, rank):
    """The rank-th largest (1: the largest) of non-negative float32 values.

    A non-negative float32 is ordered by its bits: a radix selection on them keeps, per round,
    the one of RADIX buckets (of the bits between the smallest and the largest) that holds the
    rank-th largest, so a round narrows the range 4096-fold and three cover 32 bits. About
    one histogram pass over the values, cheaper than numpy's partition.
    """
    bits = values.view(np.uint32)
    counts = np.empty(RADIX, np.int64)
    while True:
        low, high = _bounds(bits)
        if low == high:
            return np.array([low]).view(np.float32)[0]
        shift = _histogram(bits, low, high, counts)
        bucket, rank = _bucket_of(counts, RADIX - 1, rank)
        kept = np.empty(counts[bucket], np.uint32)  # the bucket's values: the next round
        c = 0
        for j in range(bits.size):
            if (bits[j] - low) >> shift == bucket:
                kept[c] = bits[j]
                c += 1
        bits = kept


@njit(nogil=True, cache=True)
def kth_largest_pair(values, first, second):
    """The first-th and the second-th largest (1 <= first <= second) of non-negative float32
    values, as two ``kth_largest`` calls would give them; the first round (bounds, histogram
    and one copy pass for both buckets) is shared, which is about half the work."""
    bits = values.view(np.uint32)
    low, high = _bounds(bits)
    if low == high:
        value = np.array([low]).view(np.float32)[0]
        return value, value
    counts = np.empty(RADIX, np.int64)
    shift = _histogram(bits, low, high, counts)
    bucket1, rank1 = _bucket_of(counts, RADIX - 1, first)
    bucket2, rank2 = _bucket_of(counts, bucket1, second - first + rank1)
    kept1 = np.empty(counts[bucket1], np.uint32)
    kept2 = np.empty(counts[bucket2] if bucket2 != bucket1 else 0, np.uint32)
    c1, c2 = 0, 0
    for j in range(bits.size):
        bucket = (bits[j] - low) >> shift
        if bucket == bucket1:
            kept1[c1] = bits[j]
            c1 += 1
        elif bucket == bucket2:
            kept2[c2] = bits[j]
            c2 += 1
    if bucket2 == bucket1:
        kept2 = kept1
    return kth_largest(kept1.view(np.float32), rank1), kth_largest(kept2.view(np.float32), rank2)


@njit(inline="always")
def _block_magnitudes(b, s, values, top, bottom, counts, i):
    """values[j] = |s[j] - b[j]| for one block (views: indexing them vectorises), and
    counts[i] += the numbers of entries > top, == top and == bottom."""
    above, at_hi, at_lo = 0, 0, 0
    for j in range(b.size):
        x = abs(s[j] - b[j])
        values[j] = x
        above += 1 if x > top else 0
        at_hi += 1 if x == top else 0
        at_lo += 1 if x == bottom else 0
    counts[i, 0] += above
    counts[i, 1] += at_hi
    counts[i, 2] += at_lo


@njit(nogil=True, cache=True)
def _windows_listed(base, sources, lo, hi, counts, found, found_n):
    """magnitude_windows on any CPU: a branch-free copy of the listed groups of 4.

    The flags are computed vectorised, the groups of 4 holding a flagged entry are listed
    without a branch, and only those are copied (a branch per group mispredicts once for every
    group with an entry).
    """
    n = base.size
    values = np.empty(BLOCK, np.float32)
    flags = np.zeros(BLOCK, np.uint8)
    groups = flags.view(np.uint32)  # 4 flags per word
    listed = np.empty(BLOCK // 4, np.int64)
    room = found.shape[1] - BLOCK
    for s0 in range(0, n, BLOCK):
        size = min(BLOCK, n - s0)
        b = base[s0:s0 + size]
        for i in range(len(sources)):
            count = found_n[i]
            if count > room:
                continue
            top, bottom = hi[i], lo[i]
            _block_magnitudes(b, sources[i][s0:s0 + size], values, top, bottom, counts, i)
            for j in range(size):
                flags[j] = 1 if (values[j] > bottom) & (values[j] < top) else 0
            for j in range(size, BLOCK):  # a last, shorter block: no stale flags
                flags[j] = 0
            c = 0
            for g in range(BLOCK // 4):
                listed[c] = g
                c += 1 if groups[g] != 0 else 0
            out = found[i]
            for t in range(c):
                g = listed[t]
                for j in range(4 * g, 4 * g + 4):  # branch-free: write, advance only when flagged
                    out[count] = values[j]
                    count += flags[j]
            found_n[i] = count
    return found_n


@intrinsic
def _pack_inside(typingctx, values, start, bottom, top, out, at):
    """Copy the values[start:start + 16] strictly between bottom and top to out[at:], in order;
    returns how many. AVX-512's compress packs them in a register and one store writes all 16
    lanes: up to 15 entries after the packed ones are overwritten with junk. (LLVM's
    compress-store, whose instruction stores to memory itself, was several times slower on an
    AMD CPU.)"""
    if not (isinstance(values, types.Array) and isinstance(out, types.Array) and values.layout == "C"
            and out.layout == "C" and values.dtype == types.float32 and out.dtype == types.float32):
        return None

    def codegen(context, builder, signature, args):
        values_arr, start_i, bottom_f, top_f, out_arr, at_i = args
        vector = ir.VectorType(ir.FloatType(), 16)
        mask_type = ir.VectorType(ir.IntType(1), 16)

        def lanes(x):  # x in all 16 lanes
            one = builder.insert_element(ir.Constant(vector, ir.Undefined), x, ir.Constant(ir.IntType(32), 0))
            return builder.shuffle_vector(one, ir.Constant(vector, ir.Undefined),
                                          ir.Constant(ir.VectorType(ir.IntType(32), 16), [0] * 16))

        src = context.make_array(signature.args[0])(context, builder, values_arr).data
        dst = context.make_array(signature.args[4])(context, builder, out_arr).data
        v = builder.load(builder.bitcast(builder.gep(src, [start_i]), vector.as_pointer()), align=4)
        inside = builder.and_(builder.fcmp_ordered(">", v, lanes(bottom_f)), builder.fcmp_ordered("<", v, lanes(top_f)))
        compress = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector, vector, mask_type]), "llvm.x86.avx512.mask.compress.v16f32")
        packed = builder.call(compress, [v, ir.Constant(vector, None), inside])
        builder.store(packed, builder.bitcast(builder.gep(dst, [at_i]), vector.as_pointer()), align=4)
        popcount = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.IntType(16), [ir.IntType(16)]), "llvm.ctpop.i16")
        return builder.zext(builder.call(popcount, [builder.bitcast(inside, ir.IntType(16))]), ir.IntType(64))

    return types.int64(values, start, bottom, top, out, at), codegen


@njit(nogil=True, cache=True)
def _windows_packed(base, sources, lo, hi, counts, found, found_n):
    """magnitude_windows with AVX-512: 16 magnitudes at a time go through ``_pack_inside``,
    faster than the listed copy (figures in the README)."""
    n = base.size
    values = np.zeros(BLOCK, np.float32)
    room = found.shape[1] - BLOCK
    for s0 in range(0, n, BLOCK):
        size = min(BLOCK, n - s0)
        b = base[s0:s0 + size]
        for i in range(len(sources)):
            count = found_n[i]
            if count > room:
                continue
            top, bottom = hi[i], lo[i]
            _block_magnitudes(b, sources[i][s0:s0 + size], values, top, bottom, counts, i)
            for j in range(size, BLOCK):  # a last, shorter block: zeros are never inside (bottom >= 0)
                values[j] = 0.0
            out = found[i]
            for j in range(0, size, 16):
                count += _pack_inside(values, j, bottom, top, out, count)
            found_n[i] = count
    return found_n


def _avx512_target() -> bool:
    """Whether numba compiles for a CPU with AVX-512 (the host's, unless a target was chosen)."""
    from numba.core import config

    if config.CPU_NAME or config.CPU_FEATURES:  # an explicit (e.g. portable) target: portable code
        return False
    import llvmlite.binding as llvm

    try:
        features = llvm.get_host_cpu_features()
    except RuntimeError:  # LLVM cannot tell on some hosts
        return False
    return bool(features.get("avx512f", False))


PACKED_WINDOWS = _avx512_target()


def magnitude_windows(base, sources, lo, hi, counts, found, found_n):
    """Per source i: count |tau_i| above, at hi[i] and at lo[i]; copy the values in between.

    tau_i = sources[i] - base (float32 arrays, a tuple of sources). counts[i] += (entries >
    hi[i], entries == hi[i], entries == lo[i]); the entries strictly between lo[i] and hi[i] go to
    found[i, found_n[i]:] (C-contiguous float32) and found_n[i] grows by their number. The TIES
    thresholds of a tensor merged only once (``engine._select_thresholds``): a sample brackets
    each k-th largest magnitude, and this one pass gives its exact rank. The ends are counted,
    not copied, so that many equal magnitudes (quantised weights, zeros) cost nothing. A block
    of the base is read once for all sources (it stays in the L1 cache).

    found needs BLOCK entries of room beyond each window; a window that fills it is abandoned,
    with found_n[i] set above found.shape[1] - BLOCK: wider than the caller expected. The copy
    is the costly part: with AVX-512 it packs 16 entries per instruction, elsewhere it copies
    listed groups of 4 (``PACKED_WINDOWS`` says which).
    """
    kernel = _windows_packed if PACKED_WINDOWS else _windows_listed
    return kernel(base, sources, lo, hi, counts, found, found_n)


@njit(inline="always")
def _delta(x, i, position, random, threshold, keys, limit, rescale, weight):
    """w_i * sparsify_i(x): the TIES trim or the DARE mask and rescale of one task-vector entry."""
    if random:
        x = (x if uniform24(keys[i], position) < limit[i] else np.float32(0.0)) * rescale[i]
    else:
        x = x if abs(x) >= threshold[i] else np.float32(0.0)
    return x * weight[i]


@njit(inline="always")
def _merge_one(base, sources, out, j, position, random, elect, collect, normalize, threshold, keys,
               limit, rescale, weight, divisor, lam, lo, hi):
    """out[j]; with ``collect``, returns how many of its task-vector entries lie inside their
    source's window (0 otherwise).

    With ``elect`` the deltas are computed twice (once for the majority sign, once to keep the
    agreeing ones): recomputing from the cache is cheaper than storing them.
    """
    zero, one = np.float32(0.0), np.float32(1.0)
    bj = base[j]
    hits = 0
    total = zero  # the reference sums from zero: 0 + d_0 + d_1 + ...
    for i in range(len(sources)):
        x = sources[i][j] - bj
        if collect:
            hits += 1 if (abs(x) >= lo[i]) & (abs(x) < hi[i]) else 0
        total += _delta(x, i, position, random, threshold, keys, limit, rescale, weight)
    if not elect:
        out[j] = bj + (total / divisor) * lam
        return hits
    # sign(d) == majority  <=>  d * majority > 0 (majority = +-1; zeros never agree)
    majority = one if total >= zero else -one
    kept, kept_weight = zero, zero
    for i in range(len(sources)):
        d = _delta(sources[i][j] - bj, i, position, random, threshold, keys, limit, rescale, weight)
        agree = d * majority > zero
        kept += d if agree else zero
        kept_weight += weight[i] if agree else zero
    if normalize:
        kept = kept / (one if kept_weight == zero else kept_weight)
    out[j] = bj + kept * lam
    return hits


@njit(nogil=True, cache=True)
def merge_task_vectors(base, sources, out, offset, weight, threshold, random, keys, limit, rescale,
                       elect, divisor, lam, window, found_idx, found_val, found_n):
    """out = base + lam * combine_i(w_i * sparsify_i(source_i - base)), element by element.

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
    found_idx[i] / found_val[i] at found_n[i] (the TIES fix-up; lo >= hi: none); the arrays need
    BLOCK entries of room beyond the expected count (found_n > capacity: more than expected).
    Products with 1 and divisions by 1 are exact, so the reference's skipped steps (lambda 1, no
    rescale, no normalize) need no branches here.

    The loop over the sources has a constant trip count (the tuple's length), so the compiler
    unrolls it and vectorises the loop over elements: one read of every input and one write.
    Unsigned indices spare the negative-index checks that would stop the vectorisation.
    """
    n = out.size
    lo, hi = window[:, 0].copy(), window[:, 1].copy()
    normalize = divisor > np.float32(0.0)
    collect = False  # any window (TIES with a magnitude index): only then are entries counted
    for i in range(len(lo)):
        collect |= lo[i] < hi[i]
    for s0 in range(0, n, BLOCK):
        s1 = min(n, s0 + BLOCK)
        hits = 0
        first = np.uint64(offset + s0) - np.uint64(s0)  # position = first + j
        # One copy of the loop per case, each compiled without the branches. The elect loops
        # count window entries only when there is a window (the count costs them up to a third);
        # the plain sums always count, since without the count the compiler vectorises them
        # worse (dare_linear measured slower without it).
        if random and elect:
            for jj in range(s0, s1):
                j = np.uint64(jj)
                hits += _merge_one(base, sources, out, j, first + j, True, True, False, normalize,
                                   threshold, keys, limit, rescale, weight, divisor, lam, lo, hi)
        elif random:
            for jj in range(s0, s1):
                j = np.uint64(jj)
                hits += _merge_one(base, sources, out, j, first + j, True, False, True, normalize,
                                   threshold, keys, limit, rescale, weight, divisor, lam, lo, hi)
        elif elect and collect:
            for jj in range(s0, s1):
                j = np.uint64(jj)
                hits += _merge_one(base, sources, out, j, first + j, False, True, True, normalize,
                                   threshold, keys, limit, rescale, weight, divisor, lam, lo, hi)
        elif elect:
            for jj in range(s0, s1):
                j = np.uint64(jj)
                hits += _merge_one(base, sources, out, j, first + j, False, True, False, normalize,
                                   threshold, keys, limit, rescale, weight, divisor, lam, lo, hi)
        else:
            for jj in range(s0, s1):
                j = np.uint64(jj)
                hits += _merge_one(base, sources, out, j, first + j, False, False, True, normalize,
                                   threshold, keys, limit, rescale, weight, divisor, lam, lo, hi)
        if hits:
            _collect(base, sources, s0, s1, offset, lo, hi, found_idx, found_val, found_n)


@njit(inline="always")
def _collect(base, sources, s0, s1, offset, lo, hi, found_idx, found_val, found_n):
    """Append the block's entries inside each source's window (branch-free compaction)."""
    for i in range(len(sources)):
        if not lo[i] < hi[i]:
            continue
        c = found_n[i]
        if c + (s1 - s0) > found_idx.shape[1]:  # more than the index counted: a stale index
            found_n[i] = found_idx.shape[1] + 1
            continue
        src = sources[i]
        for jj in range(s0, s1):
            j = np.uint64(jj)
            a = abs(src[j] - base[j])
            found_idx[i, c] = offset + jj
            found_val[i, c] = a
            c += 1 if (a >= lo[i]) & (a < hi[i]) else 0
        found_n[i] = c
