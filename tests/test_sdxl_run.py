"""EvoSDXL-JP in miniature: what `experiment=smoke_sdxl` leaves (the rebuild is in test_run_contract.py)."""

import json

from safetensors.torch import load_file

from evomm.adapters.sdxl import single_file_path


def test_smoke_sdxl_leaves_pipeline_single_file_grid_and_table(sdxl_run):
    run_dir = sdxl_run["run_dir"]
    assert (run_dir / "merged" / "model_index.json").exists()
    assert (run_dir / "merged" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    single = load_file(single_file_path(run_dir / "merged"))
    assert any(k.startswith("model.diffusion_model.") for k in single)  # the A1111 / ComfyUI layout
    assert (run_dir / "clip_score_heldout.png").stat().st_size > 0
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["kind"] for r in rows].count("source") == 3  # three sources; the base is source 0, scored once
    assert all("clip_score" in r["metrics"] for r in rows)
