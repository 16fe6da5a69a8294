"""toy_skills: disjoint halves, and each shipped expert is better at its own skill."""

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from evomm.adapters.base import LLMHandle
from evomm.builtin import resolve
from evomm.errors import ConfigError
from evomm.tasks import build_task
from evomm.tasks.toy_skills import SKILLS, skill_split


def test_halves_are_disjoint_and_cover_each_skill():
    for skill in SKILLS:
        fit, held = skill_split(skill, "fitness"), skill_split(skill, "heldout")
        assert fit and held and not set(fit) & set(held)
        assert abs(len(fit) - len(held)) <= 1


def handle(name):
    path = resolve(f"builtin:toy-llm-{name}")
    return LLMHandle(AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path))


def test_each_expert_is_better_at_its_own_skill():
    task = build_task("toy_skills", fitness_samples=24, heldout_samples=24)
    task.validate()
    ja, math = task.evaluate(handle("ja"), "heldout"), task.evaluate(handle("math"), "heldout")
    assert math["english_arith"] > ja["english_arith"]
    assert ja["japanese_qa"] > math["japanese_qa"]
    for m in (ja, math):
        assert m["fitness"] == pytest.approx((m["english_arith"] + m["japanese_qa"]) / 2)


def test_bad_options():
    with pytest.raises(ConfigError, match="fitness_samples"):
        build_task("toy_skills", fitness_samples=0)
    with pytest.raises(ConfigError, match="splits"):
        build_task("toy_skills").items("english_arith", "test")
