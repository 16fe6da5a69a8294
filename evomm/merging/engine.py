"""In-place materialisation: write a recipe's merged tensors into the resident target.

The engine knows nothing of modalities: an adapter hands it :class:`TensorSlot` objects and it
writes ``method(base, sources, params)`` into each ``slot.target``. ``MethodSpec.merge``
(``evomm.merging.methods``) is the reference; the engine computes the same numbers (the same
float32 operations in the same order, so the same bits up to the sign of zero) without its
temporaries:

- **CPU, task-arithmetic family** (task_arithmetic, ties, dare_ties, dare_linear): one fused
  kernel per tensor (``evomm.merging.kernels``) reads the base and every source once and writes
  the target once; everything in between is computed per element in registers. float32
  tensors are passed whole; bf16/fp16 ones in chunks of ``chunk`` elements (CPU default 2^17)
  upcast into reusable float32 buffers.
- **CPU, linear and slerp**: torch operations on float32 chunks (they are one or two
  operations per element, already near the bandwidth).
- **GPU** (and ``chunk=0``, which runs the GPU code on the CPU for the tests): torch
  operations on whole tensors; sources on the CPU travel per tensor.
- **CPU threads take whole tensors.** Each torch operation runs single-threaded and torch's
  thread count of workers merge different tensors side by side (the kernels release the GIL);
  OpenMP barriers stall when other processes share the cores.
- **No model is copied per candidate.** A full task-vector cache would cost one model per
  source and break the memory budget of ``(M + 1.25) x model bytes`` for M loaded models plus
  the target, so task vectors are recomputed on the fly (one subtraction per element). What is
  computed once per tensor and cached (per slot, while its base and sources are unchanged):
  * TIES: a *magnitude index* per source: the exact number of task-vector entries at or above
    magnitude edges placed every ~128 entries (one histogram pass over the float bits of
    |tau|). For any density the k-th largest magnitude then lies between two known edges; the
    fused pass trims at the upper edge and collects the few entries between the edges, the
    exact threshold is their k'-th largest, and only the entries it adds are recomputed. No
    kthvalue over the tensor; 12 bytes per 128 entries (~2% of a float32 tensor) per source.
    The index is built on a slot's second TIES merge: the first (and, in ``evomm merge``, the
    only one) takes single-use thresholds instead, from a sample that brackets each k-th
    largest and one pass that counts and collects the entries around it (a third of a build).
  * SLERP: the angle's cosine of the tensor pair (it does not depend on t).
- **DARE masks** are the reference's counter-based stream (``methods.uniform24``): a hash of
  the source's key and the entry's position, computed inside the kernel. Nothing is drawn
  ahead or cached, and every device and chunking gives the same masks.

Methods without a kernel (``breadcrumbs``, ``della``, ``model_stock``, TIES with ``rescale``)
are computed by ``MethodSpec.merge`` on whole tensors and copied in.
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

from evomm.merging.slots import TensorSlot
from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.merging import kernels
from evomm.merging.methods import (
    MethodSpec,
    get_method,
    keep_limit,
    magnitude_threshold,
    stream_key,
    uniform24,
)
from evomm.recipe.recipe import Recipe

# Elements per chunk for bf16/fp16 inputs on the CPU: their float32 copies stay in the cache.
CPU_CHUNK = 1 << 17
# Magnitude index: an edge every WINDOW entries (at least INDEX_EDGES edges per tensor), so the
# entries between two edges that the fused pass collects are ~WINDOW (or n / INDEX_EDGES) per
# tensor and source; the index costs 12 bytes per WINDOW entries (~2% of a float32 tensor).
INDEX_EDGES = 256
WINDOW = 128
OCTAVES = 24  # the index resolves magnitudes down to 2^-24 of the largest; below, one bucket
_SHIFT = 8  # magnitude buckets: float32 bits >> 8 (2^15 buckets per octave)
# TIES on tensors up to this size takes its exact thresholds from kthvalue (no index needed).
SMALL_TENSOR = 1 << 16
# A slot's first TIES merge takes single-use thresholds (no index): |tau| is sampled at up to
# SAMPLE entries (runs of _RUN neighbours, one cache line of float32), and the bracket around
# the k-th largest spans _SPREAD standard deviations of the sample quantile on either side.
SAMPLE = 1 << 15
_RUN = 16
_SPREAD = 4.0
# Methods the fused CPU kernel computes; methods the torch kernel computes (GPU: all of these).
FUSED = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
STREAMED = ("linear", "slerp", *FUSED)

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
    By default the fused kernels take float32 tensors whole and others in ``CPU_CHUNK`` chunks.
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
    work = _Workspace(chunk)
    for job in jobs:
        if job[0].target.device.type != "cpu":
            _run(spec, job, work)
    _run_on_cpu(spec, [j for j in jobs if j[0].target.device.type == "cpu"], chunk, threads)


def _run(spec: MethodSpec, job: tuple, work: _Workspace) -> None:
    slot, params, p, seed = job
    if spec.name not in STREAMED or (spec.name == "ties" and p["rescale"]):
        slot.target.copy_(spec.merge(slot.base, slot.sources, params, seed=seed))
    elif spec.name in FUSED and slot.target.device.type == "cpu" and work.chunk != 0:
        _fused_slot(spec.name, slot, p, seed, work)
    else:
        _merge_slot(spec.name, slot, p, seed, work)


def _run_on_cpu(spec: MethodSpec, jobs: list[tuple], chunk: int | None, threads: int | None) -> None:
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
    ties_merges: int = 0  # TIES merges done with these inputs: the index pays off from the second
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
    """Reusable float32 chunk buffers, one set per device (allocating per chunk is slow).

    ``chunk``: None for the defaults (fused kernels take float32 tensors whole, everything else
    goes in CPU_CHUNK pieces), 0 for whole tensors through torch operations, else a chunk size.
    """

    def __init__(self, chunk: int | None):
        if chunk is not None and chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0: whole tensors), got {chunk}")
        self.chunk = CPU_CHUNK if chunk is None else int(chunk)
        self.whole_float32 = chunk is None
        self._buffers: dict[tuple[str, torch.device], Tensor] = {}
        self._views: dict[tuple[str, int, torch.device], Tensor] = {}  # sliced views, reused

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

    def fused_chunk(self, n: int, inputs: list[Tensor]) -> int:
        """Elements per call of a fused CPU kernel over ``inputs`` (n each): all of them when
        they are float32 (no copies needed) unless a chunk size was asked for, else a chunk."""
        if self.whole_float32 and all(t.dtype == torch.float32 for t in inputs):
            return n
        return min(self.chunk, n)


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


def _sum_divisor(weight: list[float]) -> float:
    """Task arithmetic's normalisation: sum of the weights, 1 when it is ~0 (as the reference)."""
    divisor = math.fsum(weight)
    return 1.0 if abs(divisor) < _TINY_DIVISOR else divisor


