"""The composition world: disjoint splits, no target item in any corpus, determinism, the task."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.toy import compose_world as cw
from evomm.toy.tokenizer import build_tokenizer
from evomm.tasks import build_task

DESIGNS = [cw.DEFAULT, cw.Design(aligned=False), cw.Design(spelled_ops=True, split_seed=3),
           cw.Design(bridge_pairs=31, math_operands=13), cw.Design(inline=True),
           cw.Design(inline=True, base_ops=("+",), target_ops=("-", "*"), target_min_operand=2)]


@pytest.mark.parametrize("design", DESIGNS)
def test_bridge_fitness_and_heldout_share_no_operand_pair(design):
    splits = design.pair_splits()
    every = {f.pair for f in cw.facts(("+",), design.operands)}
    assert set().union(*map(set, splits.values())) == every
    assert sum(len(p) for p in splits.values()) == len(every)  # a partition
    assert len(splits["bridge"]) == design.bridge_pairs
    assert abs(len(splits["fitness"]) - len(splits["heldout"])) <= 1
    fit, held = (design.target_items(s) for s in cw.TARGET_SPLITS)
    assert fit and held
    assert not {r["question"] for r in fit} & {r["question"] for r in held}


@pytest.mark.parametrize("design", DESIGNS)
def test_no_corpus_holds_a_target_question(design):
    """Fitness and held-out questions appear nowhere in training, with or without answers."""
    lines = design.training_lines()
    questions = [r["question"] for s in cw.TARGET_SPLITS for r in design.target_items(s)]
    assert not [q for q in questions if any(q in line for line in lines)]
    # while the bridge's Japanese items are there: the base does see some Japanese arithmetic
    bridge = [design.ja_line(f) for f in design.split_facts("bridge", design.base_ops)]
    assert bridge and set(bridge) <= lines


def test_answers_are_right_and_every_line_tokenizes():
    design = cw.DEFAULT
    fns = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for split in cw.TARGET_SPLITS:
        for r in design.target_items(split):
            a, op, b = re.search(r"(\d+) (\S) (\d+)", r["question"]).groups()
            assert int(r["answer"]) == fns[op](int(a), int(b)) >= 0
    tok = build_tokenizer()
    for line in design.training_lines():
        assert tok.unk_token_id not in tok(line)["input_ids"], line


def test_world_is_deterministic():
    a, b = cw.Design(), cw.Design()
    assert a.target_items("heldout") == b.target_items("heldout")
    mix = {"english_arith_math": 1, "japanese_qa": 1, "parallel": 2}
    assert a.sample(mix, 40, seed=5) == b.sample(mix, 40, seed=5)
    assert a.sample(mix, 40, seed=5) != a.sample(mix, 40, seed=6)
    assert cw.Design(split_seed=1).pair_splits() != a.pair_splits()


def test_majority_rate_is_the_share_of_the_most_common_fitness_answer():
    design = cw.DEFAULT
    rate = cw.majority_rate(design)
    held = [r["answer"] for r in design.target_items("heldout")]
    assert rate in {held.count(x) / len(held) for x in set(held)}
    assert 0 < rate < 0.5


# --- the task -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_handle():
    tok = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return LLMHandle(model=LlamaForCausalLM(config).eval(), tokenizer=tok)


def test_task_scores_items_and_follows_the_item_contract(tiny_handle, monkeypatch):
    import evomm.tasks.toy_ja_math as mod

    task = build_task("toy_ja_math", fitness_samples=10)
    task.validate()
    records = task.records("fitness")
    assert task.num_items("fitness") == len(records) == 10
    assert task.num_items("heldout") == len(cw.DEFAULT.target_items("heldout"))
    index = {task.design.ja_prompt(r["question"]): i for i, r in enumerate(records)}

    def fake_generate(model, tokenizer, prompts, **kw):
        """Item 0: right, in Japanese; item 1: right number, bare; the rest: wrong, in Japanese."""
        outs = []
        for p in prompts:
            i = index[p]
            outs.append({0: f" {records[0]['answer']} です", 1: f" {records[1]['answer']}"}.get(i, " 999 です"))
        return outs

    monkeypatch.setattr(mod, "generate_texts", fake_generate)
    full = task.evaluate(tiny_handle, "fitness")
    assert full["item_scores"][0] == 1.0 and sum(full["item_scores"]) == 1.0
    assert full["fitness"] == pytest.approx(sum(full["item_scores"]) / 10)
    assert full["number_rate"] == pytest.approx(0.2) and full["japanese_rate"] == pytest.approx(0.9)
    op0 = {"+": "plus", "-": "minus", "*": "times"}[records[0]["op"]]
    same_op = sum(r["op"] == records[0]["op"] for r in records)
    assert full[f"accuracy_{op0}"] == pytest.approx(1 / same_op)
    part = task.evaluate(tiny_handle, "fitness", items=[3, 0])
    assert part["item_scores"] == [0.0, 1.0] and part["fitness"] == 0.5
    with pytest.raises(ConfigError, match="outside"):
        task.evaluate(tiny_handle, "fitness", items=[10])


def test_task_runs_a_real_model_and_rejects_bad_options(tiny_handle):
    task = build_task("toy_ja_math", fitness_samples=6, heldout_samples=5)
    out = task.evaluate(tiny_handle, "heldout")
    assert len(out["item_scores"]) == 5 and out["fitness"] == sum(out["item_scores"]) / 5
    with pytest.raises(ConfigError, match="fitness_samples"):
        build_task("toy_ja_math", fitness_samples=0)
    with pytest.raises(ConfigError, match="splits"):
        task.records("test")


# --- the shipped models and the experiment ------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evomm.builtin import resolve

    out = {}
    for name in ("base", "ja", "math"):
        path = resolve(f"builtin:toy-compose-{name}")
        out[name] = LLMHandle(AutoModelForCausalLM.from_pretrained(path).eval(),
                              AutoTokenizer.from_pretrained(path))
    return out


def test_shipped_models_load_are_small_and_fine_tunes_stay_near_the_base(shipped):
    from pathlib import Path

    folder = Path(cw.__file__).parent / "models" / "compose"
    assert sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) < 20 * 2**20
    states = {n: h.model.state_dict() for n, h in shipped.items()}
    assert {k: v.shape for k, v in states["ja"].items()} == {k: v.shape for k, v in states["base"].items()}
    base_norm = sum(float(v.pow(2).sum()) for v in states["base"].values()) ** 0.5
    for expert in ("ja", "math"):  # a short, gentle fine-tune: a task vector small next to the weights
        tau = sum(float((states[expert][k] - v).pow(2).sum()) for k, v in states["base"].items()) ** 0.5
        assert 0 < tau < 0.2 * base_norm


def test_each_expert_brings_what_the_target_needs(shipped):
    """The world's premise: the math expert has the numbers, the Japanese expert the Japanese form."""
    task = build_task("toy_ja_math")
    scores = {n: task.evaluate(h, "fitness") for n, h in shipped.items()}
    assert scores["math"]["number_rate"] > scores["ja"]["number_rate"]
    assert scores["math"]["number_rate"] > scores["base"]["number_rate"]
    assert scores["ja"]["japanese_rate"] > scores["math"]["japanese_rate"]
    assert scores["ja"]["japanese_rate"] > scores["base"]["japanese_rate"]


