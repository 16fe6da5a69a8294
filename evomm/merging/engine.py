"""In-place materialisation: write a recipe's merged tensors into the resident target.

The engine knows nothing of modalities: an adapter hands it :class:`TensorSlot` objects and it
writes ``method(base, sources, params)`` into each ``slot.target``. ``MethodSpec.merge``
(``evomm.merging.methods``) is the reference; the engine computes the same numbers (the same
float32 operations in the same order, so the same bits up to the sign of zero) but streams:

- **Chunks.** A tensor is processed in flat chunks of ``chunk`` elements (CPU default 2^17:
  the float32 work buffers of one chunk stay in the cache). Every chunk reads the base and the
  sources once, upcasts bf16/fp16 to float32 into reusable buffers, and writes its slice of the
  target. No model is copied per candidate and no float32 copy of a whole tensor is made, so
  a candidate's extra memory is a few chunk buffers. On a GPU the whole tensor is one chunk
  (sources on the CPU are moved per tensor).
- **CPU threads take whole tensors.** Each torch operation runs single-threaded (a chunk is too
  small to split across cores, and OpenMP barriers stall when other processes share the cores)
  and torch's thread count of workers merge different tensors side by side.
- **Branch-free arithmetic.** Boolean masks are slow on CPUs, so the TIES trim is
  ``hardshrink`` at the threshold's float32 predecessor (|x| > prev(t) is |x| >= t) and the sign
  election uses ``copysign``/``relu``/``sign``; each is exact, not an approximation.
- **What is computed once per tensor and cached** (per slot, while its base and sources are
  unchanged). A full task vector cache would cost one model per source (float32: two per bf16
  source) and break the memory budget of ``(M + 1.25) x model bytes`` for M loaded models
  (sources and base) plus the target, so task vectors are recomputed per chunk (one subtraction
  per element, the cheapest operation of a merge) and only small per-tensor facts are kept:
  * TIES: a *magnitude index* per source: the exact number of task-vector entries at or above
    ~256 magnitude edges (one histogram pass over the float bits of |tau|). For any density the
    k-th largest magnitude then lies between two known edges; the merge pass trims at the upper
    edge and collects the few entries between the edges (~n/256), the exact threshold is their
    k'-th largest, and only the entries it adds are recomputed. No kthvalue over the tensor;
    a few KB per tensor and source.
  * DARE: the state of the random stream where each source's mask starts (see below); 2.5 KB.
  * SLERP: the angle's cosine of the tensor pair (it does not depend on t).
- **DARE masks** follow the reference exactly: one generator seeded with
  ``tensor_seed(recipe.seed, slot.name)`` on the device that computes the merge, masks drawn
  source after source as ``rand(shape) < density``. On the CPU the stream is torch's MT19937,
  reproduced with numpy's MT19937 (checked against torch once per process; torch's own
  generator is used if they ever differ), so each source's mask can be drawn chunk by chunk from
  its own offset. On a GPU the masks come from torch's CUDA generator, whole tensors, as the
  reference does there: a DARE recipe gives the same model on every CPU and on every GPU, but a
  GPU's masks differ from a CPU's (as torch's own generators do).

Methods without a streaming kernel (``breadcrumbs``, ``della``, ``model_stock``, TIES with
``rescale``) are computed by ``MethodSpec.merge`` on whole tensors and copied in.
"""

from __future__ import annotations

import math
import threading
import weakref
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from evomm.adapters.base import TensorSlot
from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.merging.methods import MethodSpec, get_method, magnitude_threshold
from evomm.merging.recipe import Recipe

# Elements per chunk on the CPU: the ~8 float32 work buffers (512 KiB each) stay in the cache.
CPU_CHUNK = 1 << 17
# Magnitude-index resolution: about this many edges per tensor and source (candidates ~ n / 256).
INDEX_EDGES = 256
# The methods the streaming kernels compute (others go through MethodSpec.merge).
# Draw CPU DARE masks with numpy's MT19937 (False: torch's generator; the same numbers).
USE_NUMPY_STREAM = True
STREAMED = ("linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp")

_TINY_DIVISOR = 1e-8  # as methods.combine_task_vectors
_SLERP_DOT_THRESHOLD = 0.9995  # as methods.slerp
_MIN_SUBNORMAL = float(np.nextafter(np.float32(0), np.float32(1)))  # smallest positive float32


