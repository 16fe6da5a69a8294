"""The text-LLM adapter and the in-place engine on tiny models loaded from disk."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from evomm.adapters.llm import LLMAdapter
from evomm.adapters.llm_names import llm_group
from evomm.builtin import resolve
from evomm.errors import ConfigError, IncompatibleModelsError, ModelLoadError
from evomm.merging.engine import materialize, tensor_seed, write_source
from evomm.recipe.recipe import Entry, Recipe


@pytest.fixture(scope="module")
def refs():
    return [resolve("builtin:tiny-llm-a"), resolve("builtin:tiny-llm-b")], resolve("builtin:tiny-llm-base")


@pytest.fixture(scope="module")
def adapter(refs):
    models, base = refs
    return LLMAdapter(models=models, base=base, device="cpu")


def test_groups_follow_the_decoder_stack(adapter):
    assert adapter.groups() == ["embed", "layers.0", "layers.1", "norm", "head"]
    assert adapter.layer_groups() == ["layers.0", "layers.1"]
    assert llm_group("model.layers.11.self_attn.q_proj.weight") == "layers.11"
    slots = {s.name: s for s in adapter.slots()}
    assert slots["model.embed_tokens.weight"].t == 0.0
    assert slots["model.layers.1.mlp.up_proj.weight"].t == 1.0
    assert slots["lm_head.weight"].group == "head"
    # every parameter of the target is covered by exactly one slot
    assert sorted(slots) == sorted(n for n, _ in adapter.model.named_parameters())


def test_linear_merge_is_written_in_place(adapter, refs):
    models, _ = refs
    a = AutoModelForCausalLM.from_pretrained(models[0])
    b = AutoModelForCausalLM.from_pretrained(models[1])
    before = {n: p.data_ptr() for n, p in adapter.model.named_parameters()}
    recipe = Recipe(adapter="llm", method="linear", models=models, entries=[Entry(params={"weight": [0.25, 0.75]})])
    materialize(adapter.slots(), recipe)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    for name, p in adapter.model.named_parameters():
        assert p.data_ptr() == before[name]  # no new tensors: written in place
        torch.testing.assert_close(p.data, 0.25 * pa[name].data + 0.75 * pb[name].data, rtol=0, atol=1e-6)


def test_write_source_restores_each_model(adapter, refs):
    models, base = refs
    for index, ref in [(0, models[0]), (1, models[1]), (None, base)]:
        write_source(adapter.slots(), index)
        expected = dict(AutoModelForCausalLM.from_pretrained(ref).named_parameters())
        for name, p in adapter.model.named_parameters():
            assert torch.equal(p.data, expected[name].data)


def test_dare_masks_depend_on_seed_and_name_only(adapter, refs):
    models, base = refs
    r = Recipe(adapter="llm", method="dare_ties", models=models, base=base, seed=3,
               entries=[Entry(params={"weight": [1.0, 1.0], "density": [0.5, 0.5]})])
    materialize(adapter.slots(), r)
    first = {n: p.detach().clone() for n, p in adapter.model.named_parameters()}
    write_source(adapter.slots(), 0)
    materialize(adapter.slots(), r)
    assert all(torch.equal(first[n], p) for n, p in adapter.model.named_parameters())
    assert tensor_seed(3, "a") == tensor_seed(3, "a") != tensor_seed(4, "a")


def test_task_vector_method_without_base_is_refused(refs):
    models, _ = refs
    ad = LLMAdapter(models=models, device="cpu")
    r = Recipe(adapter="llm", method="ties", models=models, entries=[Entry(params={"weight": [1, 1]})])
    with pytest.raises(ConfigError, match="needs a base"):
        materialize(ad.slots(), r)


def test_shape_mismatch_names_the_tensors(tmp_path, refs):
    models, _ = refs
    cfg = LlamaConfig.from_pretrained(models[0])
    cfg.intermediate_size = 48
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "other")
    with pytest.raises(IncompatibleModelsError, match="intermediate_size"):
        LLMAdapter(models=[models[0], str(tmp_path / "other")], device="cpu")


def test_missing_model_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="does-not-exist"):
        LLMAdapter(models=[str(tmp_path / "does-not-exist")], device="cpu")
    with pytest.raises(ModelLoadError, match="not-a-model"):
        LLMAdapter(models=["not-a-model"], device="cpu")
    with pytest.raises(ConfigError, match="known: builtin:"):
        LLMAdapter(models=["builtin:nope"], device="cpu")
