"""In-place materialisation: write a recipe's merged tensors into the resident target.

The engine knows nothing of modalities: an adapter hands it :class:`TensorSlot` objects and it
writes ``method(base, sources, params)`` into each ``slot.target`` with ``copy_``. No model is
copied per candidate: the only allocations are one float32 tensor's worth of temporaries.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

import torch

from evomm.adapters.base import TensorSlot
from evomm.errors import ConfigError
from evomm.merging.methods import get_method
from evomm.merging.recipe import Recipe


def tensor_seed(recipe_seed: int, tensor_name: str) -> int:
    """A per-tensor seed that depends only on the recipe seed and the tensor's name.

    crc32 (not Python's salted hash) keeps it stable across processes and runs, so a recipe
    rebuilds the same DARE masks anywhere.
    """
    return (int(recipe_seed) * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**62)


@torch.no_grad()
def materialize(slots: Iterable[TensorSlot], recipe: Recipe) -> None:
    """Write the recipe's merge of every slot into its target, in place."""
    spec = get_method(recipe.method)
    for slot in slots:
        if spec.needs_base and slot.base is None:
            raise ConfigError(
                f"merge method '{spec.name}' needs a base model; set adapter.base (tensor {slot.name})"
            )
        params = recipe.params_for(slot.group, slot.name, slot.t)
        seed = tensor_seed(recipe.seed, slot.name) if spec.random else None
        try:
            merged = spec.merge(slot.base, slot.sources, params, seed=seed)
        except ConfigError as e:
            raise ConfigError(f"{e} (tensor {slot.name}, group {slot.group})") from None
        slot.target.copy_(merged)


@torch.no_grad()
def write_source(slots: Iterable[TensorSlot], index: int | None) -> None:
    """Make the target equal to one source model (``index``) or to the base (``None``)."""
    for slot in slots:
        src = slot.base if index is None else slot.sources[index]
        if src is None:
            raise ConfigError("there is no base model to write; set adapter.base")
        slot.target.copy_(src)
