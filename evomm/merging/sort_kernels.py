"""torch's CPU sort, replayed for a range of output positions only (numba; optional).

mergekit trims a task vector to the first k entries of ``torch.argsort(|tau|, descending=True)``
on the CPU. That sort is not stable: torch sorts (value, index) pairs with ``std::sort``
(libstdc++'s introsort: median-of-three quicksort, heapsort past a depth limit, a final insertion
sort), so which of several entries of equal magnitude come first is decided by the partitioning.
To keep exactly mergekit's entries among those tied at the threshold, ``sort_range`` runs the same
algorithm step for step, but descends only into the partitions that overlap the wanted output
positions: elements never leave their partition, so the rest need not be sorted. That costs about
two passes over the values (a quickselect) instead of a full sort.

``evomm.merging.topk.sorted_slice`` checks the result against ``torch.argsort`` in the tests, and
uses ``torch.argsort`` itself where numba is missing.
"""

from __future__ import annotations

import numpy as np
from numba import njit

THRESHOLD = 16  # libstdc++'s _S_threshold: partitions this small are left to the insertion sort


@njit(inline="always")
def _before(desc, x, y):
    """torch's KeyValueCompDesc / KeyValueCompAsc on float values: NaN sorts as the largest."""
    if desc:
        return (np.isnan(x) and not np.isnan(y)) or x > y
    return (not np.isnan(x) and np.isnan(y)) or x < y


@njit(inline="always")
def _swap(vals, idx, i, j):
    vals[i], vals[j] = vals[j], vals[i]
    idx[i], idx[j] = idx[j], idx[i]


@njit(inline="always")
def _move_median_to_first(vals, idx, desc, result, a, b, c):
    if _before(desc, vals[a], vals[b]):
        if _before(desc, vals[b], vals[c]):
            _swap(vals, idx, result, b)
        elif _before(desc, vals[a], vals[c]):
            _swap(vals, idx, result, c)
        else:
            _swap(vals, idx, result, a)
    elif _before(desc, vals[a], vals[c]):
        _swap(vals, idx, result, a)
    elif _before(desc, vals[b], vals[c]):
        _swap(vals, idx, result, c)
    else:
        _swap(vals, idx, result, b)


@njit(inline="always")
def _partition_pivot(vals, idx, desc, first, last):
    """__unguarded_partition_pivot: median of (first+1, mid, last-1) to first, Hoare partition."""
    mid = first + (last - first) // 2
    _move_median_to_first(vals, idx, desc, first, first + 1, mid, last - 1)
    pivot = vals[first]
    lo, hi = first + 1, last
    while True:
        while _before(desc, vals[lo], pivot):
            lo += 1
        hi -= 1
        while _before(desc, pivot, vals[hi]):
            hi -= 1
        if not lo < hi:
            return lo
        _swap(vals, idx, lo, hi)
        lo += 1


@njit(inline="always")
def _adjust_heap(vals, idx, desc, first, hole, length, value, index):
    top = hole
    child = hole
    while child < (length - 1) // 2:
        child = 2 * (child + 1)
        if _before(desc, vals[first + child], vals[first + child - 1]):
            child -= 1
        vals[first + hole], idx[first + hole] = vals[first + child], idx[first + child]
        hole = child
    if length & 1 == 0 and child == (length - 2) // 2:
        child = 2 * (child + 1)
        vals[first + hole], idx[first + hole] = vals[first + child - 1], idx[first + child - 1]
        hole = child - 1
    parent = (hole - 1) // 2  # __push_heap
    while hole > top and _before(desc, vals[first + parent], value):
        vals[first + hole], idx[first + hole] = vals[first + parent], idx[first + parent]
        hole = parent
        parent = (hole - 1) // 2
    vals[first + hole], idx[first + hole] = value, index


@njit
def _heap_sort(vals, idx, desc, first, last):
    """std::__partial_sort(first, last, last): __make_heap, then __sort_heap."""
    length = last - first
    if length >= 2:
        parent = (length - 2) // 2
        while True:
            _adjust_heap(vals, idx, desc, first, parent, length, vals[first + parent], idx[first + parent])
            if parent == 0:
                break
            parent -= 1
    end = last
    while end - first > 1:
        end -= 1
        value, index = vals[end], idx[end]  # __pop_heap
        vals[end], idx[end] = vals[first], idx[first]
        _adjust_heap(vals, idx, desc, first, 0, end - first, value, index)


@njit
def _insertion_sort(vals, idx, desc, first, last):
    """__insertion_sort; within one partition the guarded and unguarded forms agree."""
    for i in range(first + 1, last):
        value, index = vals[i], idx[i]
        if _before(desc, value, vals[first]):
            for j in range(i, first, -1):
                vals[j], idx[j] = vals[j - 1], idx[j - 1]
            vals[first], idx[first] = value, index
        else:
            j = i
            while _before(desc, value, vals[j - 1]):
                vals[j], idx[j] = vals[j - 1], idx[j - 1]
                j -= 1
            vals[j], idx[j] = value, index


@njit(nogil=True, cache=True)
def sort_range(vals, idx, desc, start, stop, depth_limit):
    """Reorder vals (float32) and idx (int64) in place so that positions [start, stop) hold what
    ``std::sort`` over all of them would put there; depth_limit = 2 * floor(log2(n)).

    Partitions are processed in any order (they are disjoint), and those that do not overlap
    [start, stop) are skipped. The final insertion sort of the whole array moves no element out
    of its partition (every element of an earlier partition is not after any of a later one), so
    it is run on the small partitions that overlap the range only.
    """
    n = vals.size
    stack = np.empty((2 * depth_limit + 8, 3), np.int64)  # (first, last, depth) of pending parts
    top = 0
    stack[0, 0], stack[0, 1], stack[0, 2] = 0, n, depth_limit
    top = 1
    while top > 0:
        top -= 1
        first, last, depth = stack[top, 0], stack[top, 1], stack[top, 2]
        while last - first > THRESHOLD and first < stop and start < last:
            if depth == 0:
                _heap_sort(vals, idx, desc, first, last)
                break
            depth -= 1
            cut = _partition_pivot(vals, idx, desc, first, last)
            if cut < stop and start < last:  # the right part, [cut, last): later
                stack[top, 0], stack[top, 1], stack[top, 2] = cut, last, depth
                top += 1
            last = cut
        if last - first <= THRESHOLD and first < stop and start < last:
            _insertion_sort(vals, idx, desc, first, last)
