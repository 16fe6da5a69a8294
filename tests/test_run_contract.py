"""The run-directory contract, once for every kind of run: smoke_llm, smoke_vlm, smoke_sdxl and DFS.

Every run leaves the files other tools read, and `evomm merge best_recipe.yaml OUT` rebuilds
every weight file of merged/ bit for bit from the source checkpoints.
"""

import json

import pytest
import torch
from safetensors.torch import load_file

from evomm.cli import main as cli_main
from evomm.recipe.recipe import Recipe
from evomm.tracking.history import read_history

RUNS = ["smoke_run", "vlm_run", "sdxl_run", "dfs_run"]


@pytest.mark.parametrize("run_fixture", RUNS)
def test_run_directory_holds_the_contract_files(run_fixture, request):
    out = request.getfixturevalue(run_fixture)
    run_dir = out["run_dir"]
    for name in ["best_recipe.yaml", "best.json", "history.jsonl", "checkpoint.pkl", "fitness.png",
                 "results.json", "results.md"]:
        assert (run_dir / name).stat().st_size > 0, name
    assert (run_dir / "merged" / "README.md").stat().st_size > 0  # the model card
    history = read_history(run_dir / "history.jsonl")
    assert out["best"]["fitness"] == max(h["fitness"] for h in history if h["fitness"] is not None)
    assert json.loads((run_dir / "best.json").read_text())["fitness"] == out["best"]["fitness"]
    assert Recipe.load(run_dir / "best_recipe.yaml").models  # a complete recipe: it names its sources
    assert [r["kind"] for r in json.loads((run_dir / "results.json").read_text())][0] == "evolved"


@pytest.mark.parametrize("run_fixture", RUNS)
def test_evomm_merge_rebuilds_every_weight_file_bit_for_bit(run_fixture, request, tmp_path):
    run_dir = request.getfixturevalue(run_fixture)["run_dir"]
    # the same folder name: an SDXL pipeline's single-file copy is named after its folder
    rebuilt = tmp_path / "merged"
    assert cli_main(["merge", str(run_dir / "best_recipe.yaml"), str(rebuilt)]) == 0
    merged = sorted(p.relative_to(run_dir / "merged") for p in (run_dir / "merged").rglob("*.safetensors"))
    assert merged, "merged/ holds weights"
    for rel in merged:
        a, b = load_file(run_dir / "merged" / rel), load_file(rebuilt / rel)
        assert a.keys() == b.keys(), rel
        assert all(torch.equal(a[k], b[k]) for k in a), rel
