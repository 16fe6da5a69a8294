"""The random stream of DARE and DELLA: counter-based, so any slice of it can be drawn on its own.

Entry j of a source's stream is a hash of (the source's key, j): the same numbers on every
device, in every chunking and in any order of drawing. ``evomm.merging.kernels.uniform24``
computes the same numbers inside the fused CPU kernels.
"""

from __future__ import annotations

import math
import zlib

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import Tensor

_LOW32 = 0xFFFFFFFF
_LOWBIAS32 = (0x7FEB352D, 0x846CA68B)  # lowbias32's multipliers
_GOLDEN32 = 0x9E3779B9


def stream_key(seed: int, source: int) -> int:
    """The 32-bit key of source ``source``'s stream for a random merge seeded with ``seed``.

    splitmix64 of the seed and the source index: every source gets an unrelated stream, and a
    source's mask never depends on another source's parameters.
    """
    z = (int(seed) + (source + 1) * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) >> 32


def tensor_seed(recipe_seed: int, tensor_name: str) -> int:
    """A per-tensor seed that depends only on the recipe seed and the tensor's name.

    crc32 (not Python's salted hash) keeps it stable across processes and runs, so a recipe
    rebuilds the same DARE masks anywhere.
    """
    return (int(recipe_seed) * 1_000_003 + zlib.crc32(tensor_name.encode())) % (2**62)


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) without int64 overflow (c = c' + 2^31)."""
    if c < 2**31:
        return (x * c) & _LOW32
    return (x * (c - 2**31) + ((x & 1) << 31)) & _LOW32


def uniform24(key: int, numel: int, device: torch.device | str = "cpu", start: int = 0) -> Tensor:
    """24 random bits (int64 in [0, 2^24)) for positions start .. start+numel-1 of a stream.

    Entry j is lowbias32(lo32(j) ^ key ^ hi32(j) * 0x9E3779B9) >> 8: a hash of the position, so
    the numbers are the same on every device, in every chunking and in any order of drawing.
    ``evomm.merging.kernels.uniform24`` computes the same numbers in the fused CPU kernels.
    """
    import torch  # here only: the fused kernels' callers use stream_key and keep_limit without torch

    index = torch.arange(start, start + numel, dtype=torch.int64, device=device)
    x = (index & _LOW32) ^ key ^ _mul32(index >> 32, _GOLDEN32)
    x = x ^ (x >> 16)
    x = _mul32(x, _LOWBIAS32[0])
    x = x ^ (x >> 15)
    x = _mul32(x, _LOWBIAS32[1])
    x = x ^ (x >> 16)
    return x >> 8


def keep_limit(density: float) -> int:
    """DARE keeps an entry where its 24 random bits are below this: u < density for
    u = bits / 2^24 compared in float32, as ``torch.rand(...) < density`` would."""
    return min(2**24, math.ceil(float(np.float32(density)) * 2.0**24))

