"""Merge methods: identities, hand-checked examples, DARE randomness, dtypes and errors."""

from __future__ import annotations

import math

import numpy as np

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from evomm.errors import ConfigError, IncompatibleModelsError, UnknownNameError
from evomm.merging.methods import METHODS, MethodSpec, get_method
from evomm.merging.random_stream import keep_limit, stream_key, uniform24
from evomm.merging.sparsify import trim_magnitude, trim_outliers

FAST = settings(max_examples=25, deadline=None)
REQUIRED = ["linear", "task_arithmetic", "ties", "dare_ties", "dare_linear", "slerp"]


# ---- helpers ----------------------------------------------------------------------------------
def n_sources_for(spec: MethodSpec, wanted: int = 2) -> int:
    if spec.exact_sources is not None:
        return spec.exact_sources
    return max(wanted, spec.min_sources)


def params_for(spec: MethodSpec, n: int, **overrides) -> dict:
    """Valid parameters: the required ones set to plain values, optional ones left to defaults."""
    params: dict = {}
    if "weight" in spec.tensor_params:
        params["weight"] = [1.0 / n + 0.1 * i for i in range(n)]
    if "density" in spec.tensor_params:
        params["density"] = [0.6] * n
    if "t" in spec.global_params:
        params["t"] = 0.3
    params.update(overrides)
    return params


