"""The engine against the reference tensor functions (MethodSpec.merge).

Every method is checked on tiny tensors in float32 and bfloat16: by default (the fused CPU
kernel on whole float32 tensors), with ``chunk=0`` (whole tensors through torch operations, the
GPU code) and in many chunks (``chunk=16``: chunk offsets of the DARE stream, chunked
magnitude-index builds). ``SMALL_TENSOR`` is set to 0 where TIES should take the magnitude
index and fix-up path that large tensors take. The engine promises the reference's numbers; it
computes the same float32 operations, so the tests ask for equal tensors.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evomm.merging.slots import TensorSlot
from evomm.errors import ConfigError, IncompatibleModelsError
from evomm.merging import engine, kernels, ties_select, ties_thresholds
from evomm.merging.engine import materialize, tensor_seed
from evomm.merging.workspace import Workspace
from evomm.merging.methods import get_method
from evomm.recipe.recipe import Entry, Recipe

CHUNKS = [None, 0, 16]  # default (one chunk for tiny tensors), whole tensors, many chunks
DTYPES = [torch.float32, torch.bfloat16]
SHAPES = [(37,), (16, 33), (3, 4, 25)]

PARAMS = {
    "linear": [{"weight": [0.3, 0.9]}, {"weight": [0.3, 0.9], "normalize": False}],
    "task_arithmetic": [{"weight": [0.3, 0.9], "lambda": 1.3}, {"weight": [0.5, 0.25], "normalize": True}],
    "ties": [
        {"weight": [0.3, 0.9], "density": [0.4, 0.73]},
        {"weight": [0.7, -0.4], "density": [0.2, 1.0], "normalize": True, "lambda": 0.8},
        {"weight": [1.0, 1.0], "density": [0.05, 0.99], "normalize": False},
    ],
    "dare_ties": [
        {"weight": [0.3, 0.9], "density": [0.4, 0.73]},
        {"weight": [0.6, 0.6], "density": [0.5, 1.0], "normalize": True, "rescale": False},
    ],
    "dare_linear": [
        {"weight": [0.3, 0.9], "density": [0.4, 1.0]},
        {"weight": [0.3, -0.9], "density": [0.1, 0.3], "rescale": False, "lambda": 2.0},
    ],
    "slerp": [{"t": 0.3}, {"t": 1.0}],
}


def make_slot(shape, n_sources, dtype=torch.float32, seed=0, name="model.layers.0.mlp.up_proj.weight"):
    """A base and experts = base + noise; a few task-vector entries are exactly zero."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    sources = [base + 0.1 * torch.randn(shape, generator=g) for _ in range(n_sources)]
    sources[0].view(-1)[:5] = base.view(-1)[:5]
    base, sources = base.to(dtype), [s.to(dtype) for s in sources]
    target = torch.full(shape, float("nan"), dtype=dtype)
    return TensorSlot(name=name, group="layers.0", t=0.0, target=target, sources=sources, base=base)


def recipe_for(method, params, n_sources, seed=5):
    return Recipe(adapter="llm", method=method, models=[f"m{i}" for i in range(n_sources)], base="b",
                  entries=[Entry(params=params)], seed=seed)


def reference(slot, method, params, seed=5):
    spec = get_method(method)
    rseed = tensor_seed(seed, slot.name) if spec.random else None
    return spec.merge(slot.base, slot.sources, params, seed=rseed).to(slot.target.dtype)


def sources_for(method):
    return 1 if method == "slerp" else 2


@pytest.fixture(params=["numba", "torch"])
def kernels_path(request, monkeypatch):
    """Both CPU paths: the fused numba kernels and torch operations (EVOMM_KERNELS=torch)."""
    monkeypatch.setenv("EVOMM_KERNELS", request.param)
    return request.param


@pytest.fixture
def index_everywhere(monkeypatch):
    """TIES on tiny tensors takes the large-tensor path (magnitude index, fix-up)."""
    monkeypatch.setattr(ties_thresholds, "SMALL_TENSOR", 0)


