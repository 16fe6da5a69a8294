"""mgsm_ja: the task's scoring (paper and strict readers, the Japanese rule), data loading and
overlap, scoring a tiny model. The readers themselves are tested in test_metrics.py."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from evomm.adapters.base import LLMHandle
from evomm.errors import ConfigError
from evomm.toy.tokenizer import build_tokenizer
from evomm.metrics import mgsm_ja_correct
from evomm.tasks import build_task
from evomm.tasks.mgsm_ja import MGSMJaTask, truncate_at_stop

FITNESS = [
    {"question": "りんごが 3 こ あります。2 こ たべました。のこりは なんこ ですか?", "answer": "1"},
    {"question": "ねこが 4 ひき います。3 ひき きました。ぜんぶで なんびき ですか?", "answer": 7},
    {"question": "えんぴつ 12 ほんを 3 にんで わけます。ひとり なんぼん ですか?",
     "answer": "12 を 3 で わると 4 です。\n#### 4"},
    {"question": "1 こ 250 えんの ぱんを 4 こ かいました。なんえん ですか?", "answer_number": 1000},
]
HELDOUT = [
    {"question": "いぬが 5 ひき います。2 ひき かえりました。のこりは?", "answer_number": 3},
    {"question": "みかんが 6 こ あります。6 こ もらいました。ぜんぶで?", "answer_number": 12},
]


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                    encoding="utf-8")
    return str(path)


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "fitness.jsonl", FITNESS), write_jsonl(tmp_path / "heldout.jsonl", HELDOUT)


# ---- strings ---------------------------------------------------------------------------------


def test_truncate_at_stop():
    assert truncate_at_stop("答えは 4 です。\n### 問題:\n5 + 5", ["###"]) == "答えは 4 です。\n"
    assert truncate_at_stop("答えは 4 です。", ["###"]) == "答えは 4 です。"


def test_default_prompt_and_stops_are_the_papers(data):
    """The paper's code (evomerge.models.CausalLMWithvLLM) formats its "ja-alpaca-cot" template
    with the question and cuts generations at four English stop strings."""
    fitness, heldout = data
    task = MGSMJaTask(fitness_dataset=fitness, heldout_dataset=heldout)
    reference = ("以下に、あるタスクを説明する指示があります。リクエストを適切に完了するための回答を日本語で記述してください。"
                 "一歩一歩考えましょう。\n\n### 指示:\n{input}\n\n### 応答:")
    question = FITNESS[0]["question"]
    assert task.prompt(question) == reference.format(input=question)
    assert task.stop_strings == ["Instruction:", "Instruction", "Response:", "Response"]
    written = "3 - 2 = 1 なので、答えは 1 です。\n\n### Instruction:\n次の問題"
    assert truncate_at_stop(written, task.stop_strings) == "3 - 2 = 1 なので、答えは 1 です。\n\n### "
    from pathlib import Path

    import yaml

    conf = yaml.safe_load((Path(__file__).parents[1] / "conf" / "task" / "mgsm_ja.yaml").read_text())
    assert conf["stop_strings"] == task.stop_strings and conf["prompt_template"] is None  # the config says the same


RECORDS = [{"question": "q1", "answer": 1.0}, {"question": "q2", "answer": 7.0},
           {"question": "q3", "answer": 4.0}, {"question": "q4", "answer": 1000.0},
           {"question": "q5", "answer": -3.0}]
RESPONSES = ["のこりは 1 こ です", "The answer is 7", "ひとり 5 ほん です", "ぜんぶで 1,000 えん",
             "気温は -3 度です"]


def test_score_counts_accuracy_and_language():
    # paper reader: 1 right and Japanese; 7 right but English; 5 wrong; "1,000" reads 000 = 0;
    # "-3" reads 3 (no signs)
    metrics = MGSMJaTask().score(RESPONSES, RECORDS)
    assert metrics == {"fitness": 0.2, "accuracy": 0.2, "answer_accuracy": 0.4,
                       "japanese_rate": 0.8, "n": 5.0, "item_scores": [1.0, 0.0, 0.0, 0.0, 0.0]}
    # strict reader: "1,000" reads 1000 and "-3" reads -3; the Japanese rule is the same
    metrics = MGSMJaTask(reader="strict").score(RESPONSES, RECORDS)
    assert sum(metrics.pop("item_scores")) == 3.0  # one score per response: 3 of 5 right
    assert metrics == {"fitness": 0.6, "accuracy": 0.6, "answer_accuracy": 0.8,
                       "japanese_rate": 0.8, "n": 5.0}


@pytest.mark.parametrize("reader", ["paper", "strict"])
def test_task_items_are_the_public_metric(reader):
    task = MGSMJaTask(reader=reader)
    judged = [task.score_item(r, rec) for r, rec in zip(RESPONSES, RECORDS)]
    assert [j.correct for j in judged] == [mgsm_ja_correct(r, rec["answer"], reader=reader)
                                           for r, rec in zip(RESPONSES, RECORDS)]


def test_reader_option_is_checked():
    with pytest.raises(ConfigError, match="reader must be one of"):
        MGSMJaTask(reader="loose")


def test_dataset_answers_are_read_strictly(tmp_path):
    """The data's own answers keep signs and thousands commas, whatever reads the responses."""
    fitness = write_jsonl(tmp_path / "f.jsonl", [{"question": "a?", "answer": "... #### 1,234"},
                                                 {"question": "b?", "answer": "-3"}])
    heldout = write_jsonl(tmp_path / "h.jsonl", HELDOUT)
    task = MGSMJaTask(fitness_dataset=fitness, heldout_dataset=heldout)
    assert [r["answer"] for r in task.items("fitness")] == [1234.0, -3.0]