def tensors(seed: int, n: int, shape=(6, 5), scale: float = 0.1):
    """A base and n sources = base + noise (float32)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g)
    return base, [base + scale * torch.randn(shape, generator=g) for _ in range(n)]


shapes = st.sampled_from([(7,), (3, 4), (2, 3, 4), (1,), (5, 1)])
seeds = st.integers(0, 2**31 - 1)


# ---- registry -------------------------------------------------------------------------------
def test_required_methods_are_registered():
    for name in REQUIRED:
        assert get_method(name).name == name


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownNameError) as info:
        get_method("tie")
    message = str(info.value)
    assert "tie" in message
    for name in REQUIRED:
        assert name in message
    assert isinstance(info.value, ConfigError)


def test_mergekit_defaults():
    """normalize / rescale defaults follow mergekit, so a YAML without them means the same."""
    assert get_method("linear").global_params["normalize"] is True
    assert get_method("task_arithmetic").global_params["normalize"] is False
    assert get_method("ties").global_params == {"normalize": True, "lambda": 1.0, "rescale": False, "tie_order": "index"}
    for name in ("dare_ties", "dare_linear"):
        defaults = {"normalize": False, "lambda": 1.0, "rescale": True}
        assert get_method(name).global_params == defaults
        assert get_method(name).random
    assert get_method("ties").tensor_params == {"weight": None, "density": 1.0}
    assert get_method("slerp").exact_sources == 1 and get_method("slerp").needs_base
    assert not get_method("linear").needs_base


# ---- identities -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS.names())
@FAST
@given(shape=shapes, seed=seeds)
def test_merging_a_model_with_itself_returns_it(name, shape, seed):
    spec = get_method(name)
    n = n_sources_for(spec, 3)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    out = spec.merge(x, [x.clone() for _ in range(n)], params_for(spec, n), seed=seed)
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", METHODS.names())
def test_inputs_are_never_modified_and_output_is_fresh(name):
    spec = get_method(name)
    n = n_sources_for(spec)
    base, sources = tensors(1, n)
    before = [base.clone()] + [s.clone() for s in sources]
    out = spec.merge(base, sources, params_for(spec, n), seed=3)
    for original, now in zip(before, [base, *sources]):
        assert torch.equal(original, now)
        assert out.data_ptr() != now.data_ptr()


# ---- linear -----------------------------------------------------------------------------------
@FAST
@given(seed=seeds, scale=st.floats(0.1, 10.0))
def test_linear_normalized_is_invariant_to_weight_scale(seed, scale):
    _, sources = tensors(seed, 3, scale=1.0)
    linear = get_method("linear")
    weights = [0.2, 0.5, 0.9]
    a = linear.merge(None, sources, {"weight": weights})
    b = linear.merge(None, sources, {"weight": [w * scale for w in weights]})
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    expected = sum(w * s for w, s in zip(weights, sources)) / sum(weights)
    torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)


def test_linear_unnormalized_is_the_weighted_sum():
    _, sources = tensors(2, 2, scale=1.0)
    out = get_method("linear").merge(None, sources, {"weight": [0.7, 0.6], "normalize": False})
    torch.testing.assert_close(out, 0.7 * sources[0] + 0.6 * sources[1])
    # weights summing to 1: normalising changes nothing
    a = get_method("linear").merge(None, sources, {"weight": [0.25, 0.75], "normalize": False})
    b = get_method("linear").merge(None, sources, {"weight": [0.25, 0.75]})
    torch.testing.assert_close(a, b)


def test_linear_ignores_the_base():
    base, sources = tensors(3, 2)
    linear = get_method("linear")
    params = {"weight": [1.0, 2.0]}
    assert torch.equal(linear.merge(base, sources, params), linear.merge(None, sources, params))


# ---- task arithmetic ------------------------------------------------------------------------
@FAST
@given(
    seed=seeds,
    weights=st.lists(st.floats(-2.0, 2.0), min_size=1, max_size=4),
    lam=st.floats(-3.0, 3.0),
    normalize=st.booleans(),
)
def test_task_arithmetic_formula(seed, weights, lam, normalize):
    base, sources = tensors(seed, len(weights))
    params = {"weight": weights, "lambda": lam, "normalize": normalize}
    out = get_method("task_arithmetic").merge(base, sources, params)
    total = sum(w * (s - base) for w, s in zip(weights, sources))
    divisor = sum(weights)
    if normalize and abs(divisor) >= 1e-8:
        total = total / divisor
    torch.testing.assert_close(out, base + lam * total, rtol=1e-4, atol=1e-5)


def test_task_arithmetic_lambda_scales_the_delta():
    base, sources = tensors(4, 2)
    ta = get_method("task_arithmetic")
    one = ta.merge(base, sources, {"weight": [0.3, 0.9]})
    scaled = ta.merge(base, sources, {"weight": [0.3, 0.9], "lambda": 2.5})
    torch.testing.assert_close(scaled - base, 2.5 * (one - base), rtol=1e-5, atol=1e-6)


# ---- TIES -------------------------------------------------------------------------------------
@FAST
@given(seed=seeds, weight=st.floats(0.1, 3.0) | st.floats(-3.0, -0.1), lam=st.floats(0.1, 2.0))
def test_ties_with_density_one_and_one_expert_is_task_arithmetic(seed, weight, lam):
    """One expert: every nonzero entry agrees with the elected sign, nothing is trimmed.

    normalize=False: both are base + lambda * w * tau. normalize=True: ties divides by w where
    the entry is kept and task_arithmetic divides by sum(w) = w, so both are base + lambda * tau.
    """
    base, sources = tensors(seed, 1)
    for normalize in (False, True):
        params = {"weight": [weight], "lambda": lam, "normalize": normalize}
        ties = get_method("ties").merge(base, sources, {**params, "density": [1.0]})
        ta = get_method("task_arithmetic").merge(base, sources, params)
        torch.testing.assert_close(ties, ta, rtol=1e-5, atol=1e-6)


@FAST
@given(
    values=st.lists(
        st.floats(-100, 100, width=32).filter(lambda v: abs(v) > 1e-6),
        min_size=1,
        max_size=60,
        unique_by=abs,  # distinct magnitudes (exact: the values are float32 already)
    ),
    density=st.floats(0.01, 1.0),
)
def test_trim_keeps_exactly_the_top_k_magnitudes(values, density):
    delta = torch.tensor(values, dtype=torch.float32)
    kept = trim_magnitude(delta, density)
    n = len(values)
    k = n if density >= 1 else max(1, int(density * n))
    top = set(torch.argsort(delta.abs(), descending=True)[:k].tolist())
    assert set(torch.nonzero(kept).flatten().tolist()) == top
    assert torch.equal(kept[list(top)], delta[list(top)])  # kept values are not changed


def mergekit_sparsify():
    return pytest.importorskip("mergekit.sparsify", reason="mergekit is not installed")


def tied_delta(seed: int, n: int, levels: int) -> torch.Tensor:
    """A task vector of few distinct magnitudes (as bf16 checkpoints give): many ties."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-levels, levels + 1, (n,), generator=g).float() * 0.125


