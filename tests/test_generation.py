"""generate_texts: batched greedy generation equals one-by-one and manual greedy decoding."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from evomm.errors import ConfigError
from evomm.generation import generate_texts
from evomm.toy.tokenizer import build_tokenizer

PROMPTS = [
    "問: 3 たす 4 は いくつ ですか? 答:",
    "q: hi",
    "q: what is 3 plus 4? a:",
    "ねこ",
    "わたし は ぱん を たべます。",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer, tmp_path_factory):
    """A tiny random Llama, saved and loaded back like a user model.

    A large init range makes the logits far from uniform, so greedy choices are not decided by
    float noise between padded and unpadded computations.
    """
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return AutoModelForCausalLM.from_pretrained(path)


def _manual_greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy decoding by repeated full forward passes on the unpadded prompt."""
    ids = tokenizer(prompt, return_tensors="pt")["input_ids"]  # [1, len]
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_id = int(model(input_ids=ids).logits[0, -1].argmax())
            if next_id == tokenizer.eos_token_id:
                break
            new.append(next_id)
            ids = torch.cat([ids, torch.tensor([[next_id]])], dim=1)
    return tokenizer.decode(new, skip_special_tokens=True)


def test_batched_equals_one_by_one_and_manual_greedy(model, tokenizer):
    expected = [_manual_greedy(model, tokenizer, p, 6) for p in PROMPTS]
    assert any(expected)  # the check is not vacuous
    for batch_size in (1, 2, 32):
        got = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6, batch_size=batch_size)
        assert got == expected


def test_returns_only_new_text_within_budget(model, tokenizer):
    out = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=3)
    for text in out:
        assert len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= 3
        assert "<s>" not in text and "<pad>" not in text


def test_sampling_is_seeded_and_leaves_global_rng(model, tokenizer):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6, do_sample=True, seed=1)
    assert torch.equal(torch.get_rng_state(), before)
    b = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=6, do_sample=True, seed=1)
    assert a == b


def test_beam_search_and_repetition_penalty_run(model, tokenizer):
    out = generate_texts(model, tokenizer, PROMPTS, max_new_tokens=5, num_beams=3,
                         repetition_penalty=1.5)
    assert len(out) == len(PROMPTS) and all(isinstance(t, str) for t in out)


def test_tokenizer_without_pad_token_is_not_mutated(model):
    tok = build_tokenizer()
    tok.pad_token = None
    expected = generate_texts(model, build_tokenizer(), PROMPTS, max_new_tokens=4)
    assert generate_texts(model, tok, PROMPTS, max_new_tokens=4) == expected
    assert tok.pad_token is None


def test_restores_training_mode_and_handles_empty(model, tokenizer):
    model.train()
    generate_texts(model, tokenizer, ["ねこ"], max_new_tokens=2)
    assert model.training
    model.eval()
    assert generate_texts(model, tokenizer, [], max_new_tokens=2) == []
    with pytest.raises(ConfigError, match="max_new_tokens"):
        generate_texts(model, tokenizer, ["ねこ"], max_new_tokens=0)
