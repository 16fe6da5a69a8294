"""In-place materialisation: write a recipe's merged tensors into the resident target.

The engine knows nothing of modalities: an adapter hands it :class:`TensorSlot` objects and it
writes ``method(base, sources, params)`` into each ``slot.target``. ``MethodSpec.merge``
(``evomm.merging.methods``) is the reference; the engine computes the same numbers (the same
float32 operations in the same order, so the same bits up to the sign of zero) without its
temporaries:

- **CPU with numba, task-arithmetic family** (task_arithmetic, ties, dare_ties, dare_linear):
  one fused kernel per tensor (``evomm.merging.fused``, ``evomm.merging.kernels``) reads the
  base and every source once and writes the target once. float32 tensors are passed whole;
  bf16/fp16 ones in chunks of ``chunk`` elements (CPU default 2^17) upcast into reusable
  float32 buffers. TIES thresholds come from ``evomm.merging.ties_thresholds``.
- **torch operations** (``evomm.merging.torch_path``): linear and slerp on CPU chunks; every
  method on a GPU and with ``chunk=0`` (the GPU code on the CPU, for the tests); the
  task-arithmetic family on a CPU without numba or with ``EVOMM_KERNELS=torch``
  (``evomm.merging.backend``). Both CPU paths give the same tensors.
- **CPU threads take whole tensors.** Each torch operation runs single-threaded and torch's
  thread count of workers merge different tensors side by side (the kernels release the GIL);
  OpenMP barriers stall when other processes share the cores.
- **No model is copied per candidate.** A full task-vector cache would cost one model per
  source and break the memory budget of ``(M + 1.25) x model bytes`` for M loaded models plus
  the target, so task vectors are recomputed on the fly. Cached per slot while its inputs are
  unchanged (``evomm.merging.slot_cache``): the TIES magnitude index (~2% of a float32 tensor
  per source), the orders of tied magnitudes mergekit's trim needs, slerp's angle.
- **TIES keeps exactly mergekit's entries** (``evomm.merging.topk``): k = max(1, int(density *
  numel)) per source, ties at the k-th largest magnitude broken as torch's CPU argsort breaks them.
- **DARE masks** are the reference's counter-based stream (``evomm.merging.random_stream``),
  computed per element: every device and chunking gives the same masks.

Methods without a kernel (``breadcrumbs``, ``della``, ``model_stock``, TIES with ``rescale``)
are computed by ``MethodSpec.merge`` on whole tensors and copied in.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.merging.backend import FUSED, fast_kernels, fused_method
from evomm.merging.method_spec import MethodSpec
from evomm.merging.methods import get_method
from evomm.merging.random_stream import tensor_seed
from evomm.recipe.recipe import Recipe
from evomm.merging.slots import TensorSlot
from evomm.merging.torch_path import torch_slot
from evomm.merging.workspace import CPU_CHUNK, Workspace

__all__ = ["CPU_CHUNK", "FUSED", "STREAMED", "materialize", "tensor_seed", "write_source"]

# Methods the torch kernel computes (GPU: all of these); FUSED (backend.py): the fused CPU kernel's.
STREAMED = ("linear", "slerp", *FUSED)


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
    fast = fast_kernels()
    work = Workspace(chunk, fast)
    for job in jobs:
        if job[0].target.device.type != "cpu":
            _run(spec, job, work)
    _run_on_cpu(spec, [j for j in jobs if j[0].target.device.type == "cpu"], Workspace(chunk, fast), threads)


def _run(spec: MethodSpec, job: tuple, work: Workspace) -> None:
    slot, params, p, seed = job
    if spec.name not in STREAMED or (spec.name in FUSED and not fused_method(spec.name, p)):
        slot.target.copy_(spec.merge(slot.base, slot.sources, params, seed=seed))
    elif spec.name in FUSED and slot.target.device.type == "cpu" and work.chunk != 0 and work.fast:
        from evomm.merging.fused import fused_slot  # numba: imported only when it is used

        fused_slot(spec.name, slot, p, seed, work)
    else:
        torch_slot(spec.name, slot, p, seed, work)


def _run_on_cpu(spec: MethodSpec, jobs: list[tuple], work: Workspace, threads: int | None) -> None:
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
            for job in jobs:
                _run(spec, job, work)
            return
        local = threading.local()

        def run_one(job: tuple) -> None:
            if not hasattr(local, "work"):
                local.work = Workspace(work.chunk if not work.whole_float32 else None, work.fast)
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
        memo[key] = spec.resolved(params, n)
    return memo[key]