def test_trim_keeps_k_entries_and_breaks_ties_by_the_tie_order():
    delta = torch.tensor([3.0, -2.0, 2.0, 1.0])
    assert trim_magnitude(delta, 0.5).tolist() == [3.0, -2.0, 0.0, 0.0]  # k = 2; |2| occurs twice
    for n, levels in ((100, 3), (5000, 4), (70_000, 20)):
        delta = tied_delta(n, n, levels)
        for density in (0.01, 0.3, 0.5, 0.77):
            k = max(1, int(density * n))
            for tie_order, stable in (("index", True), ("mergekit", False)):  # mergekit: torch's CPU argsort
                order = torch.argsort(delta.abs(), descending=True, stable=stable)
                expected = torch.zeros_like(delta)
                expected[order[:k]] = delta[order[:k]]
                kept = trim_magnitude(delta, density, tie_order=tie_order)
                assert torch.equal(kept, expected), (n, levels, density, tie_order)


@pytest.mark.parametrize("kernels", ["numba", "torch"])
@pytest.mark.parametrize("shape", [(37,), (64, 129), (3, 40, 50)])
def test_trims_equal_mergekits_sparsify_on_tied_magnitudes(kernels, shape, monkeypatch):
    """mergekit's own magnitude and magnitude_outliers on bf16-like task vectors (many ties)."""
    sparsify = mergekit_sparsify()
    monkeypatch.setenv("EVOMM_KERNELS", kernels)
    g = torch.Generator().manual_seed(len(shape))
    base = torch.randn(shape, generator=g).bfloat16()
    source = (base.float() + 0.01 * torch.randn(shape, generator=g)).bfloat16()
    delta = source.float() - base.float()
    for density in (0.1, 0.5, 0.9):
        for rescale in (False, True):
            norm = sparsify.RescaleNorm.l1 if rescale else None
            assert torch.equal(trim_magnitude(delta, density, rescale, "mergekit"),
                               sparsify.magnitude(delta, density, rescale_norm=norm)), (density, rescale)
        for gamma in (0.0, 0.05, 0.3):
            assert torch.equal(trim_outliers(delta, density, gamma, tie_order="mergekit"),
                               sparsify.magnitude_outliers(delta, density, gamma=gamma)), (density, gamma)
            # index order: the same entries as a stable ascending sort keeps
            n = delta.numel()
            keep, n_top = int(density * n), int(gamma * n)
            start = max(0, n - keep - n_top)
            order = torch.sort(delta.abs().reshape(-1), stable=True).indices[start:start + keep]
            expected = torch.zeros(n)
            expected[order] = delta.reshape(-1)[order]
            assert torch.equal(trim_outliers(delta, density, gamma), expected.reshape(shape)), (density, gamma)


@pytest.mark.parametrize("shape", [(50,), (16, 40)])
def test_della_keep_probabilities_are_mergekits(shape, monkeypatch):
    """The deterministic half of DELLA: the keep probability of every entry, tied magnitudes
    included, equals what mergekit's della_magprune hands to torch.bernoulli."""
    sparsify = mergekit_sparsify()
    from evomm.merging.sparsify import keep_probabilities

    delta = tied_delta(1, math.prod(shape), 5).reshape(shape)
    seen = []
    real = torch.bernoulli
    monkeypatch.setattr(sparsify.torch, "bernoulli", lambda p: seen.append(p.clone()) or real(p))
    sparsify.della_magprune(delta, 0.4, 0.15)
    rows = delta.reshape(1, -1) if delta.dim() == 1 else delta
    assert torch.equal(keep_probabilities(rows, 0.4, 0.15), seen[0])


def test_tie_order_is_checked():
    spec = get_method("ties")
    spec.check_params({"weight": [1.0], "tie_order": "mergekit"}, 1)
    with pytest.raises(ConfigError, match="'tie_order' must be one of index, mergekit, got 'stable'"):
        spec.check_params({"weight": [1.0], "tie_order": "stable"}, 1)


def test_a_della_recipe_with_its_own_epsilon_passes_the_recipe_check():
    """mergekit's della example: density 0.1 with epsilon 0.05 is valid; each value was
    checked alone and the density was paired with the default epsilon 0.15."""
    from evomm.recipe.recipe import Entry, Recipe, check_recipe

    params = {"weight": [1.0, [0, 0.3, 0.7, 1]], "density": [[1, 0.7, 0.1], 0.5], "epsilon": [0.05, 0.05]}
    check_recipe(Recipe(adapter="llm", method="della", models=["a", "b"], base="c", entries=[Entry(params=params)]))
    spec = get_method("della")
    spec.check_params({"weight": [1.0, 1.0], "density": [0.1, 0.5], "epsilon": [0.05, 0.05]}, 2)
    with pytest.raises(ConfigError, match=r"density 0\.1 \+/- epsilon 0\.15"):  # the default, at merge time
        spec.merge(torch.zeros(4), [torch.ones(4), torch.ones(4)], {"weight": [1.0, 1.0], "density": [0.1, 0.5]}, seed=0)


