"""Exact single-use TIES thresholds from a sample and one counting pass (numpy and numba only).

For a tensor merged once (``evomm merge``, a search's first merge of a slot) the k-th largest
|tau| of each source is found without sorting or indexing it: a sample of |tau| brackets the
k-th largest between two sampled values lo <= hi, and one pass over the tensors
(``kernels.magnitude_windows``) counts the entries above hi and at either end and copies those
strictly between, which fixes the k-th largest's rank among them. About one read of the
tensors. The resident engine (``ties_thresholds``, torch tensors) and the streamed merge
(``stream_arrays``, numpy arrays) both use it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np

from evomm.merging import kernels

# |tau| is sampled at up to SAMPLE entries (runs of _RUN neighbours, one cache line of float32),
# and the bracket around the k-th largest spans _SPREAD standard deviations of the sample
# quantile on either side.
SAMPLE = 1 << 15
_RUN = 16
_SPREAD = 4.0


def sample_geometry(n: int) -> tuple[int, int, int]:
    """(runs, run, step): ``runs`` runs of ``run`` neighbours, ``step`` apart (a strided view)."""
    run = min(_RUN, n)
    runs = max(1, min(n // (16 * run), SAMPLE // run))  # at most 1/16 of the tensor
    return runs, run, (n - run) // max(1, runs - 1)


def select_thresholds(n: int, ks: list[int], samples: list[np.ndarray],
                      chunks: Callable[[], Iterable[tuple[np.ndarray, tuple]]]) -> list[tuple[float, int, int] | None]:
    """The ks[i]-th largest |tau_i| of n entries with the numbers of entries above and equal to
    it; None where the bracket missed it or held more entries than the sample suggested (the
    caller then finds it another way).

    ``samples[i]``: |tau_i| at the entries ``sample_geometry(n)`` picks (float32);
    ``chunks()``: the base and the sources, float32, in consecutive pieces covering all n entries.
    """
    m = len(samples)
    lo, hi = np.zeros(m, np.float32), np.full(m, np.inf, np.float32)
    width, size = 0, 1
    for i, (sample, k) in enumerate(zip(samples, ks)):
        size, q = sample.size, k / n
        spread = _SPREAD * math.sqrt(size * q * (1.0 - q)) + 2.0
        top, bottom = math.floor(q * size - spread), math.ceil(q * size + spread)  # ranks, 0 = largest
        if top >= 0 and bottom < size:
            hi[i], lo[i] = kernels.kth_largest_pair(sample, top + 1, bottom + 1)
        elif top >= 0:
            hi[i] = kernels.kth_largest(sample, top + 1)
        elif bottom < size:
            lo[i] = kernels.kth_largest(sample, bottom + 1)
        width = max(width, min(bottom, size) - max(top, 0))
    # room for the expected window and then some (its count varies by ~1/sqrt(width) around it,
    # more for a narrow one), plus the BLOCK entries the kernel may write beyond it
    room = int(1.25 * width / size * n) + kernels.BLOCK
    found = np.empty((m, room + kernels.BLOCK), np.float32)
    found_n = np.zeros(m, np.int64)
    counts = np.zeros((m, 3), np.int64)  # per source: above hi, at hi, at lo
    for b, srcs in chunks():
        kernels.magnitude_windows(b, srcs, lo, hi, counts, found, found_n)
    return [_rank_in_window(k, lo[i], hi[i], counts[i], found[i, :found_n[i]], room)
            for i, k in enumerate(ks)]


def _rank_in_window(k: int, lo: np.float32, hi: np.float32, counts: np.ndarray, inside: np.ndarray,
                    room: int) -> tuple[float, int, int] | None:
    """(the k-th largest, entries above it, entries equal to it) from one source's window
    counts, or None when the k-th largest is not in the window."""
    if inside.size > room:
        return None  # a wider window than the sample suggested
    above, at_hi, at_lo = (int(c) for c in counts)
    rank = k - above  # the k-th largest is the rank-th largest of the entries <= hi
    if rank < 1:
        return None
    if rank <= at_hi:
        return float(hi), above, at_hi
    if lo == hi:
        return None
    rank -= at_hi
    if rank <= inside.size:
        value = kernels.kth_largest(inside, rank)
        return float(value), above + at_hi + int(np.count_nonzero(inside > value)), int(np.count_nonzero(inside == value))
    return (float(lo), above + at_hi + inside.size, at_lo) if rank - inside.size <= at_lo else None
