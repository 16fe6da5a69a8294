"""The fused CPU path (numba): one kernel call per tensor or chunk, TIES trims fixed up after.

float32 tensors go whole, others chunk by chunk through float32 buffers; see
``evomm.merging.kernels.merge_task_vectors`` for the arithmetic.
"""

from __future__ import annotations

import torch

from evomm.merging.mix import Mix
from evomm.merging.slot_cache import slot_cache
from evomm.merging.slots import TensorSlot
from evomm.merging.ties_thresholds import Thresholds
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