def test_sorted_slice_is_torchs_cpu_sort_in_any_range():
    """The replayed sort against torch.sort on the CPU: ties, NaN, any range, both directions."""
    from evomm.merging.topk import sorted_slice

    g = np.random.default_rng(0)
    for trial in range(150):
        n = int(g.choice([1, 2, 16, 17, 40, 1000, 20_000]))
        values = (g.integers(0, [1, 2, 3, 50, 10**6][trial % 5], n) * 0.5).astype(np.float32)
        if trial % 7 == 0:
            values[g.integers(0, n, max(1, n // 30))] = np.nan
        descending = bool(trial % 2)
        start = int(g.integers(0, n + 1))
        stop = int(g.integers(start, n + 1))
        order = torch.sort(torch.from_numpy(values), descending=descending).indices.numpy()
        assert np.array_equal(sorted_slice(values, descending, start, stop), order[start:stop]), trial


def test_the_replayed_heap_sort_sorts():
    """Past its depth limit std::sort heap-sorts a partition; forced here with a depth of 0."""
    pytest.importorskip("numba")
    from evomm.merging.sort_kernels import sort_range

    values = (np.random.default_rng(1).integers(0, 7, 500) * 0.5).astype(np.float32)
    for descending in (True, False):
        vals, idx = values.copy(), np.arange(values.size, dtype=np.int64)
        sort_range(vals, idx, descending, 0, values.size, 0)
        expected = np.sort(values)[::-1] if descending else np.sort(values)
        assert np.array_equal(vals, expected) and np.array_equal(values[idx], vals)
        assert np.array_equal(np.sort(idx), np.arange(values.size))


def test_ties_rescale_matches_the_l1_norm_of_the_untrimmed_delta():
    delta = torch.tensor([4.0, -1.0, 0.5, -3.0])
    kept = trim_magnitude(delta, 0.5, rescale=True)  # keeps 4 and -3, L1 7 -> 8.5
    torch.testing.assert_close(kept, torch.tensor([4.0, 0.0, 0.0, -3.0]) * (8.5 / 7.0))


def test_ties_sign_election_by_hand():
    base = torch.zeros(4)
    theta1 = torch.tensor([1.0, -2.0, 3.0, 0.0])
    theta2 = torch.tensor([-3.0, 1.0, 1.0, 2.0])
    ties = get_method("ties")
    # weights 1, 1: sum of weighted deltas [-2, -1, 4, 2] -> majority [-, -, +, +].
    # e0 keeps -3 (theta2), e1 keeps -2 (theta1), e2 keeps both (3 + 1) / 2 = 2,
    # e3 keeps theta2's 2 only (theta1's 0 has sign 0 and is never counted, divisor 1).
    out = ties.merge(base, [theta1, theta2], {"weight": [1.0, 1.0]})
    assert out.tolist() == [-3.0, -2.0, 2.0, 2.0]
    # weights 0.5, 2: weighted deltas [0.5, -1, 1.5, 0] and [-6, 2, 2, 4], sum [-5.5, 1, 3.5, 4]
    # -> majority [-, +, +, +]. e0: -6 / 2 = -3; e1: 2 / 2 = 1; e2: (1.5 + 2) / 2.5 = 1.4;
    # e3: 4 / 2 = 2. Without normalize the kept sums: [-6, 2, 3.5, 4].
    out = ties.merge(base, [theta1, theta2], {"weight": [0.5, 2.0]})
    torch.testing.assert_close(out, torch.tensor([-3.0, 1.0, 1.4, 2.0]))
    out = ties.merge(base, [theta1, theta2], {"weight": [0.5, 2.0], "normalize": False})
    torch.testing.assert_close(out, torch.tensor([-6.0, 2.0, 3.5, 4.0]))


def test_ties_elects_by_sum_not_by_count_trims_and_adds_the_base():
    base = torch.tensor([1.0, 1.0, 1.0, 1.0])
    # task vectors: e0 = (+1, +1, -5): two positive votes, but the sum -3 elects "-", so -5 / 1;
    # e1..e3 are trimmed per source by density 0.5 (k = 2 of 4 entries each):
    tau1 = torch.tensor([1.0, 0.1, 4.0, 0.2])  # keeps e0 (1) and e2 (4)
    tau2 = torch.tensor([1.0, 3.0, 0.1, 0.2])  # keeps e0 (1) and e1 (3)
    tau3 = torch.tensor([-5.0, 0.3, 0.2, -2.0])  # keeps e0 (-5) and e3 (-2)
    out = get_method("ties").merge(
        base,
        [base + tau1, base + tau2, base + tau3],
        {"weight": [1.0, 1.0, 1.0], "density": [0.5, 0.5, 0.5], "lambda": 0.5},
    )
    # e0: -5; e1: 3; e2: 4; e3: -2; times lambda 0.5, plus base 1
    torch.testing.assert_close(out, torch.tensor([-1.5, 2.5, 3.0, 0.0]))


# ---- DARE -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["dare_ties", "dare_linear", "della"])
def test_random_methods_are_reproducible_from_the_seed(name):
    spec = get_method(name)
    base, sources = tensors(5, 2, shape=(40, 30))
    params = params_for(spec, 2, density=[0.4, 0.6])
    a = spec.merge(base, sources, params, seed=11)
    b = spec.merge(base, sources, params, seed=11)
    c = spec.merge(base, sources, params, seed=12)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    with pytest.raises(ConfigError, match="seed"):
        spec.merge(base, sources, params, seed=None)


def test_dare_masks_come_from_each_sources_counter_based_stream():
    base, sources = tensors(6, 2, shape=(50,))
    density = [0.3, 0.8]
    out = get_method("dare_linear").merge(
        base, sources, {"weight": [1.0, 1.0], "density": density}, seed=42
    )
    expected = base.clone()
    for i, (source, d) in enumerate(zip(sources, density)):
        keep = uniform24(stream_key(42, i), 50) < keep_limit(d)
        expected += torch.where(keep, source - base, 0.0) * (1 / d)
    torch.testing.assert_close(out, expected)


def test_the_stream_is_the_same_in_any_slice_and_in_the_fused_kernel():
    """Position j's bits depend on (key, j) only, also past 2^32; the numba kernel agrees."""
    import numpy as np
    from numba import njit

    from evomm.merging import kernels

    @njit
    def draw(key, start, n):
        out = np.empty(n, np.int64)
        for j in range(n):
            out[j] = kernels.uniform24(key, np.uint64(start + j))
        return out

    for key in (0, 12345, 2**32 - 1):
        whole = uniform24(key, 3000)
        assert torch.equal(uniform24(key, 1000, start=2000), whole[2000:])
        for start in (0, 2**32 - 500, 5 * 2**32 + 7):
            assert torch.equal(torch.from_numpy(draw(np.uint32(key), start, 1000)),
                               uniform24(key, 1000, start=start))
    assert not torch.equal(uniform24(1, 1000, start=0), uniform24(1, 1000, start=2**32))


def test_stream_bits_look_uniform_and_sources_are_independent():
    n = 1 << 18
    a = uniform24(stream_key(7, 0), n).double() / 2**24
    b = uniform24(stream_key(7, 1), n).double() / 2**24
    assert 0 <= a.min() and a.max() < 1
    assert abs(a.mean().item() - 0.5) < 0.005  # std of the mean: 0.29 / 512 = 0.0006
    counts = torch.histc(a, bins=16, min=0, max=1)
    assert (counts - n / 16).abs().max().item() < 6 * (n / 16) ** 0.5  # ~6 sigma per bin
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.01  # other source
    assert abs(torch.corrcoef(torch.stack([a[1:], a[:-1]]))[0, 1].item()) < 0.01  # neighbours
    assert len({stream_key(s, i) for s in range(50) for i in range(4)}) == 200


@pytest.mark.parametrize("density", [0.1, 0.3, 0.7])
def test_dare_keeps_about_density_and_rescale_keeps_the_expected_delta(density):
    n = 100_000
    base = torch.zeros(n)
    source = torch.ones(n)
    dare = get_method("dare_linear")
    params = {"weight": [1.0], "density": [density]}
    dropped = dare.merge(base, [source], {**params, "rescale": False}, seed=0)
    kept_fraction = (dropped != 0).float().mean().item()
    assert abs(kept_fraction - density) < 0.01  # std sqrt(d(1-d)/n) < 0.0016
    assert set(dropped.unique().tolist()) <= {0.0, 1.0}

    rescaled = dare.merge(base, [source], params, seed=0)
    kept = rescaled[rescaled != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / density))
    assert keep_limit(1.0) == 2**24  # density 1 keeps every entry
    assert abs(rescaled.mean().item() - 1.0) < 0.05  # E = 1; std sqrt((1-d)/(d n)) < 0.01


@pytest.mark.parametrize("name", ["dare_ties", "dare_linear"])
def test_dare_with_density_one_is_its_deterministic_counterpart(name):
    base, sources = tensors(7, 3)
    params = {"weight": [0.5, 0.3, 0.9], "normalize": True, "lambda": 1.2}
    dare = get_method(name).merge(base, sources, {**params, "density": [1.0] * 3}, seed=9)
    other = "ties" if name == "dare_ties" else "task_arithmetic"
    torch.testing.assert_close(dare, get_method(other).merge(base, sources, params))


def test_della_rescale_keeps_the_expected_delta_and_prefers_large_entries():
    rows, cols = 200, 500
    base = torch.zeros(rows, cols)
    magnitudes = torch.linspace(0.5, 1.5, cols).expand(rows, cols)  # rank = column
    della = get_method("della")
    params = {"weight": [1.0], "density": [0.5], "epsilon": [0.3]}
    kept = della.merge(base, [magnitudes], {**params, "rescale": False}, seed=1) != 0
    rate = kept.float().mean(dim=0)  # per column: 0.2 for the smallest, 0.8 for the largest
    assert abs(rate[:50].mean().item() - 0.23) < 0.03
    assert abs(rate[-50:].mean().item() - 0.77) < 0.03
    rescaled = della.merge(base, [magnitudes], params, seed=1)
    # E[rescaled] = magnitudes; 10k entries per block, std < 0.01 for the smallest block
    for block in (slice(0, 50), slice(-50, None)):
        assert abs(rescaled[:, block].mean().item() - magnitudes[:, block].mean().item()) < 0.04


# ---- breadcrumbs, model stock -----------------------------------------------------------------
def test_breadcrumbs_drops_outliers_and_small_entries():
    delta = torch.tensor([0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 0.7, -0.8, 0.9, -1.0])
    # density 0.5 keeps 5, gamma 0.2 drops the 2 largest (0.9, -1.0): ascending ranks 3..7
    kept = trim_outliers(delta, 0.5, 0.2)
    expected = torch.tensor([0.0, 0.0, 0.0, -0.4, 0.5, -0.6, 0.7, -0.8, 0.0, 0.0])
    assert torch.equal(kept, expected)
    # gamma too large to keep 5 entries: outlier removal shrinks (n_bot = max(0, 10 - 5 - 8) = 0)
    assert torch.equal(trim_outliers(delta, 0.5, 0.8), torch.where(delta.abs() <= 0.5, delta, 0.0))


def test_model_stock_by_hand():
    base = torch.zeros(2)
    spec = get_method("model_stock")
    # equal task vectors: cos 1, t = 2 * 1 / (1 + 1) = 1 -> the sources' average
    same = spec.merge(base, [torch.tensor([1.0, 2.0]), torch.tensor([1.0, 2.0])], {})
    torch.testing.assert_close(same, torch.tensor([1.0, 2.0]))
    # orthogonal task vectors: cos 0, t = 0 -> the base
    ortho = spec.merge(base, [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])], {})
    torch.testing.assert_close(ortho, base)
    # cos 0.5 (60 degrees): t = 2 * 0.5 / 1.5 = 2 / 3 of the average [0.75, sqrt(3) / 4]
    a = torch.tensor([1.0, 0.0])
    b = torch.tensor([0.5, math.sqrt(3) / 2])
    out = spec.merge(base, [a, b], {})
    torch.testing.assert_close(out, (2 / 3) * (a + b) / 2)


