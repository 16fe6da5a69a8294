"""The fused CPU path (numba): one kernel call per tensor or chunk, TIES trims fixed up after.

float32 tensors go whole, others chunk by chunk through float32 buffers; see
``evomm.merging.kernels.merge_task_vectors`` for the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from evomm.merging import kernels
from evomm.merging.random_stream import keep_limit, stream_key
from evomm.merging.slot_cache import slot_cache
from evomm.merging.slots import TensorSlot
from evomm.merging.ties_thresholds import Thresholds
from evomm.merging.torch_path import sum_divisor
from evomm.merging.workspace import Workspace, as_f32, finish_target, flat, flat_target


def fused_slot(method: str, slot: TensorSlot, p: dict, seed: int | None, work: Workspace) -> None:
    """The fused CPU kernel: float32 tensors in one call, others chunk by chunk via buffers."""
    target = slot.target
    n = target.numel()
    sources = [flat(s) for s in slot.sources]
    base = flat(slot.base)
    m = len(sources)
    cpu = torch.device("cpu")
    chunk = work.fused_chunk(n, [base, *sources])
    tflat, direct = flat_target(target, [base, *sources], work)

    density = p.get("density", [1.0] * m)
    mix = Mix.of(method, p, density, seed)
    if method == "ties":
        trim = Thresholds.for_ties(slot_cache(slot), base, sources, density, work, p["tie_order"])
    else:
        trim = Thresholds(m)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dst = tflat[start:stop] if direct else work.buffer("out", stop - start, cpu)
        b = as_f32(work, "b", base[start:stop], cpu).detach().numpy()
        srcs = tuple(as_f32(work, f"s{i}", s[start:stop], cpu).detach().numpy() for i, s in enumerate(sources))
        mix.run(b, srcs, dst.detach().numpy(), start, trim)
        if not direct:
            tflat[start:stop].copy_(dst)
    trim.fix_up(mix, base, sources, tflat)
    finish_target(target, tflat)


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

    def run(self, base: np.ndarray, sources: tuple, out: np.ndarray, offset: int, trim: Thresholds) -> None:
        kernels.merge_task_vectors(
            base, sources, out, offset, self.weight, trim.threshold, self.random, self.keys,
            self.limit, self.rescale, self.elect, self.divisor, self.lam, trim.window,
            trim.found_idx, trim.found_val, trim.found_n,
        )