@pytest.mark.parametrize("chunk", CHUNKS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", list(PARAMS))
def test_engine_equals_reference(method, dtype, chunk, index_everywhere, kernels_path):
    for shape in SHAPES:
        for params in PARAMS[method]:
            slot = make_slot(shape, sources_for(method), dtype)
            recipe = recipe_for(method, params, sources_for(method))
            materialize([slot], recipe, chunk=chunk)
            expected = reference(slot, method, params)
            assert torch.equal(slot.target, expected), (shape, params)
            torch.testing.assert_close(slot.target.float(), expected.float(), rtol=0, atol=1e-6)
            first = slot.target.clone()
            materialize([slot], recipe, chunk=chunk)  # second call: caches in use
            assert torch.equal(slot.target, first)


@pytest.mark.parametrize("small_tensor", [ties_thresholds.SMALL_TENSOR, 0])
def test_three_sources_and_every_chunk_size(small_tensor, monkeypatch, kernels_path):
    monkeypatch.setattr(ties_thresholds, "SMALL_TENSOR", small_tensor)
    for method in ("ties", "dare_ties", "task_arithmetic"):
        params = {"weight": [0.5, 0.2, 0.9]}
        if method != "task_arithmetic":
            params["density"] = [0.3, 0.6, 0.9]
        for chunk in (1, 7, 64, 1000, None):
            slot = make_slot((10, 10), 3)
            materialize([slot], recipe_for(method, params, 3), chunk=chunk)
            assert torch.equal(slot.target, reference(slot, method, params)), (method, chunk)


def test_a_tensor_larger_than_a_kernel_block_and_the_small_tensor_limit(kernels_path):
    """Defaults only: several kernel blocks, the magnitude index and the fix-up, bf16 chunks."""
    for dtype in DTYPES:
        for method, params in (("ties", {"weight": [0.7, 0.5], "density": [0.3, 0.8]}),
                               ("dare_ties", {"weight": [0.7, 0.5], "density": [0.3, 0.8]})):
            slot = make_slot((ties_thresholds.SMALL_TENSOR + 4099,), 2, dtype)
            materialize([slot], recipe_for(method, params, 2))
            assert torch.equal(slot.target, reference(slot, method, params)), (method, dtype)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    d0=st.floats(0.01, 1.0),
    d1=st.floats(0.01, 1.0),
    levels=st.sampled_from([0, 3]),  # 0: continuous deltas; 3: many equal magnitudes and zeros
    chunk=st.sampled_from([5, 16, 64]),
)
def test_ties_thresholds_match_kthvalue(seed, n, d0, d1, levels, chunk):
    """Exact top-k from the magnitude index + fix-up, ties and zero deltas included."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, generator=g)
    if levels:
        steps = [torch.randint(-levels, levels + 1, (n,), generator=g).float() * 0.01 for _ in range(2)]
    else:
        steps = [0.1 * torch.randn(n, generator=g) for _ in range(2)]
    slot = TensorSlot(name="x", group="g", t=0.0, target=torch.empty(n), sources=[base + s for s in steps], base=base)
    params = {"weight": [0.6, 0.8], "density": [d0, d1]}
    expected = reference(slot, "ties", params)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ties_thresholds, "SMALL_TENSOR", 0)
        for _ in ("single-use thresholds", "magnitude index"):
            materialize([slot], recipe_for("ties", params, 2), chunk=chunk)
            assert torch.equal(slot.target, expected)


WINDOW_KERNELS = [False, pytest.param(True, marks=pytest.mark.skipif(
    not kernels._avx512_target(), reason="the packed window copy needs AVX-512"))]


@pytest.mark.parametrize("packed", WINDOW_KERNELS)
@pytest.mark.parametrize("chunk", [None, 1000])
@pytest.mark.parametrize("layout", ["gaussian", "levels", "unlike the sample"])
def test_single_use_threshold_is_the_kth_largest_or_none(layout, chunk, packed, monkeypatch):
    """The sampled bracket plus one counting pass give kthvalue's value exactly; a bracket that
    misses (the sample saw none of the large entries) answers None, never a wrong value."""
    monkeypatch.setattr(kernels, "PACKED_WINDOWS", packed)
    g = torch.Generator().manual_seed(3)
    n = 50_000
    base = torch.randn(n, generator=g)
    if layout == "gaussian":
        tau = torch.randn(n, generator=g)
    elif layout == "levels":  # few distinct magnitudes: the bracket's ends coincide or hold many
        tau = torch.randint(-2, 3, (n,), generator=g).float() * 0.25
    else:  # the sample is the first 16 entries, which are far smaller than the rest
        monkeypatch.setattr(ties_select, "SAMPLE", 16)
        tau = 1.0 + torch.rand(n, generator=g)
        tau[:16] = 0.001 * torch.rand(16, generator=g)
    other = base + 0.5 * torch.randn(n, generator=g)  # a second source in the same pass
    sources = [base + tau, other]
    magnitudes = [(s - base).abs() for s in sources]
    work = Workspace(chunk)
    answers = []
    for k in (1, 7, n // 100, n // 3, n - 1, n):
        ks = [k, n - k + 1]
        found = ties_thresholds.select_thresholds(base, sources, ks, work)
        for i, (source_k, got) in enumerate(zip(ks, found)):
            if got is None:
                assert i == 0 or layout == "unlike the sample", k
                continue
            value = float(torch.topk(magnitudes[i], source_k).values[-1])
            greater, equal = int((magnitudes[i] > value).sum()), int((magnitudes[i] == value).sum())
            assert got == (value, greater, equal), (k, i)
        answers.append(found[0])
    if layout == "unlike the sample":
        assert None in answers  # the window held far more than the sample suggested
    else:
        assert None not in answers


def test_radix_selections_match_a_sort():
    """kth_largest and kth_largest_pair against a sort: spread magnitudes, few distinct levels
    (both ranks in one bucket), all equal, and values over 60 decades (many rounds)."""
    g = np.random.default_rng(0)
    for trial in range(120):
        n = int(g.integers(1, 3000))
        values = [np.abs(g.standard_normal(n)), g.integers(0, 5, n) * 0.25, np.full(n, 0.5),
                  np.abs(g.standard_normal(n) * 10.0 ** g.integers(-30, 30, n))][trial % 4].astype(np.float32)
        first, second = sorted(int(r) for r in g.integers(1, n + 1, 2))
        descending = np.sort(values)[::-1]
        assert kernels.kth_largest_pair(values, first, second) == (descending[first - 1], descending[second - 1])
        assert kernels.kth_largest(values, second) == descending[second - 1]


def test_window_kernels_count_and_copy_the_same():
    """Both copies of the window pass (AVX-512's packed one, the portable listed one) give the
    same counts and the same window entries in the same order: a last block that is not a
    multiple of 16, ties at both ends, a zero lower end, an empty window, and a window too wide
    for its room (abandoned, the same way by both)."""
    if not kernels._avx512_target():
        pytest.skip("the packed window copy needs AVX-512")
    g = np.random.default_rng(5)
    n = 3 * kernels.BLOCK + 903
    base = g.standard_normal(n).astype(np.float32)
    levels = (g.integers(-3, 4, n) * 0.125).astype(np.float32)  # many equal magnitudes
    # the unchanged source comes first, so that in the last block the values buffer still
    # holds another source's magnitudes beyond the block's end
    sources = (base.copy(), base + g.standard_normal(n).astype(np.float32), base + levels, base + levels,
               base + g.standard_normal(n).astype(np.float32))
    lo = np.float32([0.0, 0.5, 0.125, 0.0, 0.01])
    hi = np.float32([1.0, 0.9, 0.375, 0.25, 3.0])
    results = []
    for kernel in (kernels._windows_listed, kernels._windows_packed):
        room = 1500  # source 4's window holds nearly everything: abandoned after two blocks
        found = np.full((len(sources), room + kernels.BLOCK), -1.0, np.float32)
        found_n = np.zeros(len(sources), np.int64)
        counts = np.zeros((len(sources), 3), np.int64)
        kernel(base, sources, lo, hi, counts, found, found_n)
        results.append((counts, found_n, [found[i, :min(c, room)] for i, c in enumerate(found_n)]))
    (counts, found_n, found), (counts2, found_n2, found2) = results
    assert np.array_equal(counts, counts2) and np.array_equal(found_n, found_n2)
    assert all(np.array_equal(a, b) for a, b in zip(found, found2))
    for i in range(4):  # the windows that fit: exactly the entries strictly inside, in order
        tau = np.abs(sources[i] - base)
        assert np.array_equal(found[i], tau[(tau > lo[i]) & (tau < hi[i])])
        assert list(counts[i]) == [(tau > hi[i]).sum(), (tau == hi[i]).sum(), (tau == lo[i]).sum()]
    assert found_n[0] == 0 and counts[0, 2] == n  # tau == 0 everywhere: all at the lower end
    assert found_n[4] > room  # abandoned: wider than the room


def test_sparse_task_vector_keeps_all_when_the_threshold_is_zero(monkeypatch):
    """Most entries unchanged: the k-th largest |tau| is 0, so every entry is kept."""
    slot = make_slot((400,), 2)
    slot.sources[1] = slot.base.clone()
    slot.sources[1][:10] += 1.0
    params = {"weight": [1.0, 1.0], "density": [0.5, 0.5]}
    materialize([slot], recipe_for("ties", params, 2), chunk=32)
    assert torch.equal(slot.target, reference(slot, "ties", params))
    monkeypatch.setattr(ties_thresholds, "SMALL_TENSOR", 0)
    materialize([slot], recipe_for("ties", params, 2), chunk=32)
    assert torch.equal(slot.target, reference(slot, "ties", params))


def test_dare_masks_depend_on_seed_and_tensor_name():
    params = {"weight": [1.0, 1.0], "density": [0.5, 0.5]}
    a, b = make_slot((200,), 2, name="a"), make_slot((200,), 2, name="b")
    materialize([a, b], recipe_for("dare_linear", params, 2, seed=1), chunk=16)
    assert not torch.equal(a.target, b.target)  # same inputs, different names: different masks
    first = a.target.clone()
    materialize([a], recipe_for("dare_linear", params, 2, seed=2), chunk=16)
    assert not torch.equal(a.target, first)
    materialize([a], recipe_for("dare_linear", params, 2, seed=1), chunk=16)
    assert torch.equal(a.target, first)


def test_cache_follows_changed_sources(index_everywhere):
    params = {"weight": [0.5, 0.5], "density": [0.3, 0.6]}
    for method in ("ties", "slerp", "dare_ties"):
        n = sources_for(method)
        p = {"t": 0.4} if method == "slerp" else params
        slot = make_slot((300,), n)
        materialize([slot], recipe_for(method, p, n), chunk=32)
        slot.sources[0].mul_(-2.0)  # in place: the cached facts are stale now
        materialize([slot], recipe_for(method, p, n), chunk=32)
        assert torch.equal(slot.target, reference(slot, method, p)), method


def test_strided_target_and_sources(index_everywhere):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(9, 12, generator=g)
    sources = [(base + 0.1 * torch.randn(9, 12, generator=g)).t() for _ in range(2)]  # [12, 9] strided
    target = torch.zeros(9, 12).t()
    slot = TensorSlot(name="w", group="g", t=0.0, target=target, sources=sources, base=base.t())
    params = {"weight": [0.4, 0.7], "density": [0.5, 0.8]}
    materialize([slot], recipe_for("ties", params, 2), chunk=16)
    assert torch.equal(target, reference(slot, "ties", params))


def test_in_place_and_no_new_target_tensors():
    slot = make_slot((64, 8), 2)
    ptr = slot.target.data_ptr()
    materialize([slot], recipe_for("task_arithmetic", {"weight": [1.0, 1.0]}, 2))
    assert slot.target.data_ptr() == ptr
    assert not torch.isnan(slot.target).any()


def test_methods_without_a_kernel_use_the_reference():
    slot = make_slot((6, 10), 2)
    params = {"weight": [0.5, 0.5], "density": [0.8, 0.6], "gamma": [0.1, 0.1]}
    materialize([slot], recipe_for("breadcrumbs", params, 2))
    assert torch.equal(slot.target, reference(slot, "breadcrumbs", params))
    ties_rescaled = {"weight": [0.5, 0.5], "density": [0.3, 0.6], "rescale": True}
    materialize([slot], recipe_for("ties", ties_rescaled, 2))
    assert torch.equal(slot.target, reference(slot, "ties", ties_rescaled))


def test_errors_name_the_tensor():
    slot = make_slot((5,), 2)
    with pytest.raises(ConfigError, match=r"density.*out of range.*tensor model\.layers\.0"):
        materialize([slot], recipe_for("ties", {"weight": [1, 1], "density": [1.5, 0.5]}, 2))
    slot.base = None
    with pytest.raises(ConfigError, match="needs a base model"):
        materialize([slot], recipe_for("ties", {"weight": [1, 1]}, 2))
    odd = make_slot((5,), 2)
    odd.sources[1] = torch.zeros(6)
    with pytest.raises(IncompatibleModelsError, match="different shapes"):
        materialize([odd], recipe_for("linear", {"weight": [1, 1]}, 2))


def test_llm_adapter_device_map_passes_through(monkeypatch):
    """adapter.device_map reaches from_pretrained (for the target); the engine writes in place."""
    from transformers import AutoModelForCausalLM

    from evomm.adapters.llm import LLMAdapter
    from evomm.builtin import resolve

    calls = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, ref, *args, **kwargs):
        calls.append(kwargs.get("device_map"))
        return real(cls, ref, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    models = [resolve("builtin:tiny-llm-a"), resolve("builtin:tiny-llm-b")]
    adapter = LLMAdapter(models=models, base=resolve("builtin:tiny-llm-base"), device_map={"": "cpu"})
    assert calls == [{"": "cpu"}, None, None]  # the target only; sources stay plain CPU tensors
    params = {"weight": [0.3, 0.9], "density": [0.4, 0.73]}
    recipe = Recipe(adapter="llm", method="ties", models=models, base="b", entries=[Entry(params=params)])
    materialize(adapter.slots(), recipe)
    for slot in adapter.slots():
        assert torch.equal(slot.target, reference(slot, "ties", params))


def test_all_zero_deltas_with_negative_weights(index_everywhere):
    """Sums of -0 (every delta zero) elect nothing, as the reference does."""
    for chunk in (None, 8):
        slot = make_slot((50,), 2)
        slot.sources = [slot.base.clone(), slot.base.clone()]
        slot.sources[1][:3] += 0.5
        params = {"weight": [-0.5, -0.3], "density": [0.5, 1.0], "normalize": True}
        materialize([slot], recipe_for("ties", params, 2), chunk=chunk)
        assert torch.equal(slot.target, reference(slot, "ties", params))


def test_a_stale_magnitude_index_is_an_error_not_a_wrong_merge(index_everywhere):
    """Writing through .data bypasses the version counter the cache watches: the fused pass
    then finds other entries between the edges than the index counted, and says so."""
    slot = make_slot((4000,), 2)
    params = {"weight": [0.5, 0.5], "density": [0.3, 0.6]}
    materialize([slot], recipe_for("ties", params, 2))  # single-use thresholds
    materialize([slot], recipe_for("ties", params, 2))  # the second merge builds the index
    slot.sources[0].data.mul_(3.0)
    with pytest.raises(RuntimeError, match="magnitude index out of date"):
        materialize([slot], recipe_for("ties", params, 2))


def test_fused_kernels_copy_only_chunks_of_non_float32_inputs():
    """float32 inputs go to the kernel whole; a bf16 one (merge or index build) in chunks."""
    n = engine.CPU_CHUNK * 3
    f32, bf16 = torch.zeros(n), torch.zeros(n, dtype=torch.bfloat16)
    assert Workspace(None).fused_chunk(n, [f32, f32]) == n
    assert Workspace(None).fused_chunk(n, [f32, bf16]) == engine.CPU_CHUNK
    assert Workspace(16).fused_chunk(n, [f32, f32]) == 16


def bf16_slot(shape, n_sources, seed=0, scale=1e-3):
    """bf16 experts = base + scale * randn, as fine-tunes differ: their task vectors take few
    distinct values, so many entries tie at any TIES threshold."""
    g = torch.Generator().manual_seed(seed)
    base = (0.02 * torch.randn(shape, generator=g)).bfloat16()
    sources = [(base.float() + scale * torch.randn(shape, generator=g)).bfloat16() for _ in range(n_sources)]
    return TensorSlot(name="model.layers.0.mlp.up_proj.weight", group="layers.0", t=0.0,
                      target=torch.empty(shape, dtype=torch.bfloat16), sources=sources, base=base)


@pytest.mark.parametrize("tie_order", ["index", "mergekit"])
@pytest.mark.parametrize("small_tensor", [1 << 20, 0])  # kthvalue; sampled thresholds and index
def test_ties_on_bf16_checkpoints_keeps_the_references_entries(small_tensor, tie_order, kernels_path, monkeypatch):
    """Realistic shapes with many tied magnitudes: exactly k entries per source, the reference's
    tie order, for the first merge (single-use thresholds), the second (the magnitude index) and
    a third at other densities (cached tie orders), bf16 and float32."""
    monkeypatch.setattr(ties_thresholds, "SMALL_TENSOR", small_tensor)
    slot = bf16_slot((256, 688), 3)
    magnitudes = (slot.sources[0].float() - slot.base.float()).abs()
    k = int(0.5 * magnitudes.numel())
    assert int((magnitudes >= magnitudes.view(-1).kthvalue(magnitudes.numel() - k + 1).values).sum()) > k * 1.01
    for density in ([0.5, 0.3, 0.9], [0.5, 0.3, 0.9], [0.2, 0.71, 0.45]):
        params = {"weight": [0.5, 0.3, 0.7], "density": density, "tie_order": tie_order}
        materialize([slot], recipe_for("ties", params, 3))
        assert torch.equal(slot.target, reference(slot, "ties", params)), density
    as_f32 = TensorSlot(slot.name, slot.group, 0.0, torch.empty(slot.target.shape),
                        [s.float() for s in slot.sources], slot.base.float())
    materialize([as_f32], recipe_for("ties", params, 3))
    assert torch.equal(as_f32.target, reference(as_f32, "ties", params))


NO_NUMBA = """
import json, sys
sys.modules["numba"] = None  # as if it were not installed: importing it raises ImportError
import torch
from evomm.merging import backend
from evomm.merging.engine import materialize
from evomm.recipe.recipe import Entry, Recipe
from evomm.merging.slots import TensorSlot

assert not backend.fast_kernels()
out = {}
for method, settings in json.loads(sys.argv[1]).items():
    for j, params in enumerate(settings):
        m = 1 if method == "slerp" else 2
        g = torch.Generator().manual_seed(0)
        base = (0.02 * torch.randn(64, 300, generator=g)).bfloat16()
        sources = [(base.float() + 1e-3 * torch.randn(64, 300, generator=g)).bfloat16() for _ in range(m)]
        slot = TensorSlot("w", "layers.0", 0.0, torch.empty(64, 300, dtype=torch.bfloat16), sources, base)
        recipe = Recipe(adapter="llm", method=method, models=[f"m{i}" for i in range(m)], base="b",
                        entries=[Entry(params=params)], seed=5)
        materialize([slot], recipe)
        out[f"{method}{j}"] = slot.target
assert "evomm.merging.kernels" not in sys.modules
torch.save(out, sys.argv[2])
"""


def test_without_numba_the_torch_path_merges_the_same(tmp_path):
    """numba is optional: with it missing (sys.modules['numba'] = None) every method still
    merges, through torch operations, to the tensors the fused kernels give."""
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", NO_NUMBA, json.dumps(PARAMS), str(tmp_path / "out.pt")], check=True)
    theirs = torch.load(tmp_path / "out.pt")
    for method, settings in PARAMS.items():
        for j, params in enumerate(settings):
            slot = bf16_slot((64, 300), sources_for(method))
            slot.name = "w"
            materialize([slot], recipe_for(method, params, sources_for(method)))
            assert torch.equal(theirs[f"{method}{j}"], slot.target), (method, params)


def test_kernel_choice_is_checked(monkeypatch):
    from evomm.merging import backend

    monkeypatch.setenv("EVOMM_KERNELS", "cuda")
    with pytest.raises(ConfigError, match="EVOMM_KERNELS='cuda' is not one of auto, numba, torch"):
        materialize([make_slot((5,), 2)], recipe_for("linear", {"weight": [1, 1]}, 2))
    monkeypatch.setenv("EVOMM_KERNELS", "numba")
    monkeypatch.setattr(backend, "numba_available", lambda: False)
    with pytest.raises(ConfigError, match="numba is not installed"):
        materialize([make_slot((5,), 2)], recipe_for("linear", {"weight": [1, 1]}, 2))
