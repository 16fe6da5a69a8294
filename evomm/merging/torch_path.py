"""The merge through torch operations: every method on a GPU, linear and slerp in CPU chunks,
and the task-arithmetic family on a CPU without numba (``EVOMM_KERNELS=torch``).

The same float32 operations as the reference (``evomm.merging.methods``) in the same order, so
the same bits; TIES takes its trim from ``evomm.merging.topk`` on whole tensors.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from evomm.merging.methods import sum_divisor
from evomm.merging.random_stream import keep_limit, stream_key, uniform24
from evomm.merging.slot_cache import SlotCache, slot_cache
from evomm.merging.slots import TensorSlot
from evomm.merging.sparsify import magnitude_threshold
from evomm.merging.topk import exact_trim, top_k
from evomm.merging.workspace import Workspace, as_f32, finish_target, flat, flat_target

_SLERP_DOT_THRESHOLD = 0.9995  # as methods.slerp
_MIN_SUBNORMAL = float(np.nextafter(np.float32(0), np.float32(1)))  # smallest positive float32


def torch_slot(method: str, slot: TensorSlot, p: dict, seed: int | None, work: Workspace) -> None:
    """torch operations: every method on a GPU (whole tensors); on a CPU linear, slerp, and
    (without numba) task arithmetic and DARE in chunks, TIES on whole tensors."""
    target = slot.target
    device = target.device
    n = target.numel()
    sources = [flat(s) for s in slot.sources]
    base = None if slot.base is None else flat(slot.base)
    # GPUs (and chunk=0) take whole tensors; so does a TIES trim, which needs all of |tau|.
    whole = device.type != "cpu" or work.chunk == 0 or method == "ties"
    chunk = n if whole else min(work.chunk, n)
    tflat, direct = flat_target(target, [t for t in [base, *sources] if t is not None], work)

    kernel = TorchKernel(method, p, len(sources), device, work)
    if method == "slerp":
        kernel.coefs = slerp_coefficients(slot_cache(slot), slot, p["t"])
    if method in ("dare_ties", "dare_linear"):
        kernel.masks = HashMasks(seed, p["density"], p["rescale"])
    if method == "ties":
        kernel.top_k = [top_k(d, n) if d < 1.0 else None for d in p["density"]]
        kernel.cache = slot_cache(slot)

    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dst = tflat[start:stop] if direct else work.buffer("out", stop - start, device)
        kernel(None if base is None else base[start:stop], [s[start:stop] for s in sources], dst, start)
        if not direct:
            tflat[start:stop].copy_(dst)
    finish_target(target, tflat)



def _prev_f32(value: float) -> float:
    """The largest float32 below ``value``: hardshrink(x, prev(t)) keeps exactly |x| >= t."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))



class TorchKernel:
    """One method's arithmetic on one chunk: float32, elementwise, exactly the reference's."""

    def __init__(self, method: str, p: dict, n_sources: int, device: torch.device, work: Workspace):
        self.method, self.p, self.m, self.device, self.work = method, p, n_sources, device, work
        self.masks: HashMasks | None = None
        self.top_k: list[int | None] | None = None  # TIES: entries kept per source (None: all)
        self.coefs: tuple[float, float] | None = None
        self.cache: SlotCache | None = None  # TIES: the slot's cached tie orders

    def __call__(self, base: Tensor | None, sources: list[Tensor], dst: Tensor, start: int) -> None:
        """Write the merge of one chunk (flat views) into ``dst`` (float32, same length)."""
        work, dev, size = self.work, self.device, dst.numel()
        p, method = self.p, self.method
        if method == "linear":  # sum_i w_i theta_i [/ sum_i w_i]
            weight = p["weight"]
            torch.mul(as_f32(work, "s", sources[0], dev), weight[0], out=dst)
            for i in range(1, self.m):
                dst.add_(as_f32(work, "s", sources[i], dev), alpha=weight[i])
            if p["normalize"]:
                dst.div_(math.fsum(weight))
            return
        b32 = as_f32(work, "b", base, dev)
        if method == "slerp":  # coef0 * v0 + coef1 * v1, with the cached angle
            coef0, coef1 = self.coefs
            tmp = work.buffer("tmp", size, dev)
            torch.mul(b32, coef0, out=dst)
            torch.mul(as_f32(work, "s", sources[0], dev), coef1, out=tmp)
            dst.add_(tmp)
            return

        # Task vectors tau_i = theta_i - base, sparsified, then weighted: d_i = w_i * drop(tau_i).
        deltas = []
        for i, source in enumerate(sources):
            d = work.buffer(f"d{i}", size, dev)
            torch.sub(as_f32(work, "s", source, dev), b32, out=d)
            if self.top_k is not None and self.top_k[i] is not None:  # whole tensors only
                self._trim(i, d)
            if self.masks is not None:
                self.masks.apply(i, d, start)
            d.mul_(p["weight"][i])
            deltas.append(d)
        if method in ("ties", "dare_ties"):
            mixed = elect_sign(deltas, p["weight"], p["normalize"], work, size, dev)
        else:
            mixed = deltas[0]
            for d in deltas[1:]:
                mixed.add_(d)
            if p["normalize"]:
                mixed.div_(sum_divisor(p["weight"]))
        if p["lambda_"] != 1.0:
            mixed.mul_(p["lambda_"])
        torch.add(b32, mixed, out=dst)


    def _trim(self, i: int, d: Tensor) -> None:
        """TIES: keep exactly top_k[i] entries of the task vector ``d`` (whole, flat), in place."""
        k, magnitudes = self.top_k[i], d.abs()
        value = float(magnitude_threshold(magnitudes, k))
        trim = exact_trim(magnitudes, k, value, orders=self.cache.orders(i, d.numel()),
                          tie_order=self.p["tie_order"])
        ties = None if trim.ties is None else torch.from_numpy(trim.ties).to(d.device)
        kept = None if ties is None else d.index_select(0, ties)
        torch.hardshrink(d, _prev_f32(trim.threshold), out=d)
        if ties is not None:
            d.index_copy_(0, ties, kept)


