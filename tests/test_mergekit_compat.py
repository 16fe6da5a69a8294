"""evomm's deterministic merge methods give mergekit's tensors on real (tiny) Llama checkpoints.

mergekit runs its own pipeline (YAML -> MergeConfiguration -> run_merge on CPU) on three
checkpoints saved with save_pretrained; the expected tensors are computed here with evomm's
methods, evaluating mergekit's per-tensor parameter rules independently:
- a list of numbers is a gradient over the layers, linearly interpolated at t, where
  t = 0 for tensors before the layers (embeddings), t = i / (N - 1) for layer i, and t = 0 again
  for tensors after the layers (final norm, lm_head: mergekit 0.1.5 plans them with t = 0);
- a list of {filter, value} is matched against the tensor name, first substring match wins,
  a missing filter matches everything.

Skipped when mergekit is not installed. Install it without touching torch/transformers:
    pip install --no-deps mergekit==0.1.5 immutables peft
"""

from __future__ import annotations

import os
import re

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before transformers reads it

pytest.importorskip("mergekit.merge", reason="mergekit is not installed")

from mergekit.config import MergeConfiguration  # noqa: E402
from mergekit.merge import MergeOptions, run_merge  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

from evomm.merging.methods import get_method  # noqa: E402

N_LAYERS = 2
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A random base and two fine-tunes (base + small noise), saved and loaded back."""
    root = tmp_path_factory.mktemp("mergekit_compat")
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        vocab_size=64,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    base.save_pretrained(root / "base")
    for i in (1, 2):
        torch.manual_seed(i)
        tuned = LlamaForCausalLM(config)  # a different random init; only its shapes are kept
        with torch.no_grad():
            for name, param in tuned.named_parameters():
                param.copy_(base.get_parameter(name) + 0.01 * torch.randn_like(param))
        tuned.save_pretrained(root / f"ft{i}")
    paths = {name: str(root / name) for name in ("base", "ft1", "ft2")}
    states = {}
    for name, path in paths.items():
        loaded = LlamaForCausalLM.from_pretrained(path).state_dict()
        states[name] = {k: v.detach().float() for k, v in loaded.items()}
    return root, paths, states


def mergekit_merge(root, yaml_text: str, name: str) -> dict[str, torch.Tensor]:
    config = MergeConfiguration.model_validate(yaml.safe_load(yaml_text))
    out = root / f"out_{name}"
    run_merge(
        config,
        str(out),
        MergeOptions(device="cpu", copy_tokenizer=False, write_model_card=False, quiet=True),
    )
    return load_file(str(out / "model.safetensors"))


def layer_t(tensor_name: str) -> float:
    match = re.search(r"\.layers\.(\d+)\.", tensor_name)
    if match is None:
        return 0.0  # embeddings, final norm and lm_head
    return int(match.group(1)) / (N_LAYERS - 1)


def evaluate(setting, tensor_name: str, t: float):
    """mergekit's parameter value for one tensor: filters first, then gradients."""
    if isinstance(setting, list) and setting and isinstance(setting[0], dict):
        for cond in setting:
            if cond.get("filter") in (None, "*") or cond["filter"] in tensor_name:
                return evaluate(cond["value"], tensor_name, t)
        raise AssertionError(f"no filter matched {tensor_name}")
    if isinstance(setting, list):
        scaled = t * (len(setting) - 1)
        i0 = int(scaled)
        i1 = min(len(setting) - 1, i0 + 1)
        frac = scaled - i0
        return (1 - frac) * setting[i0] + frac * setting[i1]
    return setting


def evomm_merge(states, recipe: dict) -> dict[str, torch.Tensor]:
    """The same merge with evomm's methods, tensor by tensor, from the parsed YAML."""
    spec = get_method(recipe["merge_method"])
    base_name = recipe.get("base_model")
    sources = [m for m in recipe["models"] if m["model"] != base_name]
    out = {}
    for tensor_name in states["base"]:
        t = layer_t(tensor_name)
        params = {
            key: evaluate(value, tensor_name, t)
            for key, value in recipe.get("parameters", {}).items()
        }
        for key in spec.tensor_params:
            values = [m.get("parameters", {}).get(key) for m in sources]
            if any(v is not None for v in values):
                params[key] = [evaluate(v, tensor_name, t) for v in values]
        base = states[os.path.basename(base_name)][tensor_name] if base_name else None
        tensors = [states[os.path.basename(m["model"])][tensor_name] for m in sources]
        out[tensor_name] = spec.merge(base, tensors, params)
    return out