def _prev_f32(value: float) -> float:
    """The largest float32 below ``value``: hardshrink(x, prev(t)) keeps exactly |x| >= t."""
    return float(np.nextafter(np.float32(value), np.float32(-np.inf)))


def _flat_target(target: Tensor, inputs: list[Tensor], work: _Workspace) -> tuple[Tensor, bool]:
    """(flat view to write, direct): direct when chunks can be written into it as float32.

    A contiguous float32 target that aliases no input is written straight; another contiguous
    target through a float32 chunk buffer; a strided one through a whole-tensor buffer that is
    copied back at the end (``_finish_target``).
    """
    if not target.is_contiguous():
        return work.buffer("out_full", target.numel(), target.device), True
    tflat = target.view(-1)
    direct = target.dtype == torch.float32 and not any(_overlaps(tflat, t) for t in inputs)
    return tflat, direct


def _finish_target(target: Tensor, tflat: Tensor) -> None:
    if not target.is_contiguous():
        target.copy_(tflat.view(target.shape))


# ---------------------------------------------------------------------------------------------
# One slot
# ---------------------------------------------------------------------------------------------
def _merge_slot(method: str, slot: TensorSlot, p: dict, seed: int | None, work: _Workspace) -> None:
    """torch operations: linear and slerp in CPU chunks; every method on a GPU (whole tensors)."""
    target = slot.target
    device = target.device
    n = target.numel()
    sources = [_flat(s) for s in slot.sources]
    base = None if slot.base is None else _flat(slot.base)
    # GPUs (and chunk=0) take whole tensors; on a CPU this path only runs linear and slerp.
    chunk = n if device.type != "cpu" or work.chunk == 0 else min(work.chunk, n)
    tflat, direct = _flat_target(target, [t for t in [base, *sources] if t is not None], work)

    kernel = _Kernel(method, p, len(sources), device, work)
    if method == "slerp":
        kernel.coefs = _slerp_coefficients(_slot_cache(slot), slot, p["t"])
    if method in ("dare_ties", "dare_linear"):
        kernel.masks = _HashMasks(seed, p["density"], p["rescale"])
    if method == "ties":
        kernel.top_k = [max(1, int(d * n)) if d < 1.0 else None for d in p["density"]]

    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dst = tflat[start:stop] if direct else work.buffer("out", stop - start, device)
        kernel(None if base is None else base[start:stop], [s[start:stop] for s in sources], dst, start)
        if not direct:
            tflat[start:stop].copy_(dst)
    _finish_target(target, tflat)