def elect_sign(deltas: list[Tensor], weight: list[float], normalize: bool, work: Workspace,
                size: int, dev: torch.device) -> Tensor:
    """TIES's disjoint merge of weighted deltas d_i (modified in place); returns the mix.

    The reference: majority = +1 where sum_i d_i >= 0 else -1; keep d_i where sign(d_i) equals
    it; divide by the sum of the kept weights (0 -> 1). Here, with maj = +-1 (exact products):
    sign(d_i) == maj  <=>  d_i * maj > 0, so the kept sum is maj * sum_i relu(d_i * maj) and
    the kept weight count is sum_i w_i * sign(relu(d_i * maj)).
    """
    total = work.buffer("sum", size, dev)
    if len(deltas) == 1:
        total.copy_(deltas[0])
    else:
        torch.add(deltas[0], deltas[1], out=total)
        for d in deltas[2:]:
            total.add_(d)
    # copysign gives -1 for a sum of -0 where the reference (sum >= 0) says +1; but a sum is -0
    # only when every d_i is +-0, and then nothing is kept under either sign.
    maj = work.buffer("maj", size, dev)
    torch.copysign(work.buffer("ones", size, dev), total, out=maj)  # +-1
    for d in deltas:
        d.mul_(maj).relu_()
    if normalize:
        divisor, tmp = total, work.buffer("tmp", size, dev)  # the sum is no longer needed
        torch.sign(deltas[0], out=divisor).mul_(weight[0])
        for d, w in zip(deltas[1:], weight[1:]):
            divisor.add_(torch.sign(d, out=tmp), alpha=w)
        if min(weight) >= 0.0:
            # divisor == 0 only where nothing was kept (mixed == 0): any positive divisor gives 0.
            divisor.clamp_min_(_MIN_SUBNORMAL)
        else:  # weights of both signs can cancel: divisor == 0 -> 1 exactly as the reference
            torch.abs(divisor, out=tmp).sign_().sub_(1.0)  # 0 -> -1, else 0
            divisor.sub_(tmp)
    mixed = deltas[0]
    for d in deltas[1:]:
        mixed.add_(d)
    mixed.mul_(maj)
    if normalize:
        mixed.div_(divisor)
    return mixed


# ---------------------------------------------------------------------------------------------
# DARE on the torch path: the reference's masks, for any slice of a tensor
# ---------------------------------------------------------------------------------------------
class HashMasks:
    """Source i's mask for positions [start, start + size): ``uniform24(stream_key(seed, i))``."""

    def __init__(self, seed: int, density: list[float], rescale: bool):
        self.keys = [stream_key(seed, i) for i in range(len(density))]
        self.density, self.rescale = density, rescale

    def apply(self, i: int, tau: Tensor, start: int) -> None:
        density = self.density[i]
        keep = uniform24(self.keys[i], tau.numel(), tau.device, start) < keep_limit(density)
        tau.copy_(torch.where(keep, tau, 0.0))
        if self.rescale:
            tau.mul_(1.0 / density)


# ---------------------------------------------------------------------------------------------
# SLERP: the angle once per tensor pair
# ---------------------------------------------------------------------------------------------
def slerp_coefficients(cache: SlotCache, slot: TensorSlot, t: float) -> tuple[float, float]:
    if cache.slerp_dot is None:
        # The reference's own operations on the whole tensors, so the angle is bit-identical.
        v0, v1 = slot.base.float(), slot.sources[0].float()
        norm0 = torch.linalg.vector_norm(v0)
        norm1 = torch.linalg.vector_norm(v1)
        norm0 = norm0 if norm0 > 1e-8 else torch.ones_like(norm0)
        norm1 = norm1 if norm1 > 1e-8 else torch.ones_like(norm1)
        cache.slerp_dot = float(((v0 / norm0) * (v1 / norm1)).sum().clamp(-1.0, 1.0))
    dot = cache.slerp_dot
    if abs(dot) > _SLERP_DOT_THRESHOLD:
        return 1.0 - t, t
    theta = math.acos(dot)
    return math.sin((1.0 - t) * theta) / math.sin(theta), math.sin(t * theta) / math.sin(theta)