CASES = {
    "linear": """
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.5}}
  - model: {ft1}
    parameters: {{weight: 0.3}}
  - model: {ft2}
    parameters: {{weight: [0.2, 0.8]}}
dtype: float32
""",
    "linear_unnormalized": """
merge_method: linear
models:
  - model: {ft1}
    parameters: {{weight: 0.7}}
  - model: {ft2}
    parameters: {{weight: [0.1, 0.6]}}
parameters: {{normalize: false}}
dtype: float32
""",
    "task_arithmetic": """
merge_method: task_arithmetic
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 0.6}}
  - model: {ft2}
    parameters: {{weight: [0.2, 0.8]}}
parameters: {{lambda: 1.5}}
dtype: float32
""",
    "ties": """
merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 0.5, density: 0.5}}
  - model: {ft2}
    parameters: {{weight: [0.2, 0.8], density: 0.5}}
dtype: float32
""",
    "ties_rescale_lambda": """
merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 1.0, density: 0.3}}
  - model: {ft2}
    parameters: {{weight: 0.4, density: [0.7, 0.2]}}
parameters: {{normalize: false, rescale: true, lambda: 0.8}}
dtype: float32
""",
    "slerp": """
merge_method: slerp
base_model: {base}
models:
  - model: {base}
  - model: {ft1}
parameters:
  t:
    - filter: self_attn
      value: [0.0, 0.5, 0.3, 0.7, 1.0]
    - filter: mlp
      value: [1.0, 0.5, 0.7, 0.3, 0.0]
    - value: [0.2, 0.6]
dtype: float32
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 0.6, density: 0.7, gamma: 0.05}}
  - model: {ft2}
    parameters: {{weight: 0.4, density: 0.5, gamma: 0.1}}
dtype: float32
""",
    "model_stock": """
merge_method: model_stock
base_model: {base}
models:
  - model: {ft1}
  - model: {ft2}
dtype: float32
""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_mergekit(checkpoints, case):
    root, paths, states = checkpoints
    yaml_text = CASES[case].format(**paths)
    theirs = mergekit_merge(root, yaml_text, case)
    ours = evomm_merge(states, yaml.safe_load(yaml_text))
    assert set(theirs) == set(ours)
    for name, expected in theirs.items():
        diff = (ours[name] - expected.float()).abs().max().item()
        assert diff <= TOLERANCE, f"{case}: {name} differs from mergekit by {diff}"


def test_merge_is_not_trivial(checkpoints):
    """Guard against a vacuous comparison: the merges really move the tensors off the base."""
    _, _, states = checkpoints
    name = "model.layers.1.mlp.up_proj.weight"
    merged = get_method("ties").merge(
        states["base"][name], [states["ft1"][name], states["ft2"][name]],
        {"weight": [0.5, 0.5], "density": [0.5, 0.5]},
    )
    assert (merged - states["base"][name]).abs().max() > 1e-3


DETERMINISTIC = ["linear", "linear_unnormalized", "task_arithmetic", "ties", "ties_rescale_lambda", "slerp"]


@pytest.mark.parametrize("case", DETERMINISTIC)
def test_evomm_merge_command_gives_mergekits_tensors(checkpoints, case, tmp_path):
    """The whole `evomm merge CONFIG OUT_DIR` path on a mergekit YAML, against mergekit's output."""
    from evomm.cli import main as cli_main

    root, paths, _ = checkpoints
    yaml_text = CASES[case].format(**paths)
    config = tmp_path / f"{case}.yaml"
    config.write_text(yaml_text)
    assert cli_main(["merge", str(config), str(tmp_path / "ours"), "--device", "cpu"]) == 0
    ours = load_file(str(tmp_path / "ours" / "model.safetensors"))
    theirs = mergekit_merge(root, yaml_text, f"cli_{case}")
    assert set(ours) == set(theirs)
    for name, expected in theirs.items():
        diff = (ours[name].float() - expected.float()).abs().max().item()
        assert diff <= TOLERANCE, f"{case}: {name} differs from mergekit by {diff}"


# ---- bf16 checkpoints: many task-vector magnitudes tie at every trim threshold ----------------
BF16_LAYERS = 2
BF16_CASES = {
    # mergekit's examples/ties.yml, on bf16 experts
    "ties": """
merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{density: [1, 0.7, 0.1], weight: 1.0}}
  - model: {ft2}
    parameters: {{density: 0.5, weight: [0, 0.3, 0.7, 1]}}
  - model: {ft3}
    parameters:
      density: 0.33
      weight:
        - filter: mlp
          value: 0.5
        - value: 0
parameters: {{normalize: true, int8_mask: true}}
dtype: {dtype}
""",
    "ties_rescale": """
merge_method: ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{density: 0.3, weight: 0.6}}
  - model: {ft2}
    parameters: {{density: [0.9, 0.2], weight: 0.8}}
parameters: {{normalize: false, rescale: true, lambda: 1.2}}
dtype: {dtype}
""",
    "dare_ties_density_1": """
merge_method: dare_ties
base_model: {base}
models:
  - model: {ft1}
    parameters: {{density: 1.0, weight: 0.7}}
  - model: {ft2}
    parameters: {{density: 1.0, weight: [0.2, 0.9]}}
  - model: {ft3}
    parameters: {{density: 1.0, weight: -0.3}}
dtype: {dtype}
""",
    "della_density_1": """
merge_method: della
base_model: {base}
models:
  - model: {ft1}
    parameters: {{density: 1.0, weight: 0.7, epsilon: 0.05}}
  - model: {ft2}
    parameters: {{density: 1.0, weight: [0.2, 0.9]}}
parameters: {{epsilon: 0.05}}
dtype: {dtype}
""",
    "breadcrumbs": """
merge_method: breadcrumbs
base_model: {base}
models:
  - model: {ft1}
    parameters: {{weight: 0.6, density: 0.7, gamma: 0.05}}
  - model: {ft2}
    parameters: {{weight: 0.4, density: [0.5, 0.9], gamma: 0.1}}
dtype: {dtype}
""",
}


@pytest.fixture(scope="module")
def bf16_checkpoints(tmp_path_factory):
    """A bf16 base and three bf16 experts = base + 0.001 * randn (realistic shapes: 512 x 1376
    MLP matrices, 7.4M parameters), whose task vectors take few distinct values."""
    root = tmp_path_factory.mktemp("mergekit_bf16")
    config = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=BF16_LAYERS,
                         num_attention_heads=8, num_key_value_heads=8, vocab_size=1024,
                         max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config).to(torch.bfloat16)
    base.save_pretrained(root / "base")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in (1, 2, 3):
            tuned = LlamaForCausalLM(config).to(torch.bfloat16)
            for name, param in tuned.named_parameters():
                noise = 0.001 * torch.randn(param.shape, generator=g)
                param.copy_((base.get_parameter(name).float() + noise).to(torch.bfloat16))
            tuned.save_pretrained(root / f"ft{i}")
    return root, {name: str(root / name) for name in ("base", "ft1", "ft2", "ft3")}, {}