def tensor_seed(recipe_seed: int, tensor_name: str) -> int:
    """A per-tensor seed that depends only on the recipe seed and the tensor's name.

    crc32 (not Python's salted hash) keeps it stable across processes and runs, so a recipe
    rebuilds the same DARE masks anywhere.
    """
    return (int(recipe_seed) * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**62)


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def materialize(slots: Iterable[TensorSlot], recipe: Recipe, *, chunk: int | None = None,
                threads: int | None = None) -> None:
    """Write the recipe's merge of every slot into its target, in place.

    Every slot's parameters are checked before any tensor is written. ``chunk`` overrides the
    CPU chunk size in elements (tests use tiny chunks to exercise the multi-chunk paths on tiny
    tensors); ``chunk=0`` processes whole tensors with the reference's own random draws, as on a
    GPU. ``threads`` CPU threads merge slots side by side (default: torch's thread count).
    """
    spec = get_method(recipe.method)
    checked: dict[tuple, dict[str, Any]] = {}
    jobs: list[tuple[TensorSlot, dict, dict, int | None]] = []
    for slot in slots:
        if spec.needs_base and slot.base is None:
            raise ConfigError(
                f"merge method '{spec.name}' needs a base model; set adapter.base (tensor {slot.name})"
            )
        params = recipe.params_for(slot.group, slot.name, slot.t)
        seed = tensor_seed(recipe.seed, slot.name) if spec.random else None
        try:
            p = _checked_params(spec, slot, params, checked)
        except ConfigError as e:
            raise ConfigError(f"{e} (tensor {slot.name}, group {slot.group})") from None
        if slot.target.numel() > 0:
            jobs.append((slot, params, p, seed))
    chunk = CPU_CHUNK if chunk is None else int(chunk)
    work = _Workspace(chunk)
    for job in jobs:
        if job[0].target.device.type != "cpu":
            _run(spec, job, work)
    _run_on_cpu(spec, [j for j in jobs if j[0].target.device.type == "cpu"], chunk, threads)


def _run(spec: MethodSpec, job: tuple, work: _Workspace) -> None:
    slot, params, p, seed = job
    if spec.name in STREAMED and not (spec.name == "ties" and p["rescale"]):
        _merge_slot(spec.name, slot, p, seed, work)
    else:
        slot.target.copy_(spec.merge(slot.base, slot.sources, params, seed=seed))


def _run_on_cpu(spec: MethodSpec, jobs: list[tuple], chunk: int, threads: int | None) -> None:
    """Slots on CPU threads, largest first; every torch op inside runs single-threaded.

    Chunk-sized operations are too small to split across cores profitably (and OpenMP's
    barriers stall when other processes share the cores), so the cores take whole slots instead.
    """
    if not jobs:
        return
    n_threads = max(1, threads or torch.get_num_threads())
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if n_threads == 1 or len(jobs) == 1:
            work = _Workspace(chunk)
            for job in jobs:
                _run(spec, job, work)
            return
        local = threading.local()

        def run_one(job: tuple) -> None:
            if not hasattr(local, "work"):
                local.work = _Workspace(chunk)
            with torch.no_grad():
                _run(spec, job, local.work)

        ordered = sorted(jobs, key=lambda j: j[0].target.numel(), reverse=True)
        with ThreadPoolExecutor(max_workers=n_threads) as pool:
            for future in [pool.submit(run_one, job) for job in ordered]:
                future.result()
    finally:
        torch.set_num_threads(previous)


@torch.no_grad()
def write_source(slots: Iterable[TensorSlot], index: int | None) -> None:
    """Make the target equal to one source model (``index``) or to the base (``None``)."""
    for slot in slots:
        src = slot.base if index is None else slot.sources[index]
        if src is None:
            raise ConfigError("there is no base model to write; set adapter.base")
        slot.target.copy_(src)


def keep_sources_on(slots: Iterable[TensorSlot], device: str | torch.device) -> None:
    """Move every slot's sources and base to ``device`` (e.g. the GPU that holds the target).

    Sources normally stay on the CPU and travel to the target's device tensor by tensor; when
    they fit next to the target, keeping them there saves that transfer for every candidate.
    """
    device = torch.device(device)
    for slot in slots:
        slot.sources = [s.to(device) for s in slot.sources]
        if slot.base is not None:
            slot.base = slot.base.to(device)