def _fused_slot(method: str, slot: TensorSlot, p: dict, seed: int | None, work: _Workspace) -> None:
    """The fused CPU kernel: float32 tensors in one call, others chunk by chunk via buffers."""
    target = slot.target
    n = target.numel()
    sources = [_flat(s) for s in slot.sources]
    base = _flat(slot.base)
    m = len(sources)
    cpu = torch.device("cpu")
    chunk = work.fused_chunk(n, [base, *sources])
    tflat, direct = _flat_target(target, [base, *sources], work)

    density = p.get("density", [1.0] * m)
    mix = _Mix.of(method, p, density, seed)
    trim = _Thresholds.for_ties(_slot_cache(slot), base, sources, density, work) if method == "ties" else _Thresholds(m)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        dst = tflat[start:stop] if direct else work.buffer("out", stop - start, cpu)
        b = _as_f32(work, "b", base[start:stop], cpu).detach().numpy()
        srcs = tuple(_as_f32(work, f"s{i}", s[start:stop], cpu).detach().numpy() for i, s in enumerate(sources))
        mix.run(b, srcs, dst.detach().numpy(), start, trim)
        if not direct:
            tflat[start:stop].copy_(dst)
    trim.fix_up(mix, base, sources, tflat)
    _finish_target(target, tflat)


@dataclass
class _Mix:
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
    def of(cls, method: str, p: dict, density: list[float], seed: int | None) -> _Mix:
        m = len(p["weight"])
        random = method in ("dare_ties", "dare_linear")
        elect = method in ("ties", "dare_ties")
        if elect:
            divisor = 1.0 if p["normalize"] else 0.0
        else:
            divisor = _sum_divisor(p["weight"]) if p["normalize"] else 1.0
        return cls(
            weight=np.asarray(p["weight"], np.float32),
            random=random,
            keys=np.asarray([stream_key(seed, i) if random else 0 for i in range(m)], np.uint32),
            limit=np.asarray([keep_limit(d) for d in density], np.uint32),
            rescale=np.asarray([1.0 / d if random and p["rescale"] else 1.0 for d in density], np.float32),
            elect=elect, divisor=np.float32(divisor), lam=np.float32(p["lambda_"]),
        )

    def run(self, base: np.ndarray, sources: tuple, out: np.ndarray, offset: int, trim: _Thresholds) -> None:
        kernels.merge_task_vectors(
            base, sources, out, offset, self.weight, trim.threshold, self.random, self.keys,
            self.limit, self.rescale, self.elect, self.divisor, self.lam, trim.window,
            trim.found_idx, trim.found_val, trim.found_n,
        )


