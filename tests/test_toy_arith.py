"""toy_arith: the scoring rule, data loading (built-in and user folders), evaluation on a model."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.toy import world
from evomm.toy.tokenizer import build_tokenizer
from evomm.tasks import build_task
from evomm.tasks.base import Task
from evomm.tasks.toy_arith import ToyArithTask, is_correct, japanese_form_number


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return LLMHandle(model=AutoModelForCausalLM.from_pretrained(path), tokenizer=tokenizer)


def _write_split(folder, name, records):
    folder.mkdir(exist_ok=True)
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records]
    (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


# --- the scoring rule -------------------------------------------------------------------------


@pytest.mark.parametrize("response", [" 7 です", "7 です", "  7   です。", " 7 です\nq: more", "７ です"])
def test_right_number_in_japanese_form_counts(response):
    assert is_correct(response, "7") and is_correct(response, 7)


@pytest.mark.parametrize("response", [" 7", "7", " 8 です", "あお です", "です 7", "17 です", ""])
def test_english_form_or_wrong_number_fails(response):
    assert not is_correct(response, "7")


def test_score_of_perfect_english_and_japanese_only_responses():
    task = ToyArithTask()
    records = world.target_split("fitness")[:20]
    perfect = [f" {world.target_answer(r['answer'])}" for r in records]
    english = [f" {r['answer']}" for r in records]
    wrong_number = [f" {int(r['answer']) + 1} です" for r in records]
    assert task.score(perfect, records) == {"fitness": 1.0, "accuracy": 1.0,
                                            "japanese_rate": 1.0, "n": 20.0}
    assert task.score(english, records)["fitness"] == 0.0
    assert task.score(english, records)["japanese_rate"] == 0.0
    assert task.score(wrong_number, records)["fitness"] == 0.0
    assert task.score(wrong_number, records)["japanese_rate"] == 1.0
    half = perfect[:10] + english[10:]
    assert task.score(half, records)["accuracy"] == 0.5
    assert japanese_form_number(" -3 です") == -3


# --- evaluation -------------------------------------------------------------------------------


def test_task_is_registered_and_follows_the_protocol():
    task = build_task("toy_arith", fitness_samples=10)
    assert isinstance(task, Task) and isinstance(task, ToyArithTask)
    assert (task.modality, task.fitness_split, task.heldout_split) == ("llm", "fitness", "heldout")
    task.validate()


def test_evaluate_with_a_tiny_random_model(handle):
    task = ToyArithTask(fitness_samples=16, max_new_tokens=4, batch_size=5)
    result = task.evaluate(handle, "fitness")
    assert set(result) == {"fitness", "accuracy", "japanese_rate", "n", "item_scores"}
    assert 0.0 <= result["fitness"] <= result["japanese_rate"] <= 1.0
    assert result["n"] == 16
    assert task.evaluate(handle, "fitness") == result  # deterministic


def test_evaluate_counts_what_the_model_writes(handle):
    """Scores equal the scoring rule applied to the model's own responses."""
    task = ToyArithTask(fitness_samples=12, max_new_tokens=4)
    responses = task.responses(handle, "fitness")
    records = task.items("fitness")
    expected = sum(is_correct(r, rec["answer"]) for r, rec in zip(responses, records)) / 12
    assert task.evaluate(handle, "fitness")["accuracy"] == expected


def test_samples_are_seeded_and_come_from_their_split():
    held = {r["question"] for r in world.target_split("heldout")}
    a = ToyArithTask(heldout_samples=30, seed=1).items("heldout")
    assert a == ToyArithTask(heldout_samples=30, seed=1).items("heldout")
    assert a != ToyArithTask(heldout_samples=30, seed=2).items("heldout")
    assert len(a) == 30 and {r["question"] for r in a} <= held
    assert len(ToyArithTask(heldout_samples=10_000).items("heldout")) == len(held)


def test_unknown_split_and_bad_options_raise():
    with pytest.raises(ConfigError, match="splits 'fitness' and 'heldout'"):
        ToyArithTask().items("test")
    with pytest.raises(ConfigError, match="fitness_samples"):
        ToyArithTask(fitness_samples=0)
    with pytest.raises(ConfigError, match="batch_size"):
        ToyArithTask(batch_size=-1)


# --- user data --------------------------------------------------------------------------------


def test_data_dir_is_read(tmp_path, handle):
    _write_split(tmp_path, "fitness", [{"question": "問: 1 たす 1 は いくつ ですか?", "answer": 2},
                                       {"question": "問: 2 かける 3 は いくつ ですか?", "answer": "6"}])
    _write_split(tmp_path, "heldout", [{"question": "問: 5 ひく 1 は いくつ ですか?", "answer": "4"}])
    task = ToyArithTask(data_dir=str(tmp_path), max_new_tokens=3)
    task.validate()
    assert [r["answer"] for r in task.items("fitness")] == ["2", "6"]
    assert task.evaluate(handle, "heldout")["n"] == 1


def test_data_dir_missing_field_names_field_and_line(tmp_path):
    _write_split(tmp_path, "fitness", [{"question": "q1", "answer": "1"}, {"question": "q2"}])
    _write_split(tmp_path, "heldout", [{"question": "q3", "answer": "3"}])
    with pytest.raises(ConfigError, match=r"line 2: missing field 'answer'"):
        ToyArithTask(data_dir=str(tmp_path)).validate()


@pytest.mark.parametrize("bad, message", [
    ("{not json", "line 1: not valid JSON"),
    ('{"question": "q", "answer": "seven"}', "'answer' must be an integer"),
    ('["q", "1"]', "expected a JSON object"),
])
def test_data_dir_bad_records(tmp_path, bad, message):
    _write_split(tmp_path, "fitness", [bad])
    _write_split(tmp_path, "heldout", [{"question": "q3", "answer": "3"}])
    with pytest.raises(ConfigError, match=message):
        ToyArithTask(data_dir=str(tmp_path)).validate()


def test_data_dir_missing_file_and_overlap(tmp_path):
    _write_split(tmp_path, "fitness", [{"question": "q1", "answer": "1"}])
    with pytest.raises(ConfigError, match="heldout.jsonl"):
        ToyArithTask(data_dir=str(tmp_path)).validate()
    _write_split(tmp_path, "heldout", [{"question": "q1", "answer": "1"}])
    with pytest.raises(ConfigError, match="both the fitness and the held-out"):
        ToyArithTask(data_dir=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="not a folder"):
        ToyArithTask(data_dir=str(tmp_path / "nope")).validate()
