"""The adapter contract, written once and run for every built-in modality (llm, vlm, sdxl).

What the engine, the loop and `evomm merge` rely on: the slots cover mergeable tensors of the
resident target without overlap, each source can be shown exactly, a recipe is written in place
(no new parameter storage), and save_merged writes a model that loads back with the same tensors.
"""

import pytest
import torch

from evomm.adapters import adapter_for_recipe, build_adapter
from evomm.adapters.apply import apply_recipe, show_source
from evomm.adapters.base import Adapter
from evomm.recipe.recipe import Entry, Recipe

SETUPS = {
    "llm": dict(models=["builtin:tiny-llm-a", "builtin:tiny-llm-b"], base="builtin:tiny-llm-base"),
    "vlm": dict(models=["builtin:tiny-llava", "builtin:tiny-text-llm"], base="builtin:tiny-text-base"),
    "sdxl": dict(models=["builtin:tiny-sdxl-a", "builtin:tiny-sdxl-b"], base="builtin:tiny-sdxl-a"),
}


@pytest.fixture(scope="module", params=sorted(SETUPS))
def adapter(request):
    return build_adapter(request.param, **SETUPS[request.param], device="cpu")


def linear(adapter, weights):
    return Recipe(adapter=adapter.name, method="linear", models=list(adapter.source_names), base=adapter.base_name,
                  entries=[Entry(params={"weight": list(weights)})], seed=0)


def test_follows_the_protocol(adapter):
    assert isinstance(adapter, Adapter)
    assert adapter.modality == adapter.name
    assert isinstance(adapter.notes(), dict)
    assert set(adapter.layer_groups()) <= set(adapter.groups())


def test_slots_cover_distinct_target_memory_with_matching_inputs(adapter):
    slots = adapter.slots()
    assert {s.group for s in slots} <= set(adapter.groups())
    spans = []
    for s in slots:
        assert len(s.sources) == len(adapter.source_names)
        assert all(src.shape == s.target.shape for src in s.sources)
        assert s.base is None or s.base.shape == s.target.shape
        start = s.target.data_ptr()
        spans.append((start, start + s.target.numel() * s.target.element_size()))
    spans.sort()
    assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:])), "slots overlap"


def test_show_source_writes_each_source_exactly(adapter):
    for i in range(len(adapter.source_names)):
        show_source(adapter, i)
        assert all(torch.equal(s.target, s.sources[i]) for s in adapter.slots())
    show_source(adapter, None)
    assert all(torch.equal(s.target, s.base) for s in adapter.slots() if s.base is not None)


def test_a_recipe_is_written_in_place(adapter):
    params = {n: p.data_ptr() for n, p in _model(adapter).named_parameters()}
    apply_recipe(adapter, linear(adapter, [0.0, 1.0]))
    assert all(torch.equal(s.target, s.sources[1]) for s in adapter.slots())
    apply_recipe(adapter, linear(adapter, [0.5, 0.5]))
    for s in adapter.slots():
        expected = (s.sources[0].float() + s.sources[1].float()) / 2
        assert torch.allclose(s.target.float(), expected, atol=1e-6)
    assert {n: p.data_ptr() for n, p in _model(adapter).named_parameters()} == params


def test_save_merged_loads_back_with_the_same_tensors(adapter, tmp_path):
    recipe = linear(adapter, [0.3, 0.7])
    apply_recipe(adapter, recipe)
    adapter.save_merged(tmp_path / "merged")
    reloaded = adapter_for_recipe(Recipe(adapter=adapter.name, method="linear", models=[str(tmp_path / "merged")],
                                         entries=[Entry(params={"weight": [1.0]})], seed=0), device="cpu")
    ours, theirs = _model(adapter).state_dict(), _model(reloaded).state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def _model(adapter):
    return adapter.pipeline.unet if adapter.name == "sdxl" else adapter.model