# ---- data ------------------------------------------------------------------------------------


def test_local_records_and_sampling(data):
    fitness, heldout = data
    task = build_task("mgsm_ja", fitness_dataset=fitness, heldout_dataset=heldout, fitness_samples=3)
    task.validate()
    items = task.items("fitness")
    assert len(items) == 3
    assert {r["answer"] for r in task._records("fitness")} == {1.0, 7.0, 4.0, 1000.0}
    assert task.items("test") == [{"question": r["question"], "answer": float(r["answer_number"])}
                                  for r in HELDOUT]
    again = build_task("mgsm_ja", fitness_dataset=fitness, heldout_dataset=heldout, fitness_samples=3)
    assert again.items("fitness") == items  # seeded
    with pytest.raises(ConfigError, match="not 'train'"):
        task.items("train")


def test_overlapping_splits_are_refused(tmp_path, data):
    fitness, _ = data
    # The same question with full-width digits and other spacing still counts as the same.
    overlap = [{"question": FITNESS[1]["question"].replace("4", "４").replace(" ", "  "),
                "answer_number": 7}]
    heldout = write_jsonl(tmp_path / "overlap.jsonl", HELDOUT + overlap)
    task = MGSMJaTask(fitness_dataset=fitness, heldout_dataset=heldout)
    with pytest.raises(ConfigError, match="1 question"):
        task.validate()
    with pytest.raises(ConfigError, match="disjoint"):
        task.items("fitness")


def test_bad_data_and_options_are_explained(tmp_path, data):
    fitness, heldout = data
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "なに?"}])
    with pytest.raises(ConfigError, match="line 1: missing field 'answer'"):
        MGSMJaTask(fitness_dataset=bad, heldout_dataset=heldout).validate()
    nonumber = write_jsonl(tmp_path / "nonumber.jsonl", [{"question": "なに?", "answer": "たくさん"}])
    with pytest.raises(ConfigError, match="holds no number"):
        MGSMJaTask(fitness_dataset=nonumber, heldout_dataset=heldout).validate()
    with pytest.raises(ConfigError, match="is not a file"):
        MGSMJaTask(fitness_dataset=str(tmp_path / "missing.jsonl"), heldout_dataset=heldout).validate()
    with pytest.raises(ConfigError, match="must contain '{question}'"):
        MGSMJaTask(prompt_template="答えなさい")
    with pytest.raises(ConfigError, match="max_new_tokens"):
        MGSMJaTask(max_new_tokens=0)


