"""DFS and PS+DFS through the real configs: `experiment=smoke_llm space=dfs|ps_dfs`, in-process."""

import filecmp

import pytest
import torch
from safetensors.torch import load_file

from evomm.runner import run
from evomm.cli import main as cli_main
from evomm.merging.dfs import load_routed
from evomm.recipe.recipe import Recipe
from evomm.recipe.route import route_of
from evomm.tracking.history import read_history

from conftest import compose


def test_dfs_run_leaves_route_plot_and_table(dfs_run):
    run_dir = dfs_run["run_dir"]
    assert (run_dir / "route.png").stat().st_size > 0
    assert "| evolved | evolved |" in (run_dir / "results.md").read_text()
    recipe = Recipe.load(run_dir / "best_recipe.yaml")
    route = route_of(recipe)
    assert route.steps[0] == (0, 0)  # the path starts with model A's first layer
    assert route.steps[-1] == (0, route.layer_counts[0] - 1)  # and ends with its last
    history = read_history(run_dir / "history.jsonl")
    assert all("route/steps" in h["params"] and "W/01" in h["params"] for h in history)


def test_dfs_search_starts_from_model_a_alone(dfs_run):
    first = read_history(dfs_run["run_dir"] / "history.jsonl")[0]
    # x0 is model A alone; CMA-ES samples around it, so the first candidates stay close to it
    assert first["params"]["route/steps"].startswith("0:0")


def test_evomm_merge_rebuilds_a_routed_model(dfs_run, tmp_path):
    run_dir = dfs_run["run_dir"]
    assert cli_main(["merge", str(run_dir / "best_recipe.yaml"), str(tmp_path / "routed")]) == 0
    merged = load_file(run_dir / "merged" / "layers" / "model.safetensors")
    rebuilt = load_file(tmp_path / "routed" / "layers" / "model.safetensors")
    assert merged.keys() == rebuilt.keys() and all(torch.equal(merged[k], rebuilt[k]) for k in merged)
    assert filecmp.cmp(run_dir / "merged" / "route.yaml", tmp_path / "routed" / "route.yaml", shallow=False)
    routed = load_routed(tmp_path / "routed")
    ids = torch.tensor([[1, 5, 9, 13]])
    assert routed(input_ids=ids).logits.shape[:2] == (1, 4)


def test_ps_dfs_routes_a_parameter_space_merge(tmp_path):
    out = run(compose(["experiment=smoke_llm", "space=ps_dfs", f"run_dir={tmp_path / 'run'}",
                             "optimizer.generations=1", "final_eval.baselines=null"]))
    recipe = Recipe.load(out["run_dir"] / "best_recipe.yaml")
    assert recipe.method == "ties" and recipe.entries  # model A: the hand-set PS merge
    assert recipe.route["models"] == [recipe.models[0]]  # model B: the first source
    assert (out["run_dir"] / "route.png").exists()


def test_ps_dfs_needs_an_existing_ps_recipe(tmp_path):
    from evomm.errors import ConfigError

    with pytest.raises(ConfigError, match="ps_recipe"):
        run(compose(["experiment=smoke_llm", "space=ps_dfs", f"run_dir={tmp_path}",
                           f"space.ps_recipe={tmp_path}/missing.yaml"]))


def test_dfs_routes_a_vlms_language_model(tmp_path):
    out = run(compose(["experiment=smoke_vlm", "space=dfs", f"run_dir={tmp_path / 'run'}",
                             "optimizer.generations=1", "final_eval.baselines=null"]))
    recipe = Recipe.load(out["run_dir"] / "best_recipe.yaml")
    assert recipe.adapter == "vlm" and recipe.route["models"]  # model A: the LLaVA; model B: the text LLM
    assert (out["run_dir"] / "route.png").exists()
    assert "| evolved | evolved |" in (out["run_dir"] / "results.md").read_text()
