"""The streamed merge's numpy trims and merges equal the engine's on torch tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from evomm.merging import stream_arrays, ties_select
from evomm.merging.sparsify import magnitude_threshold
from evomm.merging.topk import exact_trim, top_k


def tensors(layout: str, n: int = 200_000, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    if layout == "levels":  # few distinct magnitudes: every threshold is a tie
        tau = torch.randint(-3, 4, (n,), generator=g).float() * 0.125
    elif layout == "bf16":  # base + a small change on the bf16 grid: ties at many thresholds
        base = base.bfloat16().float()
        tau = (base + 1e-3 * torch.randn(n, generator=g)).bfloat16().float() - base
    else:
        tau = torch.randn(n, generator=g)
    return base, [base + tau, base + 0.5 * torch.randn(n, generator=g)]


@pytest.mark.parametrize("layout", ["gaussian", "levels", "bf16"])
@pytest.mark.parametrize("tie_order", ["index", "mergekit"])
@pytest.mark.parametrize("small", [False, True])
def test_one_shot_trims_equal_the_engines(layout, tie_order, small, monkeypatch):
    """Through the sample window (and its misses: a 16-entry sample) and straight from |tau|."""
    if small:
        monkeypatch.setattr(stream_arrays, "SMALL_TENSOR", 1 << 30)
    else:
        monkeypatch.setattr(ties_select, "SAMPLE", 16)  # brackets that often miss
    base, sources = tensors(layout)
    n = base.numel()
    for density in (0.001, 0.1, 0.37, 0.5, 0.999):
        ks = {i: top_k(density, n) for i in range(2)}
        ours = stream_arrays.one_shot_trims(base.numpy(), [s.numpy() for s in sources], ks, tie_order)
        for i, k in ks.items():
            magnitudes = (sources[i] - base).abs()
            expected = exact_trim(magnitudes, k, float(magnitude_threshold(magnitudes, k)), tie_order=tie_order)
            trim = ours[i]
            if isinstance(trim, stream_arrays.Tied):  # listed by the merge kernel: the first k - greater at value
                assert tie_order == "index"
                kept = (magnitudes > trim.value).numpy()
                assert kept.sum() == trim.greater and (magnitudes == trim.value).sum() == trim.equal
                kept[np.flatnonzero((magnitudes == trim.value).numpy())[: k - trim.greater]] = True
            else:
                kept = (magnitudes >= trim.threshold).numpy()
                if trim.ties is not None:
                    kept[trim.ties] = True
            theirs = (magnitudes >= expected.threshold).numpy()
            if expected.ties is not None:
                theirs[expected.ties] = True
            assert np.array_equal(kept, theirs), (density, i)
            # exactly k, unless the k-th largest is 0 (kept or not, a zero task-vector entry is 0)
            assert kept.sum() == k or float(magnitude_threshold(magnitudes, k)) == 0.0


@pytest.mark.parametrize("layout", ["gaussian", "levels", "bf16"])
@pytest.mark.parametrize("tie_order", ["index", "mergekit"])
def test_merge_arrays_equals_the_reference(layout, tie_order):
    """The whole one-shot TIES merge on arrays (ties listed by the kernel's pass in index order,
    replayed for mergekit's) gives the reference method's float32 bits."""
    from evomm.merging.methods import get_method

    base, sources = tensors(layout, seed=1)
    spec = get_method("ties")
    for density in ([0.3, 0.8], [0.05, 1.0], [0.999, 0.5]):
        params = {"weight": [0.7, 0.4], "density": density, "tie_order": tie_order}
        expected = spec.merge(base, sources, params)
        ours = stream_arrays.merge_arrays("ties", spec.resolved(params, 2), None, base.numpy(),
                                          [s.numpy() for s in sources])
        assert np.array_equal(ours.view(np.uint32), expected.numpy().view(np.uint32)), density
