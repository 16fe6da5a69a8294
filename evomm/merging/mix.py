"""The fused kernel's constants for one merge, and what the TIES fix-up recomputes (numpy only).

``Mix`` holds what ``kernels.merge_task_vectors`` needs besides the tensors (weights, DARE keys
and limits, the election and divisor switches); ``Trims`` the per-source TIES thresholds and the
windows the kernel collects; ``recompute_at`` merges a few positions again with final trims.
The resident engine (``evomm.merging.fused``) and the streamed one-shot merge
(``evomm.merging.stream_arrays``) share them; nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evomm.merging import kernels
from evomm.merging.methods import sum_divisor
from evomm.merging.random_stream import keep_limit, stream_key


class Trims:
    """Per-source TIES thresholds for the kernel: keep |tau_i| >= threshold[i] (0 keeps every
    entry); no windows (``evomm.merging.ties_thresholds.Thresholds`` adds them)."""

    def __init__(self, threshold: np.ndarray):
        m = len(threshold)
        self.threshold = np.asarray(threshold, np.float32)
        self.window = np.tile(np.float32([1.0, 0.0]), (m, 1))  # lo >= hi: no window
        self.found_idx = np.empty((m, 0), np.int64)
        self.found_val = np.empty((m, 0), np.float32)
        self.found_n = np.zeros(m, np.int64)


@dataclass
class Mix:
    """The fused kernel's per-candidate constants for one slot (see kernels.merge_task_vectors)."""

    weight: np.ndarray  # float32 [m]
    random: bool  # DARE masks instead of TIES thresholds
    keys: np.ndarray  # uint32 [m], DARE stream keys
    limit: np.ndarray  # uint32 [m], DARE keep limits (2^24 keeps all)
    rescale: np.ndarray  # float32 [m], DARE's 1/density or 1
    elect: bool
    divisor: np.float32  # elect: > 0 normalises by the kept weights; else the sum's divisor
    lam: np.float32

    @classmethod
    def of(cls, method: str, p: dict, density: list[float], seed: int | None) -> Mix:
        m = len(p["weight"])
        random = method in ("dare_ties", "dare_linear")
        elect = method in ("ties", "dare_ties")
        if elect:
            divisor = 1.0 if p["normalize"] else 0.0
        else:
            divisor = sum_divisor(p["weight"]) if p["normalize"] else 1.0
        return cls(
            weight=np.asarray(p["weight"], np.float32),
            random=random,
            keys=np.asarray([stream_key(seed, i) if random else 0 for i in range(m)], np.uint32),
            limit=np.asarray([keep_limit(d) for d in density], np.uint32),
            rescale=np.asarray([1.0 / d if random and p["rescale"] else 1.0 for d in density], np.float32),
            elect=elect, divisor=np.float32(divisor), lam=np.float32(p["lambda_"]),
        )

    def run(self, base: np.ndarray, sources: tuple, out: np.ndarray, offset: int, trim: Trims) -> None:
        kernels.merge_task_vectors(
            base, sources, out, offset, self.weight, trim.threshold, self.random, self.keys,
            self.limit, self.rescale, self.elect, self.divisor, self.lam, trim.window,
            trim.found_idx, trim.found_val, trim.found_n,
        )


def recompute_at(mix: Mix, base: np.ndarray, sources: list[np.ndarray], where: np.ndarray, threshold: np.ndarray,
                 ties: dict[int, np.ndarray]) -> np.ndarray:
    """The merge at positions ``where`` (base and sources gathered there, float32) with the final
    trims: keep |tau_i| >= threshold[i], and the tied positions ``ties[i]`` (sorted)."""
    gathered = []
    for i, x in enumerate(sources):  # a dropped entry becomes the base's: tau = 0, kept or not
        keep = np.abs(x - base) >= threshold[i]
        if i in ties:
            keep |= np.isin(where, ties[i], assume_unique=True)
        gathered.append(np.where(keep, x, base))
    out = np.empty(where.size, np.float32)
    mix.run(base, tuple(gathered), out, 0, Trims(np.zeros(len(sources), np.float32)))
    return out


def sorted_union(arrays: list[np.ndarray]) -> np.ndarray:
    """Union of ascending int arrays (a stable sort merges sorted runs in linear time)."""
    if not arrays:
        return np.zeros(0, np.int64)
    merged = np.sort(np.concatenate(arrays), kind="stable")
    if merged.size < 2:
        return merged
    keep = np.empty(merged.size, dtype=np.bool_)
    keep[0] = True
    np.not_equal(merged[1:], merged[:-1], out=keep[1:])
    return merged[keep]