# ---- slerp ------------------------------------------------------------------------------------
@FAST
@given(seed=seeds, shape=shapes.filter(lambda s: math.prod(s) > 1))
def test_slerp_endpoints(seed, shape):
    g = torch.Generator().manual_seed(seed)
    v0, v1 = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    slerp = get_method("slerp")
    torch.testing.assert_close(slerp.merge(v0, [v1], {"t": 0.0}), v0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(slerp.merge(v0, [v1], {"t": 1.0}), v1, rtol=1e-5, atol=1e-5)


def test_slerp_interpolates_the_original_tensors_on_the_sphere():
    # orthogonal: theta = pi/2, both coefficients sin(pi/4) / sin(pi/2) = sqrt(1/2),
    # applied to the unnormalised tensors [1, 0] and [0, 3]
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0])
    out = get_method("slerp").merge(v0, [v1], {"t": 0.5})
    r = math.sqrt(0.5)
    torch.testing.assert_close(out, torch.tensor([r, 3 * r]))
    # 60 degrees apart, t = 0.5: the bisector; coefficients sin(pi/6) / sin(pi/3) = 1 / sqrt(3)
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.5, math.sqrt(3) / 2])
    out = get_method("slerp").merge(a, [b], {"t": 0.5})
    torch.testing.assert_close(out, (a + b) / math.sqrt(3))