class _Kernel:
    """One method's arithmetic on one chunk: float32, elementwise, exactly the reference's."""

    def __init__(self, method: str, p: dict, n_sources: int, device: torch.device, work: _Workspace):
        self.method, self.p, self.m, self.device, self.work = method, p, n_sources, device, work
        self.masks: _HashMasks | None = None
        self.top_k: list[int | None] | None = None  # TIES: entries kept per source (None: all)
        self.coefs: tuple[float, float] | None = None

    def __call__(self, base: Tensor | None, sources: list[Tensor], dst: Tensor, start: int) -> None:
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
            if self.top_k is not None and self.top_k[i] is not None:  # whole tensors only
                threshold = float(magnitude_threshold(d.abs(), self.top_k[i]))
                torch.hardshrink(d, _prev_f32(threshold), out=d)
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
                mixed.div_(_sum_divisor(p["weight"]))
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
    def build(cls, base: Tensor, source: Tensor, work: _Workspace) -> _MagnitudeIndex:
        """Two passes over |tau|: its largest value, then a histogram of its float bits.

        Buckets are 1/32768 octave (bits >> 8) over the OCTAVES octaves below the largest
        magnitude (smaller ones share the lowest bucket), so a bucket rarely holds more than
        WINDOW entries and the edges can be placed every WINDOW entries.
        """
        n = source.numel()
        cpu = torch.device("cpu")
        chunk = work.fused_chunk(n, [base, source])

        def chunks():
            for start in range(0, n, chunk):
                stop = min(n, start + chunk)
                yield (_as_f32(work, "b", base[start:stop], cpu).detach().numpy(),
                       _as_f32(work, "s0", source[start:stop], cpu).detach().numpy())

        top = max(float(kernels.magnitude_max(b, s)) for b, s in chunks())
        high = int(np.float32(top).view(np.uint32)) >> _SHIFT
        low = max(0, high - OCTAVES * (1 << (23 - _SHIFT)))
        counts = np.zeros(high - low + 1, dtype=np.int64)
        zeros = sum(int(kernels.magnitude_histogram(b, s, counts, np.uint32(_SHIFT), np.uint32(low)))
                    for b, s in chunks())
        # at_least[b] = entries whose bucket is >= b = entries >= the bucket's lower edge
        # (bucket 0's edge is 0: it holds everything below bucket 1).
        at_least = np.cumsum(counts[::-1])[::-1]
        step = max(1, min(n // INDEX_EDGES, WINDOW))
        levels = np.arange(step, n + step, step)
        buckets = np.searchsorted(-at_least, -levels, side="right") - 1  # largest b: at_least[b] >= level
        buckets = np.unique(np.concatenate([buckets[buckets >= 0], [0]]))[::-1]  # descending
        edges = ((buckets + low).astype(np.uint32) << _SHIFT).view(np.float32)
        edges[buckets == 0] = 0.0
        return cls(edges=edges.copy(), at_least=at_least[buckets].astype(np.int64), zeros=zeros)

    def bracket(self, k: int, n: int) -> tuple[float, float, int, int] | float:
        """(lo, hi, entries >= hi, entries in [lo, hi)) around the k-th largest |tau|, or its
        exact value when that is known (0.0: the k-th largest is a zero)."""
        j = int(np.searchsorted(self.at_least, k, side="left"))
        hi = float("inf") if j == 0 else float(self.edges[j - 1])
        above = 0 if j == 0 else int(self.at_least[j - 1])
        lo = float(self.edges[j])
        inside = int(self.at_least[j]) - above
        if lo == 0.0:
            if k > n - self.zeros:
                return 0.0  # the k-th largest is a zero: every entry is kept
            lo, inside = _MIN_SUBNORMAL, inside - self.zeros
        return lo, hi, above, inside


def _select_thresholds(base: Tensor, sources: list[Tensor], ks: list[int], work: _Workspace) -> list[float | None]:
    """The ks[i]-th largest |sources[i] - base| without an index (flat tensors); None where
    the sample's bracket missed it or held more entries than expected (the index decides).

    A sample of each |tau| brackets its k-th largest between two sampled values lo <= hi; one
    pass over the tensors (``kernels.magnitude_windows``) counts the entries above hi and at
    either end and copies those strictly between, which fixes the k-th largest's rank among
    them. Costs about one read of the tensors, a third of an index build: it pays off for a
    tensor merged once (``evomm merge``).
    """
    n, m = base.numel(), len(sources)
    run = min(_RUN, n)
    runs = max(1, min(n // (16 * run), SAMPLE // run))  # at most 1/16 of the tensor
    step = (n - run) // max(1, runs - 1)  # runs evenly spread: a strided view, no index
    sampled_base = base.as_strided((runs, run), (step, 1)).float()
    lo, hi = np.zeros(m, np.float32), np.full(m, np.inf, np.float32)
    width = 0
    for i, (source, k) in enumerate(zip(sources, ks)):
        sample = (source.as_strided((runs, run), (step, 1)).float() - sampled_base).abs().reshape(-1).numpy()
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
    room = int(1.25 * width / runs / run * n) + kernels.BLOCK
    found = np.empty((m, room + kernels.BLOCK), np.float32)
    found_n = np.zeros(m, np.int64)
    counts = np.zeros((m, 3), np.int64)  # per source: above hi, at hi, at lo
    cpu = torch.device("cpu")
    chunk = work.fused_chunk(n, [base, *sources])
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        b = _as_f32(work, "b", base[start:stop], cpu).detach().numpy()
        srcs = tuple(_as_f32(work, f"s{i}", s[start:stop], cpu).detach().numpy() for i, s in enumerate(sources))
        kernels.magnitude_windows(b, srcs, lo, hi, counts, found, found_n)
    return [_rank_in_window(k, lo[i], hi[i], counts[i], found[i, :found_n[i]], room)
            for i, k in enumerate(ks)]


def _rank_in_window(k: int, lo: np.float32, hi: np.float32, counts: np.ndarray, inside: np.ndarray,
                    room: int) -> float | None:
    """The k-th largest from one source's window counts, or None when it is not in the window."""
    if inside.size > room:
        return None  # a wider window than the sample suggested
    above, at_hi, at_lo = (int(c) for c in counts)
    rank = k - above  # the k-th largest is the rank-th largest of the entries <= hi
    if rank < 1:
        return None
    if rank <= at_hi:
        return float(hi)
    if lo == hi:
        return None
    rank -= at_hi
    if rank <= inside.size:
        return float(kernels.kth_largest(inside, rank))
    return float(lo) if rank - inside.size <= at_lo else None


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


class _Thresholds:
    """Per-source TIES thresholds for the fused kernel, for one slot and one candidate.

    Small tensors: the exact k-th largest |tau| (kthvalue). Larger ones: the kernel trims at the
    magnitude index's upper edge and collects the entries inside the bracket [lo, hi); ``fix_up``
    then finds the exact threshold among them and recomputes the entries it adds.
    ``_Thresholds(m)`` keeps everything and collects nothing (the other methods).
    """

    def __init__(self, m: int):
        self.threshold = np.zeros(m, np.float32)  # keep |tau| >= threshold; 0 keeps everything
        self.window = np.tile(np.float32([1.0, 0.0]), (m, 1))  # lo >= hi: no window
        self.found_idx = np.empty((m, 0), np.int64)
        self.found_val = np.empty((m, 0), np.float32)
        self.found_n = np.zeros(m, np.int64)
        self.pending: dict[int, tuple[int, int]] = {}  # window sources: i -> (rank inside, count)

    @classmethod
    def for_ties(cls, cache: _SlotCache, base: Tensor, sources: list[Tensor], density: list[float],
                 work: _Workspace) -> _Thresholds:
        m, n = len(sources), base.numel()
        self = cls(m)
        todo: dict[int, int] = {}  # source -> k, for those the sources' magnitudes decide
        for i, d in enumerate(density):
            if d >= 1.0:
                continue
            k = max(1, int(d * n))
            if n <= SMALL_TENSOR:
                self.threshold[i] = float(magnitude_threshold((sources[i].float() - base.float()).abs(), k))
            else:
                todo[i] = k
        if todo and cache.ties_merges == 0:  # the first merge: no index yet (it may stay the only one)
            exact = _select_thresholds(base, [sources[i] for i in todo], list(todo.values()), work)
            for i, value in zip(list(todo), exact):
                if value is not None:
                    self.threshold[i] = value
                    del todo[i]
        for i, k in todo.items():
            index = cache.indexes.get(i)
            if index is None:
                index = cache.indexes[i] = _MagnitudeIndex.build(base, sources[i], work)
            bracket = index.bracket(k, n)
            if isinstance(bracket, float):
                self.threshold[i] = bracket
                continue
            lo, hi, above, inside = bracket
            self.threshold[i] = hi  # provisional: keeps what is surely kept
            self.window[i] = (lo, hi)
            self.pending[i] = (k - above, inside)
        cache.ties_merges += 1
        capacity = max((count for _, count in self.pending.values()), default=0) + kernels.BLOCK  # slack
        self.found_idx = np.empty((m, capacity), np.int64)
        self.found_val = np.empty((m, capacity), np.float32)
        return self

    def fix_up(self, mix: _Mix, base: Tensor, sources: list[Tensor], tflat: Tensor) -> None:
        """Set the exact thresholds and recompute the entries they keep below the upper edges."""
        if not self.pending:
            return
        exact = _Thresholds(len(sources))
        exact.threshold = self.threshold
        positions = []
        for i, (rank, count) in self.pending.items():
            if self.found_n[i] != count:  # the index counted these very entries: a bug, not input
                raise RuntimeError(f"TIES magnitude index out of date ({self.found_n[i]} != {count})")
            values = self.found_val[i, :count]
            threshold = np.partition(values, count - rank)[count - rank]  # the rank-th largest
            exact.threshold[i] = threshold
            positions.append(self.found_idx[i, :count][values >= threshold])
        where = _sorted_union(positions)
        if where.size:
            idx = torch.from_numpy(where)
            out = np.empty(where.size, np.float32)
            gathered = tuple(s.index_select(0, idx).float().numpy() for s in sources)
            mix.run(base.index_select(0, idx).float().numpy(), gathered, out, 0, exact)
            tflat.index_copy_(0, idx, torch.from_numpy(out).to(tflat.dtype))


# ---------------------------------------------------------------------------------------------
# DARE on the torch path: the reference's masks, for any slice of a tensor
# ---------------------------------------------------------------------------------------------
class _HashMasks:
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
