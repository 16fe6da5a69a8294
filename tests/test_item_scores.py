"""Per-item scores, the tasks' common currency: every task scores any subset of its items.

For each task: ``num_items`` matches the full evaluation's ``item_scores``, fitness is their mean,
and scoring a subset (in any order) gives those items' scores, in that order.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomm.adapters import build_adapter
from evomm.adapters.apply import show_source
from evomm.adapters.base import LLMHandle, SDXLHandle, VLMHandle
from evomm.builtin import resolve
from evomm.toy import tiny_vlm
from evomm.toy.tiny_vqa import write_tiny_vqa
from evomm.tasks import build_task
from evomm.tasks.base import balanced_weights, pick


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def check_contract(task, handle, split: str) -> dict:
    """The contract of ``evaluate(handle, split, items)``; returns the full evaluation."""
    n = task.num_items(split)
    full = task.evaluate(handle, split)
    scores = full["item_scores"]
    assert len(scores) == n >= 3 and all(isinstance(s, float) for s in scores)
    assert full["fitness"] == pytest.approx(sum(scores) / n)
    subset = [n - 1, 0, n // 2]  # out of order on purpose
    part = task.evaluate(handle, split, items=subset)
    assert part["item_scores"] == pytest.approx([scores[i] for i in subset])
    assert part["fitness"] == pytest.approx(sum(part["item_scores"]) / len(subset))
    with pytest.raises(IndexError):
        task.evaluate(handle, split, items=[n])
    return full


def llm(name: str) -> LLMHandle:
    path = resolve(name)
    return LLMHandle(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))


def test_pick_and_weights():
    assert pick("abcd", None) == list("abcd") and pick("abcd", [3, 1]) == ["d", "b"]
    with pytest.raises(IndexError):
        pick("abc", [3])
    w = balanced_weights([3, 1])
    # mean over all items of (correct * weight) is the mean of the group means
    assert (1 * w[0] * 3 + 0 * w[1]) / 4 == pytest.approx((1.0 + 0.0) / 2)


def test_toy_arith():
    task = build_task("toy_arith", fitness_samples=6, batch_size=1)
    full = check_contract(task, llm("builtin:toy-llm-math"), "fitness")
    assert full["fitness"] == full["accuracy"]


def test_toy_skills_weights_make_the_mean_the_fitness():
    # the skills' samples differ in size (32 English, all 21 Japanese), so the weights matter
    task = build_task("toy_skills", fitness_samples=32, batch_size=1)
    full = check_contract(task, llm("builtin:toy-llm-ja"), "fitness")
    assert full["fitness"] == pytest.approx((full["english_arith"] + full["japanese_qa"]) / 2)
    assert task.num_items("fitness") == 32 + 21


def test_mgsm_ja(tmp_path):
    rows = [{"question": f"{a} たす {b} は?", "answer": a + b} for a, b in ((1, 2), (3, 4), (2, 2), (5, 1))]
    paths = []
    for name, part in (("fit", rows), ("held", [{"question": "9 ひく 1 は?", "answer": 8}])):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in part) + "\n", encoding="utf-8")
        paths.append(str(path))
    task = build_task("mgsm_ja", fitness_dataset=paths[0], heldout_dataset=paths[1], max_new_tokens=4,
                      batch_size=1, prompt_template="問: {question} 答:")
    check_contract(task, llm("builtin:toy-llm-math"), "fitness")


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tmp_path_factory.mktemp("vlm")
    tiny_vlm.build_tiny_llava(path)
    return VLMHandle(AutoModelForImageTextToText.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path))


FAST = dict(max_new_tokens=4, num_beams=1, repetition_penalty=1.0, batch_size=1)


def test_ja_vg_vqa_and_ja_vlm_bench(tmp_path, llava):
    data = write_tiny_vqa(tmp_path / "vqa", n_train=5, n_test=3, seed=0)
    check_contract(build_task("ja_vg_vqa", dataset=str(data), fitness_samples=None, **FAST), llava, "train")
    bench = write_tiny_vqa(tmp_path / "bench", n_test=4, seed=1, kind="ja_vlm_bench")
    check_contract(build_task("ja_vlm_bench", dataset=str(bench), **FAST), llava, "test")


def test_toy_vqa_tasks():
    adapter = build_adapter("vlm", models=["builtin:toy-vlm-llava", "builtin:toy-vlm-ja"],
                            base="builtin:toy-vlm-base", device="cpu")
    show_source(adapter, 0)
    skills = build_task("toy_vqa_skills", fitness_samples=4, batch_size=1)
    full = check_contract(skills, adapter.handle(), "fitness")
    assert full["fitness"] == pytest.approx((full["english_vqa"] + full["japanese_qa"]) / 2)
    target = build_task("toy_ja_vqa", fitness_samples=4, batch_size=1)
    assert "right_in_english" in check_contract(target, adapter.handle(), target.fitness_split)


def test_clip_score():
    from evomm.toy.tiny_sdxl import build_tiny_sdxl_pipeline

    task = build_task("clip_score", model_name="evomm-tiny-clip", pretrained=str(resolve("builtin:tiny-clip")),
                      fitness_samples=3, steps=1, height=32, width=32, batch_size=1, seed=5)
    full = check_contract(task, SDXLHandle(build_tiny_sdxl_pipeline(seed=0)), "fitness")
    assert full["clip_score"] == full["fitness"]
