"""The front door stays light: `evomm merge` of a text LLM imports no diffusers, open_clip, wandb
or matplotlib, and once an architecture's tensor layout is known, not transformers either."""

import json
import os
import subprocess
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

HEAVY = ("diffusers", "open_clip", "wandb", "matplotlib", "transformers")

PROBE = """
import sys
from evomm.cli import main
code = main(["merge", sys.argv[1], sys.argv[2]])
print(__import__("json").dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _checkpoints(root):
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    paths = []
    for seed, name in enumerate(["base", "a", "b"]):
        torch.manual_seed(seed)
        LlamaForCausalLM(config).save_pretrained(root / name)
        paths.append(root / name)
    return paths


def _merge(config, out, home):
    env = {**os.environ, "EVOMM_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", PROBE, str(config), str(out)], capture_output=True, text=True,
                          env=env, check=True, timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_evomm_merge_imports_only_what_it_needs(tmp_path):
    base, a, b = _checkpoints(tmp_path)
    config = tmp_path / "ties.yml"
    config.write_text(f"merge_method: ties\nbase_model: {base}\nmodels:\n"
                      f"  - model: {a}\n    parameters: {{weight: 0.6, density: 0.4}}\n"
                      f"  - model: {b}\n    parameters: {{weight: 0.5, density: 0.7}}\ndtype: float32\n")
    first = _merge(config, tmp_path / "out1", tmp_path / "home")
    assert first["code"] == 0
    assert set(first["loaded"]) <= {"transformers"}  # the first merge of an architecture builds its layout
    second = _merge(config, tmp_path / "out2", tmp_path / "home")
    assert second == {"code": 0, "loaded": []}
    from safetensors.torch import load_file

    one, two = load_file(tmp_path / "out1" / "model.safetensors"), load_file(tmp_path / "out2" / "model.safetensors")
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