def test_hub_data_is_loaded_lazily_and_failures_are_explained(data):
    _, heldout = data
    task = MGSMJaTask(fitness_dataset="no-such-user/no-such-dataset", heldout_dataset=heldout)
    assert task._all == {}  # nothing loaded at construction
    with pytest.raises(ConfigError, match="could not load the fitness dataset"):
        task.validate()


# ---- a real (tiny) model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def handle(tmp_path_factory):
    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=0.5,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return LLMHandle(model=AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer=tokenizer)


def test_evaluate_a_tiny_model(handle, data):
    fitness, heldout = data
    task = build_task("mgsm_ja", fitness_dataset=fitness, heldout_dataset=heldout,
                      max_new_tokens=6, batch_size=3, prompt_template="問: {question} 答:")
    first = task.evaluate(handle, "fitness")
    assert set(first) == {"fitness", "accuracy", "answer_accuracy", "japanese_rate", "n", "item_scores"}
    assert 0.0 <= first["fitness"] <= 1.0 and first["n"] == 4.0
    assert len(task.last_responses) == 4
    # The metrics are those of the responses the model wrote, and scoring is reproducible.
    assert first == task.score(task.last_responses, task.items("fitness"))
    assert task.evaluate(handle, "fitness") == first
    held = task.evaluate(handle, task.heldout_split)
    assert held["n"] == 2.0


def bigram_model(tokenizer, chain: dict[str, str], path):
    """A real one-layer Llama whose weights make it a bigram machine: after token a it writes chain[a].

    The decoder layer's output projections are zero (the layer adds nothing to the residual
    stream), the embeddings are one-hot, and the head maps the one-hot of a to a large logit
    for chain[a]; every other token is followed by </s>.
    """
    vocab = len(tokenizer)
    hidden = -(-vocab // 8) * 8  # 4 heads of an even head_dim (RoPE)
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=8,
                         num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=512, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        head = torch.zeros(vocab, hidden)
        head[tokenizer.eos_token_id, :vocab] = 1.0
        for a, b in chain.items():
            ia, ib = tokenizer.convert_tokens_to_ids([a, b])
            head[:, ia] = 0.0
            head[ib, ia] = 1.0
        model.lm_head.weight.copy_(head)
    model.save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_evaluate_scores_what_the_model_writes(data, tmp_path):
    """End to end: a model that always answers "1です" after ':' and "7" after '='."""
    fitness, heldout = data
    tokenizer = build_tokenizer()
    model = bigram_model(tokenizer, {":": "1", "1": "で", "で": "す", "=": "7"}, tmp_path / "bigram")
    handle = LLMHandle(model=model, tokenizer=tokenizer)

    japanese = MGSMJaTask(fitness_dataset=fitness, heldout_dataset=heldout, max_new_tokens=8,
                          prompt_template="問: {question} 答:")
    metrics = japanese.evaluate(handle, "fitness")
    assert japanese.last_responses == ["1です"] * 4
    # Only the first fitness question's answer is 1; every response is Japanese.
    assert metrics == {"fitness": 0.25, "accuracy": 0.25, "answer_accuracy": 0.25,
                       "japanese_rate": 1.0, "n": 4.0, "item_scores": [1.0, 0.0, 0.0, 0.0]}
    assert japanese.evaluate(handle, "test")["accuracy"] == 0.0  # answers 3 and 12

    english = MGSMJaTask(fitness_dataset=fitness, heldout_dataset=heldout, max_new_tokens=8,
                         prompt_template="{question} =")
    metrics = english.evaluate(handle, "fitness")
    assert english.last_responses == ["7"] * 4
    # The second question's answer is 7, but a bare number is not Japanese: it does not count.
    assert metrics["answer_accuracy"] == 0.25 and metrics["accuracy"] == 0.0
    assert metrics["japanese_rate"] == 0.0