@pytest.mark.parametrize("factor", [2.5, -0.5, 1.0])
def test_slerp_falls_back_to_lerp_for_colinear_tensors(factor):
    v0 = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    v1 = factor * v0
    out = get_method("slerp").merge(v0, [v1], {"t": 0.25})
    torch.testing.assert_close(out, 0.75 * v0 + 0.25 * v1)


# ---- dtypes -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", METHODS.names())
def test_half_precision_inputs_are_computed_in_float32(name, dtype):
    spec = get_method(name)
    n = n_sources_for(spec)
    base, sources = tensors(8, n, shape=(16, 8))
    base_h, sources_h = base.to(dtype), [s.to(dtype) for s in sources]
    params = params_for(spec, n)
    out = spec.merge(base_h, sources_h, params, seed=5)
    assert out.dtype == torch.float32
    expected = spec.merge(base_h.float(), [s.float() for s in sources_h], params, seed=5)
    assert torch.equal(out, expected)


# ---- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.0, 1.5, -0.1, float("nan")])
def test_density_out_of_range_is_a_config_error_naming_density(density):
    base, sources = tensors(9, 2)
    with pytest.raises(ConfigError, match="density") as info:
        get_method("ties").merge(base, sources, {"weight": [1.0, 1.0], "density": [0.5, density]})
    assert "0 < density <= 1" in str(info.value) or "finite" in str(info.value)