# ---------------------------------------------------------------------------------------------
# Parameters: the same checks as MethodSpec.merge, done once per distinct parameter set
# ---------------------------------------------------------------------------------------------
def _checked_params(spec: MethodSpec, slot: TensorSlot, params: dict, memo: dict) -> dict[str, Any]:
    n = len(slot.sources)
    shapes = {tuple(s.shape) for s in slot.sources}
    if slot.base is not None:
        shapes.add(tuple(slot.base.shape))
    shapes.add(tuple(slot.target.shape))
    if len(shapes) > 1:
        raise IncompatibleModelsError(
            f"merge method '{spec.name}': tensors of different shapes {sorted(shapes)}; "
            f"the models do not share an architecture"
        )
    key = (n, repr(sorted(params.items())))
    if key not in memo:
        full = spec.with_defaults(params, n)
        spec.check_params(full, n)
        out: dict[str, Any] = {}
        for name, value in full.items():
            if name in spec.tensor_params:
                out[name] = [float(v) for v in value]
            elif isinstance(value, (bool, np.bool_)):
                out[name] = bool(value)
            else:
                out["lambda_" if name == "lambda" else name] = float(value)
        memo[key] = out
    return memo[key]


# ---------------------------------------------------------------------------------------------
# Per-slot caches
# ---------------------------------------------------------------------------------------------
@dataclass
class _SlotCache:
    """What the engine remembers about one slot while its base and sources are unchanged."""

    inputs: tuple  # (id, version) of base and sources: a change invalidates the cache
    indexes: dict[int, _MagnitudeIndex] = field(default_factory=dict)  # TIES, per source
    streams: dict[tuple, list] = field(default_factory=dict)  # DARE: (seed, kind) -> per-source states
    slerp_dot: float | None = None


_CACHES: dict[int, _SlotCache] = {}


def _slot_cache(slot: TensorSlot) -> _SlotCache:
    inputs = tuple((id(t), t._version) for t in [slot.base, *slot.sources] if t is not None)
    key = id(slot)
    cache = _CACHES.get(key)
    if cache is None:
        weakref.finalize(slot, _CACHES.pop, key, None)  # forget the slot when it is gone
    if cache is None or cache.inputs != inputs:
        cache = _CACHES[key] = _SlotCache(inputs)
    return cache


# ---------------------------------------------------------------------------------------------
# Work buffers and chunk views
# ---------------------------------------------------------------------------------------------
class _Workspace:
    """Reusable float32 chunk buffers, one set per device (allocating per chunk is slow)."""

    def __init__(self, chunk: int):
        if chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0: whole tensors), got {chunk}")
        self.chunk = chunk
        self._buffers: dict[tuple[str, torch.device], Tensor] = {}
        self._views: dict[tuple[str, int, torch.device], Tensor] = {}  # sliced views, reused
        self._np: dict[str, np.ndarray] = {}

    def buffer(self, name: str, size: int, device: torch.device) -> Tensor:
        view = self._views.get((name, size, device))
        if view is not None:
            return view
        buf = self._buffers.get((name, device))
        if buf is None or buf.numel() < size:
            buf = torch.empty(size, dtype=torch.float32, device=device)
            if name == "ones":
                buf.fill_(1.0)
            self._buffers[(name, device)] = buf
            self._views = {k: v for k, v in self._views.items() if k[0] != name or k[2] != device}
        view = self._views[(name, size, device)] = buf[:size]
        return view

    def array(self, name: str, size: int, dtype) -> np.ndarray:
        arr = self._np.get(name)
        if arr is None or arr.size < size:
            arr = self._np[name] = np.empty(max(size, self.chunk), dtype=dtype)
        return arr[:size]


def _flat(t: Tensor) -> Tensor:
    return t.reshape(-1)  # a view for contiguous tensors (copies only non-contiguous ones)


