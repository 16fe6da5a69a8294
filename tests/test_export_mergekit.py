"""`evomm export-mergekit`: a recipe written as mergekit YAML merges into the same tensors.

The round trips run real smoke searches (TIES at layer_filter and at layer granularity),
export their best_recipe.yaml through the CLI, let mergekit 0.1.5 parse it
(MergeConfiguration.model_validate) and merge it on the CPU (run_merge), and compare every
tensor with the run's own merged/model.safetensors. Hand-written recipes cover what a search
does not produce: method-wide parameters set per entry (slerp's t), per-layer gradients inside
grouped entries, entries that leave a parameter unset, entries without groups.
The refusals and the tensor-name mapping need no mergekit.
"""

from __future__ import annotations

import os

import pytest
import torch
import yaml
from safetensors.torch import load_file

from evomm.runner import run
from evomm.adapters.llm_names import llm_group
from evomm.builtin import resolve
from evomm.cli import main as cli_main
from evomm.cli import merge_to_dir
from evomm.errors import ConfigError
from evomm.interop import mergekit_export
from evomm.merging.methods import get_method
from evomm.interop.mergekit_export import GROUP_SUBSTRINGS, group_substring, recipe_to_mergekit
from evomm.recipe.recipe import Entry, Recipe

from conftest import compose

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mergekit():
    """mergekit's own parser and merge; tests that need it are skipped without it."""
    pytest.importorskip("mergekit.merge", reason="mergekit is not installed")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    def merge(yaml_text: str, out_dir) -> dict[str, torch.Tensor]:
        config = MergeConfiguration.model_validate(yaml.safe_load(yaml_text))
        run_merge(config, str(out_dir), MergeOptions(device="cpu", copy_tokenizer=False, write_model_card=False, quiet=True))
        return load_file(str(out_dir / "model.safetensors"))

    return merge


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished smoke searches whose recipes have one parameter set per unit."""
    root = tmp_path_factory.mktemp("export_runs")
    overrides = {
        "layer_filter": ["space.granularity=layer_filter"],
        "layer": ["space.granularity=layer", "space.group_size=1"],
    }
    out = {}
    for name, extra in overrides.items():
        run_dir = root / name
        run(compose(["experiment=smoke_llm", f"run_dir={run_dir}", "final_eval.enabled=false", *extra]))
        out[name] = run_dir
    return out


@pytest.fixture(scope="module")
def models():
    return {name: resolve(f"builtin:{name}") for name in ("tiny-llm-a", "tiny-llm-b", "tiny-llm-base")}


def assert_same_tensors(ours: dict, theirs: dict, what: str) -> None:
    assert set(ours) == set(theirs), what
    for name, expected in theirs.items():
        diff = (ours[name].float() - expected.float()).abs().max().item()
        assert diff <= TOLERANCE, f"{what}: {name} differs from mergekit by {diff}"


@pytest.mark.parametrize("granularity", ["layer_filter", "layer"])
def test_exported_run_recipe_gives_the_runs_tensors(runs, mergekit, granularity, tmp_path):
    run_dir = runs[granularity]
    out = tmp_path / "mergekit.yaml"
    # built-in models are written by name; --local-paths gives the folders mergekit reads
    assert cli_main(["export-mergekit", str(run_dir / "best_recipe.yaml"), "-o", str(out), "--local-paths"]) == 0
    text = out.read_text()
    config = yaml.safe_load(text)
    recipe = Recipe.load(run_dir / "best_recipe.yaml")
    assert config["merge_method"] == "ties" and config["base_model"] == resolve(recipe.base)
    assert [m["model"] for m in config["models"]] == [resolve(m) for m in recipe.models]
    # one condition per (entry, group), in the recipe's entry order
    conditions = config["models"][0]["parameters"]["weight"]
    assert len(conditions) == sum(len(e.groups) for e in recipe.entries)

    theirs = mergekit(text, tmp_path / "mergekit_out")
    ours = load_file(str(run_dir / "merged" / "model.safetensors"))
    assert_same_tensors(ours, theirs, granularity)


def test_per_unit_values_really_matter(runs, models):
    """Guard against a vacuous round trip: one parameter set for every tensor gives other tensors."""
    run_dir = runs["layer_filter"]
    recipe = Recipe.load(run_dir / "best_recipe.yaml")
    merged = load_file(str(run_dir / "merged" / "model.safetensors"))
    name = "model.layers.1.mlp.up_proj.weight"
    first = recipe.entries[0].params  # the io unit's values, applied to a layer tensor
    states = {k: load_file(os.path.join(p, "model.safetensors")) for k, p in models.items()}
    flat = get_method("ties").merge(
        states["tiny-llm-base"][name].float(),
        [states["tiny-llm-a"][name].float(), states["tiny-llm-b"][name].float()],
        {"weight": first["weight"], "density": first["density"]},
    )
    assert (flat - merged[name].float()).abs().max().item() > 1e-4


def hand_recipes(models) -> dict[str, Recipe]:
    a, b, base = models["tiny-llm-a"], models["tiny-llm-b"], models["tiny-llm-base"]
    return {
        # method-wide t set per entry (top-level conditions); a gradient in a grouped entry
        # (t = 0 at layer 0, 1 at layer 1); an entry without t and tensors no entry matches
        # (norm) take method_params' t.
        "slerp": Recipe(
            adapter="llm", method="slerp", models=[a], base=base,
            method_params={"t": 0.35},
            entries=[
                Entry(params={"t": 0.9}, groups=["layers.1"], filter="mlp"),
                Entry(params={"t": [0.1, 0.8]}, groups=["layers.0", "layers.1"], filter="self_attn"),
                Entry(params={}, groups=["layers.0"]),
                Entry(params={"t": 0.6}, groups=["embed", "head"]),
            ],
        ),
        # per-source gradients in a grouped entry, an entry that leaves density unset (default
        # 1.0), a filter-only entry and a catch-all last entry.
        "ties": Recipe(
            adapter="llm", method="ties", models=[a, b], base=base,
            method_params={"normalize": False, "lambda": 1.2},
            entries=[
                Entry(params={"weight": [[0.2, 0.9], 0.4], "density": [0.5, [0.3, 0.7]]},
                      groups=["layers.0", "layers.1"], filter="self_attn"),
                Entry(params={"weight": [0.7, 0.3]}, groups=["layers.1"]),
                Entry(params={"weight": [0.5, 0.5], "density": [0.4, 0.6]}, filter="layernorm"),
                Entry(params={"weight": [0.6, 0.2], "density": [0.8, 0.9]}),
            ],
        ),
    }


@pytest.mark.parametrize("case", ["slerp", "ties"])
def test_hand_written_recipe_round_trip(models, mergekit, case, tmp_path):
    recipe = hand_recipes(models)[case]
    text = mergekit_export.mergekit_yaml(recipe, local_paths=True)  # folders that mergekit reads
    ours_dir = merge_to_dir(recipe, tmp_path / "ours", device="cpu")
    ours = load_file(str(ours_dir / "model.safetensors"))
    theirs = mergekit(text, tmp_path / "theirs")
    assert_same_tensors(ours, theirs, case)


def test_slerp_export_lists_the_base_and_writes_t_as_conditions(models):
    config = recipe_to_mergekit(hand_recipes(models)["slerp"])
    assert [m["model"] for m in config["models"]] == [models["tiny-llm-base"], models["tiny-llm-a"]]
    t = config["parameters"]["t"]
    assert t[0] == {"filter": "layers.1.mlp", "value": 0.9}
    assert t[1] == {"filter": "layers.0.self_attn", "value": [0.1, 0.8]}  # gradients stay gradients
    assert t[3] == {"filter": "layers.0.", "value": 0.35}  # the entry without t: method_params' value
    assert t[-1] == {"value": 0.35}  # norm matches no entry


def test_dare_export_is_valid_but_warns(models):
    recipe = Recipe(
        adapter="llm", method="dare_ties", models=[models["tiny-llm-a"], models["tiny-llm-b"]],
        base=models["tiny-llm-base"], entries=[Entry(params={"weight": [0.5, 0.5], "density": [0.5, 0.5]})], seed=3,
    )
    text = mergekit_export.mergekit_yaml(recipe)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("WARNING" in line and "dare_ties" in line for line in header)
    config = yaml.safe_load(text)
    assert config["merge_method"] == "dare_ties"
    assert config["models"][0]["parameters"] == {"weight": 0.5, "density": 0.5}
    mk = pytest.importorskip("mergekit.config")
    mk.MergeConfiguration.model_validate(config)


def test_deterministic_export_has_no_warning(runs):
    text = mergekit_export.export_mergekit(runs["layer"])  # a run directory works too
    assert "WARNING" not in text
    assert text.startswith("# mergekit config exported by `evomm export-mergekit`")


@pytest.mark.parametrize("config_cls, extra", [
    ("LlamaConfig", {}),
    ("MistralConfig", {}),
    ("Qwen2Config", {}),
])
def test_group_substrings_select_exactly_the_groups_tensors(config_cls, extra):
    """On real tensor names (12 layers: layers.1 must not catch layers.10 / layers.11)."""
    import transformers

    config = getattr(transformers, config_cls)(
        hidden_size=16, intermediate_size=32, num_hidden_layers=12, num_attention_heads=2,
        num_key_value_heads=2, vocab_size=32, tie_word_embeddings=False, **extra,
    )
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(config)
    names = [n for n, _ in model.named_parameters()]
    groups = {llm_group(n) for n in names}
    assert groups == {"embed", "norm", "head", *[f"layers.{i}" for i in range(12)]}
    for group in groups:
        sub = group_substring(group, None, "test")
        assert {n for n in names if sub in n} == {n for n in names if llm_group(n) == group}, group
    for flt in ("self_attn", "mlp", "input_layernorm"):
        for i in range(12):
            sub = group_substring(f"layers.{i}", flt, "test")
            expected = {n for n in names if llm_group(n) == f"layers.{i}" and flt in n}
            assert expected and {n for n in names if sub in n} == expected


def test_refuses_routes_other_adapters_and_unknown_methods(models, monkeypatch):
    base = dict(models=[models["tiny-llm-a"], models["tiny-llm-b"]], base=models["tiny-llm-base"],
                entries=[Entry(params={"weight": [0.5, 0.5]})])
    routed = Recipe(adapter="llm", method="linear", **base)
    routed.route = {"models": [models["tiny-llm-b"]], "steps": [[0, 0], [1, 1]], "scales": [1.0, 1.0]}
    with pytest.raises(ConfigError, match="route"):
        recipe_to_mergekit(routed)
    with pytest.raises(ConfigError, match="adapter is 'vlm'"):
        recipe_to_mergekit(Recipe(adapter="vlm", method="linear", **base))
    monkeypatch.setattr(mergekit_export, "MERGEKIT_METHODS", ("linear",))
    with pytest.raises(ConfigError, match="no mergekit equivalent"):
        recipe_to_mergekit(Recipe(adapter="llm", method="task_arithmetic", **base))


def test_refuses_filters_that_cannot_be_one_name_substring(models, tmp_path):
    recipe = Recipe(
        adapter="llm", method="linear", models=[models["tiny-llm-a"], models["tiny-llm-b"]],
        entries=[Entry(params={"weight": [0.9, 0.1]}, groups=["layers.0"], filter="proj"),  # q_proj, up_proj, ...
                 Entry(params={"weight": [0.5, 0.5]})],
    )
    with pytest.raises(ConfigError, match="model.layers.0.*takes entry 0 in the recipe but entry 1"):
        mergekit_export.mergekit_yaml(recipe)  # the first model is local: its tensor names are checked
    other = Recipe(adapter="llm", method="linear", models=recipe.models,
                   entries=[Entry(params={"weight": [0.5, 0.5]}, groups=["other"])])
    with pytest.raises(ConfigError, match="group 'other'"):
        recipe_to_mergekit(other)
    assert set(GROUP_SUBSTRINGS) == {"embed", "norm", "head"}


def test_cli_error_is_one_line(tmp_path, capsys):
    recipe = Recipe(adapter="sdxl", method="linear", models=["a/b", "c/d"], entries=[Entry(params={"weight": [1.0, 1.0]})])
    path = recipe.save(tmp_path / "r.yaml")
    assert cli_main(["export-mergekit", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("evomm: error:") and "\n" not in err and "sdxl" in err