def test_slerp_needs_exactly_one_source():
    base, sources = tensors(10, 2)
    with pytest.raises(ConfigError, match="exactly 1"):
        get_method("slerp").merge(base, sources, {"t": 0.5})


@pytest.mark.parametrize(
    "name, params, n, match",
    [
        ("slerp", {"t": 1.5}, 1, "0 <= t <= 1"),
        ("slerp", {}, 1, "'t' is required"),
        ("ties", {"density": [0.5, 0.5]}, 2, "'weight' is required"),
        ("ties", {"weight": [1.0]}, 2, "1 value"),
        ("ties", {"weight": 1.0}, 1, "must be a list"),
        ("ties", {"weight": [1.0], "densty": [0.5]}, 1, "unknown parameter.*densty.*density"),
        ("ties", {"weight": [float("inf")]}, 1, "weight.*finite"),
        ("task_arithmetic", {"weight": [1.0], "lambda": float("nan")}, 1, "lambda.*finite"),
        ("ties", {"weight": [1.0], "normalize": "yes"}, 1, "normalize.*true or false"),
        ("linear", {"weight": [1.0, -1.0]}, 2, "sum to ~0"),
        ("della", {"weight": [1.0], "density": [0.9], "epsilon": [0.2]}, 1, "epsilon"),
        ("model_stock", {}, 1, "at least 2"),
    ],
)
def test_bad_params_are_config_errors(name, params, n, match):
    base, sources = tensors(11, n)
    with pytest.raises(ConfigError, match=match):
        get_method(name).merge(base, sources, params, seed=0)


def test_check_params_accepts_partial_params_and_negative_weights():
    get_method("ties").check_params({"weight": [-0.5, 1.0]}, 2)  # density, normalize: defaults


def test_missing_base_and_mismatched_shapes():
    _, sources = tensors(12, 2)
    with pytest.raises(ConfigError, match="base"):
        get_method("task_arithmetic").merge(None, sources, {"weight": [1.0, 1.0]})
    with pytest.raises(IncompatibleModelsError, match="shape"):
        get_method("linear").merge(None, [sources[0], sources[1][:2]], {"weight": [1.0, 1.0]})