def _as_f32(work: _Workspace, name: str, t: Tensor, device: torch.device) -> Tensor:
    """``t`` as float32 on ``device``: the tensor itself when it already is (read-only use!)."""
    if t.dtype == torch.float32 and t.device == device:
        return t
    return work.buffer(name, t.numel(), device).copy_(t)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    if a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def _prev_f32(value: float) -> float:
    """The largest float32 below ``value``: hardshrink(x, prev(t)) keeps exactly |x| >= t."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


# ---------------------------------------------------------------------------------------------
# One slot
# ---------------------------------------------------------------------------------------------
def _merge_slot(method: str, slot: TensorSlot, p: dict, seed: int | None, work: _Workspace) -> None:
    target = slot.target
    device = target.device
    n = target.numel()
    cache = _slot_cache(slot)
    sources = [_flat(s) for s in slot.sources]
    base = None if slot.base is None else _flat(slot.base)
    # GPUs (and chunk=0) take whole tensors and the reference's own random draws.
    whole = device.type != "cpu" or work.chunk == 0
    chunk = n if whole else min(work.chunk, n)

    # Write straight into the target when it is contiguous float32 and aliases no input;
    # otherwise through a float32 chunk buffer (or, for a strided target, a whole-tensor one).
    if target.is_contiguous():
        tflat = target.view(-1)
        direct = target.dtype == torch.float32 and not any(
            _overlaps(tflat, t) for t in [base, *sources] if t is not None
        )
    else:
        tflat, direct = work.buffer("out_full", n, device), True

    kernel = _Kernel(method, p, len(sources), device, work)
    if method == "slerp":
        kernel.coefs = _slerp_coefficients(cache, slot, p["t"])
    if method in ("dare_ties", "dare_linear"):
        if whole:
            kernel.masks = _TorchMasks(seed, p["density"], p["rescale"], device)
        else:
            kernel.masks = _StreamMasks(cache, seed, p["density"], p["rescale"], n,
                                        use_numpy=USE_NUMPY_STREAM and _numpy_stream_matches_torch())
    if method == "ties":
        kernel.trim = _Trim(cache, sources, base, p["density"], n, chunk, device, work)

    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dst = tflat[start:stop] if direct else work.buffer("out", stop - start, device)
        kernel(None if base is None else base[start:stop], [s[start:stop] for s in sources], dst, start)
        if not direct:
            tflat[start:stop].copy_(dst)
    if kernel.trim is not None:
        kernel.trim.fix_up(kernel, base, sources, tflat)
    if not target.is_contiguous():
        target.copy_(tflat.view(target.shape))


class _Kernel:
    """One method's arithmetic on one chunk: float32, elementwise, exactly the reference's."""

    def __init__(self, method: str, p: dict, n_sources: int, device: torch.device, work: _Workspace):
        self.method, self.p, self.m, self.device, self.work = method, p, n_sources, device, work
        self.masks: _StreamMasks | _TorchMasks | None = None
        self.trim: _Trim | None = None
        self.coefs: tuple[float, float] | None = None

    def __call__(self, base: Tensor | None, sources: list[Tensor], dst: Tensor, start: int,
                 lambdas: list[float | None] | None = None) -> None:
        """Write the merge of one chunk (flat views) into ``dst`` (float32, same length)."""
        work, dev, size = self.work, self.device, dst.numel()
        p, method = self.p, self.method
        if method == "linear":  # sum_i w_i theta_i [/ sum_i w_i]
            weight = p["weight"]
            torch.mul(_as_f32(work, "s", sources[0], dev), weight[0], out=dst)
            for i in range(1, self.m):
                dst.add_(_as_f32(work, "s", sources[i], dev), alpha=weight[i])
            if p["normalize"]:
                dst.div_(math.fsum(weight))
            return
        b32 = _as_f32(work, "b", base, dev)
        if method == "slerp":  # coef0 * v0 + coef1 * v1, with the cached angle
            coef0, coef1 = self.coefs
            tmp = work.buffer("tmp", size, dev)
            torch.mul(b32, coef0, out=dst)
            torch.mul(_as_f32(work, "s", sources[0], dev), coef1, out=tmp)
            dst.add_(tmp)
            return

        # Task vectors tau_i = theta_i - base, sparsified, then weighted: d_i = w_i * drop(tau_i).
        deltas = []
        for i, source in enumerate(sources):
            d = work.buffer(f"d{i}", size, dev)
            torch.sub(_as_f32(work, "s", source, dev), b32, out=d)
            if self.trim is not None:
                lam = self.trim.lambd(i, d, start) if lambdas is None else lambdas[i]
                if lam is not None:
                    torch.hardshrink(d, lam, out=d)
            if self.masks is not None:
                self.masks.apply(i, d, start)
            d.mul_(p["weight"][i])
            deltas.append(d)
        if method in ("ties", "dare_ties"):
            mixed = _elect_sign(deltas, p["weight"], p["normalize"], work, size, dev)
        else:
            mixed = deltas[0]
            for d in deltas[1:]:
                mixed.add_(d)
            if p["normalize"]:
                divisor = math.fsum(p["weight"])
                mixed.div_(1.0 if abs(divisor) < _TINY_DIVISOR else divisor)
        if p["lambda_"] != 1.0:
            mixed.mul_(p["lambda_"])
        torch.add(b32, mixed, out=dst)


def _elect_sign(deltas: list[Tensor], weight: list[float], normalize: bool, work: _Workspace,
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
# TIES: exact top-k thresholds from a cached magnitude index
# ---------------------------------------------------------------------------------------------
@dataclass
class _MagnitudeIndex:
    """Exact counts of |tau| >= e for ~INDEX_EDGES edges e (descending, last edge 0.0)."""

    edges: np.ndarray  # float32 [E], descending, edges[-1] == 0
    at_least: np.ndarray  # int64 [E], entries with |tau| >= edges[j]; non-decreasing, last == n
    zeros: int  # entries with tau == 0 exactly

    @classmethod
    def build(cls, base: Tensor, source: Tensor, chunk: int, device: torch.device, work: _Workspace):
        n = source.numel()
        counts = torch.zeros(1 << 15, dtype=torch.int64, device=device)
        zeros = 0
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            d = work.buffer("d0", stop - start, device)
            torch.sub(_as_f32(work, "s", source[start:stop], device),
                      _as_f32(work, "b", base[start:stop], device), out=d).abs_()
            zeros += (stop - start) - int(torch.count_nonzero(d))
            # The top 16 bits of a non-negative float32 order it: 2^15 buckets, 1/128 octave each.
            counts += torch.bincount(d.view(torch.int32) >> 16, minlength=1 << 15)
        at_least = torch.flip(torch.cumsum(torch.flip(counts, (0,)), 0), (0,)).cpu().numpy()
        # at_least[b] = entries whose bucket is >= b = entries >= the bucket's lower edge.
        step = max(1, n // INDEX_EDGES)
        levels = np.arange(step, n + step, step)
        buckets = np.searchsorted(-at_least, -levels, side="right") - 1  # largest b: at_least[b] >= level
        buckets = np.unique(np.concatenate([buckets[buckets >= 0], [0]]))[::-1]  # descending
        edges = (buckets.astype(np.int32) << 16).view(np.float32)
        return cls(edges=edges.copy(), at_least=at_least[buckets].astype(np.int64), zeros=zeros)

    def bracket(self, k: int, n: int) -> tuple[float, float, int] | float:
        """[lo, hi) holding the k-th largest |tau| and the entries above hi, or the exact value."""
        j = int(np.searchsorted(self.at_least, k, side="left"))
        hi = float("inf") if j == 0 else float(self.edges[j - 1])
        above = 0 if j == 0 else int(self.at_least[j - 1])
        lo = float(self.edges[j])
        if lo == 0.0:
            if k > n - self.zeros:
                return 0.0  # the k-th largest is a zero: every entry is kept
            lo = _MIN_SUBNORMAL
        return lo, hi, above


def _sorted_union(arrays: list[np.ndarray]) -> np.ndarray:
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


class _Trim:
    """Per-source TIES thresholds for one slot and one candidate.

    One chunk (small tensors, GPUs): the exact k-th largest |tau| of the chunk (= the tensor).
    Several chunks: trim at the bracket's upper edge during the pass, collect the entries inside
    the bracket, then ``fix_up`` recomputes the entries that the exact threshold also keeps.
    """

    def __init__(self, cache: _SlotCache, sources, base, density: list[float], n: int, chunk: int,
                 device: torch.device, work: _Workspace):
        self.n, self.single = n, chunk >= n
        self.exact: list[float | None] = [None] * len(sources)  # lambd for hardshrink; None: no trim
        self.k = [max(1, int(d * n)) for d in density]
        self.brackets: dict[int, tuple[float, float, int]] = {}  # lo, hi, entries >= hi
        self.window: dict[int, tuple[np.uint32, np.uint32, float]] = {}
        self.found: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        if self.single:
            self.trimmed = [d < 1.0 for d in density]
            return
        self.trimmed = [False] * len(sources)
        for i, d in enumerate(density):
            if d >= 1.0:
                continue
            index = cache.indexes.get(i)
            if index is None:
                index = cache.indexes[i] = _MagnitudeIndex.build(base, sources[i], chunk, device, work)
            b = index.bracket(self.k[i], n)
            if isinstance(b, float):
                self.exact[i] = _prev_f32(b)
            else:
                lo, hi, _ = b
                self.brackets[i], self.found[i] = b, []
                # lo <= |tau| < hi on the float bits: (bits & 0x7fffffff) - lo_bits < hi_bits - lo_bits
                lo_bits, hi_bits = (int(np.float32(v).view(np.uint32)) for v in (lo, hi))
                self.window[i] = (np.uint32(lo_bits), np.uint32(hi_bits - lo_bits), _prev_f32(hi))
        self.work = work

    def lambd(self, i: int, tau: Tensor, start: int) -> float | None:
        if self.single:
            if not self.trimmed[i]:
                return None
            return _prev_f32(float(magnitude_threshold(tau.abs(), self.k[i])))
        window = self.window.get(i)
        if window is None:
            return self.exact[i]
        lo_bits, width, provisional = window
        values = tau.numpy()
        bits = self.work.array("bits", values.size, np.uint32)
        inside = self.work.array("inside", values.size, np.bool_)
        np.bitwise_and(values.view(np.uint32), np.uint32(0x7FFFFFFF), out=bits)
        np.subtract(bits, lo_bits, out=bits)  # wraps below lo
        where = np.flatnonzero(np.less(bits, width, out=inside))
        if where.size:
            self.found[i].append((where + start, np.abs(values[where])))
        return provisional  # trim at hi: keep what is surely kept; fix_up adds the rest

    def fix_up(self, kernel: _Kernel, base: Tensor, sources: list[Tensor], tflat: Tensor) -> None:
        """Recompute the entries that the exact thresholds keep and the pass trimmed."""
        positions = []
        for i, (lo, hi, above) in self.brackets.items():
            idx = np.concatenate([w for w, _ in self.found[i]]) if self.found[i] else np.zeros(0, np.int64)
            vals = np.concatenate([v for _, v in self.found[i]]) if self.found[i] else np.zeros(0, np.float32)
            rank = self.k[i] - above  # the threshold is the rank-th largest value inside [lo, hi)
            threshold = float(np.partition(vals, vals.size - rank)[vals.size - rank])
            self.exact[i] = _prev_f32(threshold)
            positions.append(idx[vals >= threshold])
        where = _sorted_union(positions)
        if where.size:
            idx = torch.from_numpy(where).to(tflat.device)
            gathered = [s.index_select(0, idx.to(s.device)) for s in sources]
            b = base.index_select(0, idx.to(base.device))
            out = torch.empty(where.size, dtype=torch.float32, device=tflat.device)
            kernel(b, gathered, out, 0, lambdas=self.exact)
            tflat.index_copy_(0, idx, out.to(tflat.dtype))


# ---------------------------------------------------------------------------------------------
# DARE: the reference's random masks, drawn chunk by chunk
# ---------------------------------------------------------------------------------------------
_MASK24 = np.uint64((1 << 24) - 1)


def _mt_state(seed: int) -> np.ndarray:
    """MT19937's init_genrand: the state torch.Generator().manual_seed(seed) starts from."""
    key = np.empty(624, dtype=np.uint32)
    x = seed & 0xFFFFFFFF
    key[0] = x
    for j in range(1, 624):
        x = (1812433253 * (x ^ (x >> 30)) + j) & 0xFFFFFFFF
        key[j] = x
    return key


