"""The streamed one-shot merge of one tensor through the resident engine, on torch tensors.

The merger ``evomm.merging.streaming`` uses for what the numpy arrays do not cover (methods
without a fused kernel, a GPU, no numba, float64 checkpoints): each tensor is read with
safetensors' torch reader, cast as ``from_pretrained(dtype=...)`` casts it, and merged by
``materialize`` in a one-slot call, single-threaded (workers merge tensors side by side).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import numpy as np
import torch

from evomm.adapters.llm_names import group_t, llm_group
from evomm.adapters.loading import pick_device, torch_dtype
from evomm.merging.engine import materialize
from evomm.merging.slots import TensorSlot
from evomm.recipe.recipe import Recipe

_ST_TORCH = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64,
             "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
             "BOOL": torch.bool}
_DTYPE_FROM_ST = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class _Reader:
    """Open safetensors files of one checkpoint, one handle per file, read tensor by tensor."""

    def __init__(self, files: dict[str, Path], stack: ExitStack):
        self.files, self.stack, self.handles = files, stack, {}

    def tensor(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        path = self.files[name]
        if path not in self.handles:
            self.handles[path] = self.stack.enter_context(safe_open(str(path), framework="pt"))
        return self.handles[path].get_tensor(name)


class TensorMerge:
    """name, storage dtype -> the output tensor's bytes (a numpy array), for the shard writer."""

    def __init__(self, recipe: Recipe, merged: set[str], n_layers: int, files: list[dict[str, Path]], dtype: str,
                 device: str, n_sources: int, has_base: bool, stack: ExitStack):
        self.recipe, self.merged, self.n_layers = recipe, merged, n_layers
        self.readers = [_Reader(f, stack) for f in files]
        self.dtype = torch_dtype(_DTYPE_FROM_ST[dtype])
        self.compute = pick_device(device)
        self.n_sources, self.has_base = n_sources, has_base
        self.workers = max(1, torch.get_num_threads()) if self.compute.type == "cpu" else 1

    @contextmanager
    def session(self) -> Iterator[None]:
        """Each worker merges one tensor single-threaded (threads take whole tensors)."""
        previous = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(previous)

    def __call__(self, name: str, out_dtype: str) -> np.ndarray:
        return _bytes(self.tensor(name, _ST_TORCH[out_dtype]))

    def tensor(self, name: str, out_dtype: torch.dtype) -> torch.Tensor:
        if name not in self.merged:  # a persistent buffer: the target's (source 0's)
            return self.readers[0].tensor(name).to(out_dtype)
        # As from_pretrained(dtype=...) loads them: each source cast to the adapter dtype.
        tensors = [r.tensor(name).to(self.dtype) for r in self.readers]
        group = llm_group(name)
        target = torch.empty(tensors[0].shape, dtype=self.dtype, device=self.compute)
        slot = TensorSlot(
            name=name, group=group, t=group_t(group, self.n_layers), target=target,
            sources=tensors[:self.n_sources], base=tensors[self.n_sources] if self.has_base else None,
        )
        materialize([slot], self.recipe, threads=1)
        return target


def _bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
