"""task=multi: several tasks as one task with a vector of objectives; toy_skill: one toy skill."""

from __future__ import annotations

import pytest

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.tasks import build_task

TWO_SKILLS = {"arith": {"name": "toy_skill", "skill": "english_arith", "fitness_samples": 8},
              "ja": {"name": "toy_skill", "skill": "japanese_qa", "fitness_samples": 6}}


@pytest.fixture(scope="module")
def handle():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomm.builtin import resolve

    path = resolve("builtin:toy-llm-math")
    return LLMHandle(model=AutoModelForCausalLM.from_pretrained(path).eval(),
                     tokenizer=AutoTokenizer.from_pretrained(path))


def test_toy_skill_scores_toy_skills_items(handle):
    both = build_task("toy_skills", fitness_samples=8, seed=2)
    one = build_task("toy_skill", skill="japanese_qa", fitness_samples=8, seed=2)
    assert one.items("fitness") == both.items("japanese_qa", "fitness")
    joint = build_task("multi", seed=2, tasks={
        "arith": {"name": "toy_skill", "skill": "english_arith", "fitness_samples": 8},
        "ja": {"name": "toy_skill", "skill": "japanese_qa", "fitness_samples": 8}})
    m, ref = joint.evaluate(handle, "fitness"), both.evaluate(handle, "fitness")
    assert m["fitness"] == pytest.approx(ref["fitness"])  # equal weights: toy_skills' mean
    assert m["arith/fitness"] == ref["english_arith"] and m["ja/fitness"] == ref["japanese_qa"]


def test_objectives_metrics_and_item_scores(handle):
    task = build_task("multi", tasks={**TWO_SKILLS, "ja": {**TWO_SKILLS["ja"], "weight": 3.0}})
    task.validate()
    assert task.objectives == ["arith", "ja"] and task.num_items("fitness") == 14
    m = task.evaluate(handle, "fitness")
    values = task.objective_values(m)
    assert values == [m["arith/fitness"], m["ja/fitness"]] and values[0] != values[1]
    assert m["fitness"] == pytest.approx((values[0] + 3 * values[1]) / 4)
    assert m["arith/n"] == 8 and m["ja/n"] == 6
    scores = m["item_scores"]
    assert len(scores) == 14 and sum(scores) / 14 == pytest.approx(m["fitness"])
    held = task.evaluate(handle, "heldout")
    assert held["arith/n"] > 8  # each objective's own held-out split


def test_items_map_to_each_objective(handle):
    task = build_task("multi", tasks=TWO_SKILLS)
    full = {o: t.evaluate(handle, "fitness") for o, t in task.tasks.items()}
    part = task.evaluate(handle, "fitness", items=[1, 9, 10])  # arith item 1, ja items 1 and 2
    assert part["arith/n"] == 1 and part["ja/n"] == 2
    assert part["arith/fitness"] == full["arith"]["item_scores"][1]
    only_ja = task.evaluate(handle, "fitness", items=[12])
    assert "arith/fitness" not in only_ja and only_ja["fitness"] == only_ja["ja/fitness"]


def test_seed_and_resample_reach_every_objective():
    task = build_task("multi", seed=5, tasks=TWO_SKILLS)
    assert all(t.seed == 5 for t in task.tasks.values())
    before = task.tasks["arith"].items("fitness")
    task.resample(2)
    assert task.tasks["arith"].items("fitness") != before and task.tasks["ja"].sample_round == 2
    fixed = build_task("multi", tasks={"a": {"name": "toy_skill", "seed": 9}})
    assert fixed.tasks["a"].seed == 9


def test_config_errors():
    with pytest.raises(ConfigError, match="objective names"):
        build_task("multi", tasks={})
    with pytest.raises(ConfigError, match="weight >= 0"):
        build_task("multi", tasks={"a": {"name": "toy_skill", "weight": -1}})
    with pytest.raises(ConfigError, match="weight > 0"):
        build_task("multi", tasks={"a": {"name": "toy_skill", "weight": 0}})
    with pytest.raises(ConfigError, match="same modality"):
        build_task("multi", tasks={"a": {"name": "toy_skill"}, "b": {"name": "clip_score"}})
    with pytest.raises(Exception, match="unknown task 'nope'"):
        build_task("multi", tasks={"nope": {}})
    with pytest.raises(ConfigError, match="skill must be one of"):
        build_task("toy_skill", skill="french")
