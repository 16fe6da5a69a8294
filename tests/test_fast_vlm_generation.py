"""The VLM fast path: the same answers as plain ``model.generate`` (toy LLaVA, routed toy LLaVA),
image features computed once per item and recomputed when the vision side changes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import evomm.toy.vlm_builtins  # noqa: F401 - registers builtin:toy-vlm-*
from evomm.adapters import build_adapter
from evomm.adapters.apply import show_source
from evomm.adapters.base import VLMHandle
from evomm.merging.dfs import Route, RoutedCausalLM
from evomm.vlm_generation import vision_fingerprint, vision_parameters
from evomm.tasks import build_task
from evomm.tasks.ja_vg_vqa import generate_answers


@pytest.fixture(scope="module")
def adapter():
    adapter = build_adapter("vlm", models=["builtin:toy-vlm-llava", "builtin:toy-vlm-ja"],
                            base="builtin:toy-vlm-base", device="cpu")
    show_source(adapter, 0)  # the LLaVA itself: it answers the English VQA items
    return adapter


@pytest.fixture(scope="module")
def task():
    task = build_task("toy_vqa_skills", fitness_samples=24, batch_size=5)
    task.validate()
    return task


def answers(task, handle, cache):
    vqa = task._vqa
    return generate_answers(handle, task.vqa_items("fitness"), vqa.settings["train"], vqa.system_prompt,
                            vqa.prompt, cache=cache)


def test_fast_fitness_equals_plain(adapter, task):
    handle = adapter.handle()
    plain_task = build_task("toy_vqa_skills", fitness_samples=24, batch_size=5, fast_generation=False)
    assert plain_task._vqa.vision_cache is None
    plain = plain_task.evaluate(handle, "fitness")
    assert task.evaluate(handle, "fitness") == plain
    assert plain["english_vqa"] > 0.5  # real answers, not a vacuous comparison
    got = answers(task, handle, task._vqa.vision_cache)
    assert got == answers(task, handle, None)
    assert len(set(got)) > 2


def test_image_features_are_computed_once_and_redone_when_the_vision_side_changes(adapter, task):
    handle = adapter.handle()
    cache = task._vqa.vision_cache
    cache.clear()
    n = len(task.vqa_items("fitness"))
    before = cache.feature_computations
    first = answers(task, handle, cache)
    assert cache.feature_computations == before + n
    assert answers(task, handle, cache) == first
    assert cache.feature_computations == before + n  # the second candidate reused every feature

    # A merge that writes the projector (adapter.mergeable with `projector`) changes the features.
    projector = handle.model.model.multi_modal_projector.linear_2.weight
    assert any(p is projector for p in vision_parameters(handle.model))
    saved = projector.detach().clone()
    fingerprint = vision_fingerprint(handle.model)
    try:
        with torch.no_grad():
            projector.mul_(-1.0)
        assert vision_fingerprint(handle.model) != fingerprint
        changed = answers(task, handle, cache)
        assert cache.feature_computations == before + 2 * n
        assert changed == answers(task, handle, None)
        assert changed != first  # the plain path agrees that the model changed
    finally:
        with torch.no_grad():
            projector.copy_(saved)
    assert answers(task, handle, cache) == first
    assert cache.feature_computations == before + 3 * n


def test_language_model_merges_keep_the_cache(adapter, task):
    handle = adapter.handle()
    cache = task._vqa.vision_cache
    answers(task, handle, cache)
    done = cache.feature_computations
    show_source(adapter, 1)  # the Japanese LM written into the language model: a new candidate
    try:
        handle = adapter.handle()
        assert answers(task, handle, cache) == answers(task, handle, None)
        assert cache.feature_computations == done
    finally:
        show_source(adapter, 0)


def test_routed_vlm_fast_equals_plain(adapter, task):
    from transformers import AutoModelForCausalLM

    from evomm.builtin import resolve

    handle = adapter.handle()
    ja = AutoModelForCausalLM.from_pretrained(resolve("builtin:toy-vlm-ja")).eval()
    route = Route(steps=[(0, 0), (1, 1), (0, 1), (1, 2), (0, 3)], scales=[1.0, 0.9, 1.1, 1.0, 1.0])
    routed = RoutedCausalLM([handle.model, ja], route)
    routed_handle = VLMHandle(routed.lm, handle.processor)
    cache = type(task._vqa.vision_cache)()
    assert answers(task, routed_handle, cache) == answers(task, routed_handle, None)


def test_repetition_penalty_uses_generate_with_the_cached_features(adapter, task):
    """EvoVLM-JP's fitness setting (repetition penalty 1.5): not the greedy loop, but the cache."""
    from dataclasses import replace

    handle = adapter.handle()
    vqa = task._vqa
    settings = replace(vqa.settings["train"], repetition_penalty=1.5, max_new_tokens=6)
    items = task.vqa_items("fitness")
    cache = type(vqa.vision_cache)()
    got = generate_answers(handle, items, settings, vqa.system_prompt, vqa.prompt, cache=cache)
    assert cache.feature_computations == len(items)
    assert got == generate_answers(handle, items, settings, vqa.system_prompt, vqa.prompt, cache=None)
    assert generate_answers(handle, items, settings, vqa.system_prompt, vqa.prompt, cache=cache) == got
    assert cache.feature_computations == len(items)  # the second candidate reused them


def test_a_vlm_the_cached_path_cannot_drive_falls_back_to_plain(adapter, task, monkeypatch, caplog):
    import evomm.tasks.ja_vg_vqa as ja_vg_vqa

    handle = adapter.handle()
    expected = answers(task, handle, None)

    def refuse(*args, **kwargs):
        raise AttributeError("'SomeVLM' object has no attribute 'get_image_features'")

    monkeypatch.setattr(ja_vg_vqa, "greedy_vlm_answers", refuse)
    with caplog.at_level("WARNING", logger="evomm.tasks.ja_vg_vqa"):
        assert answers(task, handle, type(task._vqa.vision_cache)()) == expected
    assert "using model.generate" in caplog.text