def _mt_generator(key: np.ndarray, pos: int = 624) -> np.random.MT19937:
    gen = np.random.MT19937()
    gen.state = {"bit_generator": "MT19937", "state": {"key": key.copy(), "pos": pos}}
    return gen


_STREAM_CHECK: list[bool] = []


def _numpy_stream_matches_torch() -> bool:
    """torch.rand (float32, CPU) takes the low 24 bits of one MT19937 draw per element."""
    if not _STREAM_CHECK:
        seed = 1234567
        expected = torch.rand(4099, generator=torch.Generator().manual_seed(seed)).numpy()
        raw = _mt_generator(_mt_state(seed)).random_raw(4099)
        got = ((raw & _MASK24).astype(np.float64) * 2.0**-24).astype(np.float32)
        _STREAM_CHECK.append(bool(np.array_equal(expected, got)))
    return _STREAM_CHECK[0]


class _StreamMasks:
    """CPU masks: source i's mask is the stream's values [i*n, (i+1)*n), drawn chunk by chunk.

    Each source gets its own generator positioned at its offset (states cached per seed), so
    the chunks of all sources can be drawn side by side. numpy's MT19937 draws ~1.6x faster
    than torch.rand; torch's generator is the fallback.
    """

    def __init__(self, cache: _SlotCache, seed: int, density: list[float], rescale: bool, n: int,
                 use_numpy: bool):
        key = (seed, use_numpy)
        states = cache.streams.get(key)
        if states is None:
            states = _stream_states(seed, len(density), n, use_numpy)
            cache.streams.clear()  # one seed per slot is enough: a search keeps its seed
            cache.streams[key] = states
        if use_numpy:
            self.gens = [_mt_generator(s["key"], s["pos"]) for s in states]
        else:
            self.gens = [torch.Generator().set_state(s) for s in states]
        self.use_numpy, self.density, self.rescale = use_numpy, density, rescale
        # rand < density compares in float32: (24-bit integer) * 2^-24 < float32(density)
        # <=> integer < ceil(float32(density) * 2^24)
        self.limits = [np.uint64(math.ceil(float(np.float32(d)) * 2.0**24)) for d in density]

    def apply(self, i: int, tau: Tensor, start: int) -> None:
        density = self.density[i]
        if density >= 1.0:
            return  # rand < 1 always holds, and no other source's mask depends on this stream
        size = tau.numel()
        if self.use_numpy:
            raw = self.gens[i].random_raw(size)  # uint64 [size], 32 random bits each
            np.bitwise_and(raw, _MASK24, out=raw)
            keep = torch.from_numpy(np.less(raw, self.limits[i]))
        else:
            keep = torch.rand(size, generator=self.gens[i]) < density
        tau.mul_(keep)  # tau or +-0 (the reference: where(keep, tau, 0))
        if self.rescale:
            tau.div_(density)


