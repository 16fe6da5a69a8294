"""EvoSDXL-JP in miniature: `experiment=smoke_sdxl` in-process, then `evomm merge` rebuilds it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from evomm.runner import run
from evomm.adapters.sdxl import single_file_path
from evomm.cli import main as cli_main

from conftest import compose


@pytest.fixture(scope="module")
def sdxl_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("smoke_sdxl") / "run"
    return run(compose(["experiment=smoke_sdxl", f"run_dir={run_dir}"]))


def test_smoke_sdxl_leaves_pipeline_single_file_grid_and_table(sdxl_run):
    run_dir = sdxl_run["run_dir"]
    assert (run_dir / "merged" / "model_index.json").exists()
    assert (run_dir / "merged" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    single = load_file(single_file_path(run_dir / "merged"))
    assert any(k.startswith("model.diffusion_model.") for k in single)  # the A1111 / ComfyUI layout
    assert (run_dir / "clip_score_heldout.png").stat().st_size > 0
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["kind"] for r in rows].count("source") == 4  # three sources and the base
    assert all("clip_score" in r["metrics"] for r in rows)


def test_evomm_merge_rebuilds_the_pipeline_bit_for_bit(sdxl_run, tmp_path):
    run_dir = sdxl_run["run_dir"]
    assert cli_main(["merge", str(run_dir / "best_recipe.yaml"), str(tmp_path / "sdxl")]) == 0
    unet = "unet/diffusion_pytorch_model.safetensors"
    pairs = [(run_dir / "merged" / unet, tmp_path / "sdxl" / unet),
             (single_file_path(run_dir / "merged"), single_file_path(tmp_path / "sdxl"))]
    for ours, rebuilt in pairs:
        a, b = load_file(ours), load_file(rebuilt)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), ours
