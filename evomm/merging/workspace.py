"""Reusable float32 work buffers and flat views of the tensors a merge reads and writes."""

from __future__ import annotations

import torch
from torch import Tensor

# Elements per chunk for bf16/fp16 inputs on the CPU: their float32 copies stay in the cache.
CPU_CHUNK = 1 << 17


class Workspace:
    """Reusable float32 chunk buffers, one set per device (allocating per chunk is slow).

    ``chunk``: None for the defaults (fused kernels take float32 tensors whole, everything else
    goes in CPU_CHUNK pieces), 0 for whole tensors through torch operations, else a chunk size.
    """

    def __init__(self, chunk: int | None, fast: bool = False):
        if chunk is not None and chunk < 0:
            raise ValueError(f"chunk must be >= 0 (0: whole tensors), got {chunk}")
        self.chunk = CPU_CHUNK if chunk is None else int(chunk)
        self.whole_float32 = chunk is None
        self.fast = fast  # the numba kernels merge the task-arithmetic family on the CPU
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


def flat(t: Tensor) -> Tensor:
    return t.reshape(-1)  # a view for contiguous tensors (copies only non-contiguous ones)


def as_f32(work: Workspace, name: str, t: Tensor, device: torch.device) -> Tensor:
    """``t`` as float32 on ``device``: the tensor itself when it already is (read-only use!)."""
    if t.dtype == torch.float32 and t.device == device:
        return t
    return work.buffer(name, t.numel(), device).copy_(t)


def _overlaps(a: Tensor, b: Tensor) -> bool:
    if a.device != b.device:
        return False
    a0, b0 = a.data_ptr(), b.data_ptr()
    return a0 < b0 + b.numel() * b.element_size() and b0 < a0 + a.numel() * a.element_size()


def flat_target(target: Tensor, inputs: list[Tensor], work: Workspace) -> tuple[Tensor, bool]:
    """(flat view to write, direct): direct when chunks can be written into it as float32.

    A contiguous float32 target that aliases no input is written straight; another contiguous
    target through a float32 chunk buffer; a strided one through a whole-tensor buffer that is
    copied back at the end (``finish_target``).
    """
    if not target.is_contiguous():
        return work.buffer("out_full", target.numel(), target.device), True
    tflat = target.view(-1)
    direct = target.dtype == torch.float32 and not any(_overlaps(tflat, t) for t in inputs)
    return tflat, direct


def finish_target(target: Tensor, tflat: Tensor) -> None:
    if not target.is_contiguous():
        target.copy_(tflat.view(target.shape))