def _stream_states(seed: int, n_sources: int, n: int, use_numpy: bool) -> list:
    """Generator states at offsets 0, n, 2n, ... of the stream seeded with ``seed``."""
    if use_numpy:
        gen = _mt_generator(_mt_state(seed))
        state = lambda: gen.state["state"]  # noqa: E731
        advance = lambda size: gen.random_raw(size, output=False)  # noqa: E731
    else:
        gen = torch.Generator().manual_seed(seed)
        state = gen.get_state
        advance = lambda size: torch.rand(size, generator=gen)  # noqa: E731
    states = []
    for i in range(n_sources):
        states.append(state())
        if i + 1 < n_sources:
            for start in range(0, n, 1 << 20):
                advance(min(1 << 20, n - start))
    return states


class _TorchMasks:
    """The reference's own draws: one generator on the device, whole tensors, source order."""

    def __init__(self, seed: int, density: list[float], rescale: bool, device: torch.device):
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.density, self.rescale = density, rescale

    def apply(self, i: int, tau: Tensor, start: int) -> None:
        density = self.density[i]
        keep = torch.rand(tau.shape, generator=self.gen, device=tau.device) < density
        kept = torch.where(keep, tau, 0.0)
        tau.copy_(kept / density if self.rescale and density < 1.0 else kept)


# ---------------------------------------------------------------------------------------------
# SLERP: the angle once per tensor pair
# ---------------------------------------------------------------------------------------------
def _slerp_coefficients(cache: _SlotCache, slot: TensorSlot, t: float) -> tuple[float, float]:
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
