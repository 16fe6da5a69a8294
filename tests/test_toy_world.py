"""The toy world: tokenizer round trip, deterministic data, disjoint splits, no target leakage."""

from __future__ import annotations

import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from transformers import AutoTokenizer

from evomm.toy import world
from evomm.toy.tokenizer import ALPHABET, SPECIAL_TOKENS, build_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


# --- tokenizer --------------------------------------------------------------------------------


def test_tokenizer_is_character_level_and_small(tokenizer):
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(ALPHABET) < 256
    line = "問: 3 たす 4 は いくつ ですか? 答: 7 です"
    ids = tokenizer(line, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(line)  # one token per character, spaces included
    assert tokenizer.convert_ids_to_tokens(ids) == list(line)


def test_every_world_line_is_covered(tokenizer):
    for line in world.all_lines():
        ids = tokenizer(line)["input_ids"]
        assert tokenizer.unk_token_id not in ids, line
        assert ids[0] == tokenizer.bos_token_id
        assert tokenizer.decode(ids, skip_special_tokens=True) == line


def test_tokenizer_normalises_full_width_and_case(tokenizer):
    assert tokenizer("Ｑ： ３？")["input_ids"] == tokenizer("q: 3?")["input_ids"]
    assert tokenizer("€")["input_ids"][1] == tokenizer.unk_token_id


def test_tokenizer_round_trips_through_save_pretrained(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.padding_side == "left"
    assert [loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token] == list(
        SPECIAL_TOKENS
    )
    lines = world.all_lines()[::7]
    assert loaded(lines)["input_ids"] == tokenizer(lines)["input_ids"]
    padded = loaded(["ab", "abcd"], padding=True)
    assert padded["input_ids"][0][:2] == [loaded.pad_token_id] * 2  # left padding
    assert padded["attention_mask"][0] == [0, 0, 1, 1, 1]


# --- data -------------------------------------------------------------------------------------


def test_arithmetic_facts_are_right():
    facts = world.arith_facts()
    ops = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}
    assert len(facts) == 100 + 55 + 100
    for f in facts:
        assert f.result == ops[f.op.en](f.a, f.b) >= 0
    for line in world.english_arith():
        a, op, b, c = re.fullmatch(r"q: \D*(\d) (\w+) (\d)\D* a: (\d+)", line).groups()
        assert int(c) == ops[op](int(a), int(b))


def test_world_is_deterministic():
    assert world.target_split("fitness") == world.target_split("fitness")
    assert world.sample_mix({"english_arith": 1, "japanese_qa": 2}, 50, seed=3) == \
        world.sample_mix({"english_arith": 1, "japanese_qa": 2}, 50, seed=3)
    assert world.sample_mix({"english_arith": 1, "japanese_qa": 2}, 50, seed=3) != \
        world.sample_mix({"english_arith": 1, "japanese_qa": 2}, 50, seed=4)
    assert world.target_split("fitness", seed=0) != world.target_split("fitness", seed=1)


def _pair(question: str) -> tuple[int, int]:
    a, b = map(int, re.findall(r"\d+", question))
    return (min(a, b), max(a, b))


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_fitness_and_heldout_share_no_operand_pair(seed):
    fit = world.target_split("fitness", seed)
    held = world.target_split("heldout", seed)
    assert {_pair(r["question"]) for r in fit}.isdisjoint({_pair(r["question"]) for r in held})
    assert len(fit) + len(held) == len(world.arith_facts())
    assert abs(len(fit) - len(held)) < 0.2 * len(fit)
    for rec in fit + held:  # the answer is the number the question asks for
        a, op, b = re.fullmatch(r"問: (\d) (\S+) (\d) は いくつ ですか\?", rec["question"]).groups()
        fn = {o.ja: o.fn for o in world.OPERATORS}[op]
        assert int(rec["answer"]) == fn(int(a), int(b))


def test_training_corpora_never_hold_target_format_arithmetic():
    ja_ops = [op.ja for op in world.OPERATORS]
    for name in world.CORPORA:
        for line in world.corpus(name):
            has_op = any(op in line for op in ja_ops)
            assert not (has_op and ("答" in line or "です" in line)), (name, line)
            assert not (has_op and name != "bilingual"), (name, line)


def test_eval_sets_expect_training_format_answers():
    sets = world.eval_sets()
    assert set(sets) == {"english_arith", "english_qa", "japanese_qa", "target"}
    for prompt, expected in sets["english_arith"]:
        assert prompt.endswith("a:") and expected.isdigit()
    for prompt, expected in sets["japanese_qa"] + sets["target"]:
        assert prompt.endswith("答:") and expected.endswith(" です")
    assert len(sets["target"]) == len(world.target_split("heldout"))


# --- training and the shipped models ----------------------------------------------------------


def test_training_is_deterministic_and_fine_tuning_starts_from_the_parent(tmp_path):
    import torch

    from toytrain.llm import Stage, train_all

    stages = (
        Stage("base", None, {"english_arith": 1, "japanese_qa": 1}, steps=3, lr=1e-3, batch_size=4),
        Stage("math", "base", {"english_arith": 1}, steps=2, lr=1e-3, batch_size=4, seed=2),
    )
    first = train_all(tmp_path / "a", stages)
    second = train_all(tmp_path / "b", stages)
    for name in ("base", "math"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    base, math = first["base"].state_dict(), first["math"].state_dict()
    assert any(not torch.equal(base[k], math[k]) for k in base)
    assert (tmp_path / "a" / "math" / "model.safetensors").is_file()
    assert (tmp_path / "a" / "math" / "tokenizer.json").is_file()


def _chance(pairs: list[tuple[str, str]]) -> float:
    """Accuracy of always giving the most common expected answer."""
    from collections import Counter

    counts = Counter(expected for _, expected in pairs)
    return counts.most_common(1)[0][1] / len(pairs)


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM

    from toytrain.llm import MODEL_NAMES, MODELS_DIR

    return {
        name: (AutoModelForCausalLM.from_pretrained(MODELS_DIR / name),
               AutoTokenizer.from_pretrained(MODELS_DIR / name))
        for name in MODEL_NAMES
    }


def test_shipped_models_are_small_and_share_one_architecture(shipped):
    from toytrain.llm import MODELS_DIR

    size = sum(f.stat().st_size for f in MODELS_DIR.rglob("*") if f.is_file())
    assert size < 5 * 2**20
    shapes = {name: {k: v.shape for k, v in m.state_dict().items()} for name, (m, _) in shipped.items()}
    assert shapes["base"] == shapes["ja"] == shapes["math"]


@pytest.mark.parametrize("name, skill", [
    ("base", "english_qa"), ("base", "japanese_qa"), ("ja", "japanese_qa"), ("math", "english_arith"),
])
def test_shipped_models_beat_chance_on_their_training_formats(shipped, name, skill):
    from toytrain.llm import exact_match

    model, tokenizer = shipped[name]
    pairs = world.eval_sets()[skill]
    assert exact_match(model, tokenizer, pairs) > _chance(pairs)


def test_math_expert_beats_base_at_arithmetic_and_ja_expert_at_japanese(shipped):
    from toytrain.llm import exact_match

    arith, ja_qa = world.eval_sets()["english_arith"], world.eval_sets()["japanese_qa"]
    assert exact_match(*shipped["math"], arith) > exact_match(*shipped["base"], arith)
    assert exact_match(*shipped["ja"], ja_qa) >= exact_match(*shipped["math"], ja_qa)