def test_demo_compose_runs_on_the_builtin_models(tmp_path):
    import json
    from pathlib import Path

    from conftest import compose

    from evomm.runner import run

    out = run(compose([
        "experiment=demo_compose", f"run_dir={tmp_path / 'run'}", "logger=none",
        "optimizer.popsize=2", "optimizer.generations=1", "save_merged=false",
    ]))
    rows = json.loads((Path(out["run_dir"]) / "results.json").read_text())
    assert [r["kind"] for r in rows] == ["evolved"] + ["source"] * 3 + ["baseline"] * 3
    for r in rows:
        assert "item_scores" not in r["metrics"] and "error" not in r
        assert 0.0 <= r["metrics"]["accuracy_times"] <= 1.0
    history = [json.loads(line) for line in (Path(out["run_dir"]) / "history.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(h["error"] is None for h in history)


def test_training_script_is_deterministic_and_fine_tunes_start_from_the_base(tmp_path):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_compose_llm.py"
    spec = importlib.util.spec_from_file_location("train_compose_llm", path)
    trainer = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("train_compose_llm", trainer)  # dataclasses look their module up
    spec.loader.exec_module(trainer)
    stages = (trainer.Stage("base", None, trainer.BASE_MIX, steps=3, lr=1e-3, batch_size=4),
              trainer.Stage("math", "base", trainer.MATH_MIX, steps=2, lr=1e-3, batch_size=4, seed=2))
    variant = trainer.Variant(cw.DEFAULT, stages, hidden=32, layers=2)
    first = trainer.train_variant(variant, tmp_path / "a", log=lambda _: None)
    second = trainer.train_variant(variant, None, log=lambda _: None)
    for name in ("base", "math"):
        a, b = first[name].state_dict(), second[name].state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert 0 < trainer.relative_norm(first["math"], first["base"]) < 0.2
    assert (tmp_path / "a" / "math" / "model.safetensors").is_file()
    assert trainer.VARIANTS[trainer.DEFAULT_VARIANT].design == cw.DEFAULT  # the shipped world
