"""Malformed recipes and mergekit YAML given to `evomm merge` get one clean line, never a traceback."""

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from evomm.cli import main as cli_main

MISSING = "/nonexistent/evomm-fuzz"  # no model ever loads: every input must fail before that or name it

RECIPE = {
    "evomm_recipe": 1,
    "adapter": "llm",
    "method": "dare_ties",
    "models": [f"{MISSING}/a", f"{MISSING}/b"],
    "base": f"{MISSING}/base",
    "method_params": {"normalize": True},
    "entries": [
        {"groups": ["layers.0"], "filter": "mlp", "params": {"weight": [0.5, [0.1, 0.9]], "density": [0.5, 0.7]}},
        {"params": {"weight": [1.0, 1.0], "density": [0.3, 0.3]}},
    ],
    "seed": 0,
    "dtype": "float32",
}
MERGEKIT = {
    "merge_method": "ties",
    "base_model": f"{MISSING}/base",
    "models": [
        {"model": f"{MISSING}/a", "parameters": {"weight": 0.5, "density": [0.2, 0.8]}},
        {"model": f"{MISSING}/b", "parameters": {"weight": [{"filter": "mlp", "value": 0.3}, {"value": 0.6}]}},
    ],
    "parameters": {"normalize": True, "lambda": 1.0, "density": 0.5},
    "dtype": "bfloat16",
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8),
)
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                      max_leaves=8)


def paths(doc, prefix=()):
    """Every (container, key) position in a nested document."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else []
    for key, value in items:
        yield prefix + (key,)
        yield from paths(value, prefix + (key,))


@st.composite
def mutated(draw):
    doc = copy.deepcopy(draw(st.sampled_from([RECIPE, MERGEKIT])))
    for _ in range(draw(st.integers(1, 3))):
        positions = list(paths(doc))
        if not positions:
            break
        path = draw(st.sampled_from(positions))
        parent = doc
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.text(min_size=1, max_size=6))] = draw(values)
    return doc


def run_merge(tmp_path, text, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code = cli_main(["merge", str(config), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated())
def test_malformed_configs_fail_with_one_line(tmp_path, capsys, doc):
    code, err = run_merge(tmp_path, yaml.safe_dump(doc, allow_unicode=True), capsys)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("evomm: error: "), err


def test_not_yaml_and_not_a_mapping(tmp_path, capsys):
    for text in ["models: [a, b", "- just\n- a list\n", "42\n", ""]:
        code, err = run_merge(tmp_path, text, capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith("evomm: error: "), (text, err)


def test_valid_configs_reach_loading_and_name_the_model(tmp_path, capsys):
    for doc in (RECIPE, MERGEKIT):
        code, err = run_merge(tmp_path, yaml.safe_dump(doc), capsys)
        assert code == 2 and MISSING in err[0], err
