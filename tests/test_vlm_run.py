"""EvoVLM-JP in miniature: `experiment=smoke_vlm` in-process, then `evomm merge` rebuilds merged/."""

import json

import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText, AutoProcessor

from evomm.cli import main as cli_main
from evomm.recipe.recipe import Recipe


def test_smoke_vlm_leaves_the_run_directory(vlm_run):
    run_dir = vlm_run["run_dir"]
    for name in ["best_recipe.yaml", "history.jsonl", "checkpoint.pkl", "fitness.png", "results.json", "results.md"]:
        assert (run_dir / name).stat().st_size > 0, name
    rows = json.loads((run_dir / "results.json").read_text())
    assert [r["kind"] for r in rows].count("source") == 3
    # the evaluation-only benchmark is scored for every model beside the fitness task
    assert all("ja_vlm_bench/rouge_l" in r["metrics"] and "rouge_l" in r["metrics"] for r in rows)
    recipe = Recipe.load(run_dir / "best_recipe.yaml")
    assert recipe.adapter == "vlm"
    assert recipe.notes["vocab_rows"]["kept_from_vlm"] >= 1  # LLaVA's image token row is kept


def test_evomm_merge_rebuilds_the_vlm(vlm_run, tmp_path):
    run_dir = vlm_run["run_dir"]
    assert cli_main(["merge", str(run_dir / "best_recipe.yaml"), str(tmp_path / "vlm")]) == 0
    merged = load_file(run_dir / "merged" / "model.safetensors")
    rebuilt = load_file(tmp_path / "vlm" / "model.safetensors")
    assert merged.keys() == rebuilt.keys()
    assert all(torch.equal(merged[k], rebuilt[k]) for k in merged)

    # a VLM directory that transformers loads and that answers a question about an image
    from PIL import Image

    model = AutoModelForImageTextToText.from_pretrained(tmp_path / "vlm").eval()
    processor = AutoProcessor.from_pretrained(tmp_path / "vlm")
    image = Image.new("RGB", (32, 32), (200, 30, 30))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "これは何色ですか?"}]}],
        add_generation_prompt=True,
    )
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