def mergekit_bf16(bf16_checkpoints, case: str, dtype: str) -> dict[str, torch.Tensor]:
    root, paths, done = bf16_checkpoints
    if (case, dtype) not in done:
        done[(case, dtype)] = mergekit_merge(root, BF16_CASES[case].format(dtype=dtype, **paths), f"{case}_{dtype}")
    return done[(case, dtype)]


def test_bf16_task_vectors_tie_at_the_threshold(bf16_checkpoints):
    """Guard against a vacuous comparison: entries at or above the k-th largest magnitude
    outnumber k by more than 1% at the densities the cases use (keeping them all was the bug)."""
    _, paths, _ = bf16_checkpoints
    name = "model.layers.0.mlp.up_proj.weight"
    base, ft1 = (load_file(f"{paths[m]}/model.safetensors")[name].float() for m in ("base", "ft1"))
    magnitudes = (ft1 - base).abs().reshape(-1)
    for density in (0.1, 0.2, 0.33, 0.7, 0.9):
        k = int(density * magnitudes.numel())
        at_least = int((magnitudes >= magnitudes.kthvalue(magnitudes.numel() - k + 1).values).sum())
        assert at_least > 1.005 * k, density


@pytest.mark.parametrize("kernels", ["numba", "torch"])
@pytest.mark.parametrize("case", sorted(BF16_CASES))
def test_evomm_merge_on_bf16_checkpoints_equals_mergekit(bf16_checkpoints, case, kernels, tmp_path, monkeypatch):
    """`evomm merge` of the YAML computing in float32 (dtype: float32): mergekit's tensors, bit
    for bit. With dtype: bfloat16 mergekit computes in bf16 (rounded task vectors, bf16 sums);
    evomm computes in float32 and rounds once, so it writes mergekit's float32 result in bf16."""
    from evomm.cli import main as cli_main

    monkeypatch.setenv("EVOMM_KERNELS", kernels)
    _, paths, _ = bf16_checkpoints
    for dtype in ("float32", "bfloat16"):
        config = tmp_path / f"{case}_{dtype}.yaml"
        config.write_text(BF16_CASES[case].format(dtype=dtype, **paths))
        assert cli_main(["merge", str(config), str(tmp_path / dtype), "--device", "cpu"]) == 0
        ours = load_file(str(tmp_path / dtype / "model.safetensors"))
        theirs = mergekit_bf16(bf16_checkpoints, case, "float32")
        assert set(ours) == set(theirs)
        for name, expected in theirs.items():
            assert ours[name].dtype == getattr(torch, dtype)
            assert torch.equal(ours[name], expected.to(ours[name].dtype)), (case, dtype, name)


