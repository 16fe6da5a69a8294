"""Recipes and search spaces: pure data, tested without models."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evomm.errors import ConfigError
from evomm.recipe.recipe import Entry, Recipe, evaluate_setting
from evomm.search.space import SearchSpace, build_units

GROUPS = ["embed", "layers.0", "layers.1", "layers.2", "layers.3", "norm", "head"]
LAYERS = GROUPS[1:5]


def template(method="ties", n=2):
    return Recipe(adapter="llm", method=method, models=[f"m{i}" for i in range(n)], base="base")


def space(granularity="model", evolve=("weight", "density"), group_size=1, n=2):
    units = build_units(granularity, GROUPS, LAYERS, group_size=group_size)
    bounds = {"weight": (0.0, 2.0), "density": (0.1, 1.0), "t": (0.0, 1.0)}
    return SearchSpace(template(n=n), units, list(evolve), bounds)


def test_units_per_granularity():
    assert [u.name for u in build_units("model", GROUPS, LAYERS)] == ["all"]
    layer = build_units("layer", GROUPS, LAYERS, group_size=2)
    assert [u.name for u in layer] == ["io", "layers.0-1", "layers.2-3"]
    assert layer[0].groups == ("embed", "norm", "head")
    lf = build_units("layer_filter", GROUPS, LAYERS, group_size=4, filters=["self_attn", "mlp"])
    assert [u.name for u in lf] == ["io", "layers.0-3/self_attn", "layers.0-3/mlp", "layers.0-3/other"]
    assert [u.filter for u in lf] == [None, "self_attn", "mlp", None]


def test_dimension_counts_sources_and_units():
    assert space("model").dim == 2 * 2  # weight + density, 2 sources, 1 unit
    assert space("layer", group_size=1).dim == 5 * 2 * 2  # io + 4 layers
    assert space("model", evolve=("t",)).dim == 1  # t is method-wide, not per source


def test_decode_maps_unit_cube_onto_bounds():
    s = space("model")
    r = s.decode(np.array([0.0, 1.0, 0.0, 1.0]))  # weight src0, src1, density src0, src1
    assert r.entries[0].params == {"weight": [0.0, 2.0], "density": [0.1, 1.0]}
    assert r.models == ["m0", "m1"] and r.method == "ties" and r.base == "base"
    # out-of-cube values are clipped, never extrapolated
    r = s.decode(np.array([-1.0, 2.0, 0.5, 0.5]))
    assert r.entries[0].params["weight"] == [0.0, 2.0]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=20, max_size=20), st.sampled_from(["model", "layer", "layer_filter"]))
def test_encode_inverts_decode(values, granularity):
    s = space(granularity, group_size=2)
    x = np.array(values[: s.dim] + [0.5] * max(0, s.dim - len(values)))
    np.testing.assert_allclose(s.encode(s.decode(x)), x, atol=1e-12)


def test_describe_names_every_gene():
    s = space("layer", group_size=2)
    d = s.describe(np.full(s.dim, 0.5))
    assert len(d) == s.dim
    assert d["layers.0-1/weight/src1"] == 1.0


def test_first_matching_entry_wins():
    r = template()
    r.entries = [
        Entry(params={"weight": [1, 2]}, groups=["layers.0"], filter="self_attn"),
        Entry(params={"weight": [3, 4]}, groups=["layers.0"]),
        Entry(params={"weight": [5, 6]}),
    ]
    assert r.params_for("layers.0", "model.layers.0.self_attn.q_proj.weight", 0.0)["weight"] == [1, 2]
    assert r.params_for("layers.0", "model.layers.0.mlp.up_proj.weight", 0.0)["weight"] == [3, 4]
    assert r.params_for("embed", "model.embed_tokens.weight", 0.0)["weight"] == [5, 6]


def test_mergekit_settings_gradient_and_filters():
    # a gradient over the layer stack: knots at t = 0, 0.5, 1
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 0.25) == pytest.approx(0.5)
    assert evaluate_setting([0.0, 1.0, 0.0], "x", 1.0) == 0.0
    cond = [{"filter": "self_attn", "value": [0.0, 1.0]}, {"value": 0.3}]
    assert evaluate_setting(cond, "layers.1.self_attn.q", 0.5) == pytest.approx(0.5)
    assert evaluate_setting(cond, "layers.1.mlp.up", 0.5) == 0.3
    with pytest.raises(ConfigError):
        evaluate_setting({"nonsense": 1}, "x", 0.0)


def test_method_params_are_overridden_by_entries(tmp_path):
    r = template()
    r.method_params = {"normalize": False, "lambda": 0.5}
    r.entries = [Entry(params={"weight": [[0.0, 1.0], 0.5], "lambda": 2.0})]
    p = r.params_for("layers.1", "model.layers.1.mlp.w", 1.0)
    assert p == {"normalize": False, "lambda": 2.0, "weight": [1.0, 0.5]}
    back = Recipe.load(r.save(tmp_path / "r.yaml"))
    assert back == r


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"method": "ties", "models": ["a"]}, "'adapter'"),
        ({"adapter": "llm", "method": "ties", "models": "a"}, "'models'"),
        ({"adapter": "llm", "method": "ties", "models": ["a"], "colour": 1}, "unknown keys"),
        ({"adapter": "llm", "method": "ties", "models": ["a"], "entries": [{"groups": ["x"]}]}, "entry 0"),
        ({"adapter": "llm", "method": "ties", "models": ["a"], "seed": "one"}, "'seed'"),
    ],
)
def test_malformed_recipes_are_refused(bad, message):
    with pytest.raises(ConfigError, match=message):
        Recipe.from_dict(bad)


def test_bad_bounds_and_granularity():
    with pytest.raises(ConfigError, match="density"):
        SearchSpace(template(), build_units("model", GROUPS, LAYERS), ["density"], {"density": (0.0, 1.0)})
    with pytest.raises(ConfigError, match="granularity"):
        build_units("block", GROUPS, LAYERS)
    with pytest.raises(ConfigError, match="group_size"):
        build_units("layer", GROUPS, LAYERS, group_size=0)