@pytest.mark.parametrize("kernels", ["numba", "torch"])
@pytest.mark.parametrize("case", ["ties", "dare_ties_density_1"])
def test_in_place_engine_on_bf16_checkpoints_equals_mergekit(bf16_checkpoints, case, kernels, monkeypatch):
    """The search's path: the adapter's resident float32 target, merged in place, twice (the
    second merge takes the cached magnitude index and tie orders)."""
    from evomm.adapters.llm import LLMAdapter
    from evomm.merging.engine import materialize
    from evomm.interop.mergekit_config import recipe_from_mergekit

    monkeypatch.setenv("EVOMM_KERNELS", kernels)
    _, paths, _ = bf16_checkpoints
    recipe = recipe_from_mergekit(yaml.safe_load(BF16_CASES[case].format(dtype="float32", **paths)))
    adapter = LLMAdapter(models=recipe.models, base=recipe.base, dtype="float32", device="cpu",
                         require_tokenizer=False)
    theirs = mergekit_bf16(bf16_checkpoints, case, "float32")
    for _ in range(2):
        materialize(adapter.slots(), recipe)
        for slot in adapter.slots():
            assert torch.equal(slot.target, theirs[slot.name]), (case, slot.name)


def test_a_mergekit_yaml_keeps_mergekits_ties_and_an_explicit_choice_wins():
    """recipe_from_mergekit sets tie_order: mergekit for the magnitude trims (ties, breadcrumbs)
    unless the YAML names one (an exported evomm recipe carries its own), and nothing elsewhere."""
    from evomm.interop.mergekit_config import recipe_from_mergekit

    def recipe(method, **top):
        return recipe_from_mergekit({"merge_method": method, "base_model": "b", "parameters": top,
                                     "models": [{"model": "a", "parameters": {"weight": 1.0}}]})

    assert recipe("ties").method_params["tie_order"] == "mergekit"
    assert recipe("breadcrumbs").method_params["tie_order"] == "mergekit"
    assert recipe("ties", tie_order="index").method_params["tie_order"] == "index"
    assert "tie_order" not in recipe("dare_ties").method_params
