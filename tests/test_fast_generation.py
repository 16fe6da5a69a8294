"""The fast greedy path gives the token ids of plain ``model.generate``: toy LLM, a 32-layer
Mistral-7B-shaped model, a routed (DFS) model; stop strings; fallbacks."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

from evomm.generation import fast_path_reason, generate_ids, generate_texts, generation_config
from evomm.merging.dfs import Route, RoutedCausalLM
from evomm.stops import StopStrings, cut_at_stop, encode_prompts
from evomm.toy.mistral_shape import random_mistral
from evomm.toy.tokenizer import build_tokenizer

PROMPTS = [
    "問: 3 たす 4 は いくつ ですか? 答:",
    "q: hi",
    "q: what is 3 plus 4? a:",
    "ねこ",
    "わたし は ぱん を たべます。",
    "q: what is 12 plus 30? a:",
    "問: いぬ の あし は いくつ ですか? 答:",
]


def ended(row: list[int], eos: set[int]) -> list[int]:
    """A row up to and including its first EOS id (plain rows carry padding after it)."""
    for k, token in enumerate(row):
        if token in eos:
            return row[: k + 1]
    return row


def both_paths(model, prompts, config, batch_size, **fast_options):
    plain = generate_ids(model, prompts, config, batch_size=batch_size, fast=False)
    fast = generate_ids(model, prompts, config, batch_size=batch_size, fast=True, **fast_options)
    eos = config.eos_token_id
    eos = set([eos] if isinstance(eos, int) else eos or [])
    return [ended(r, eos) for r in plain], [ended(r, eos) for r in fast]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def llama(tokenizer):
    """A tiny random Llama over the toy tokenizer (wide init: logits far apart)."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def toy_llm():
    """The shipped toy-world math expert: answers end at their own lengths (EOS)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import evomm.toy.builtins  # noqa: F401 - registers builtin:toy-llm-*
    from evomm.builtin import resolve

    path = resolve("builtin:toy-llm-math")
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_toy_llm_fast_equals_plain_for_every_batch_size_and_refill(toy_llm):
    model, tok = toy_llm
    from evomm.tasks.toy_skills import SKILLS, skill_split

    prompts = [p for skill in SKILLS for p, _ in skill_split(skill, "fitness")[:12]]
    encoded = encode_prompts(tok, prompts)
    config = generation_config(model, tok, max_new_tokens=10)
    for batch_size in (1, 6, 64):
        for refill in (True, False):
            plain, fast = both_paths(model, encoded, config, batch_size, refill=refill)
            assert fast == plain, (batch_size, refill)
    lengths = {len(r) for r in plain}
    assert len(lengths) > 2 and min(lengths) < 10  # answers really end at different lengths
    texts = generate_texts(model, tok, prompts, max_new_tokens=10, batch_size=6)
    assert texts == generate_texts(model, tok, prompts, max_new_tokens=10, batch_size=6, fast=False)


def test_refill_makes_fewer_model_calls(toy_llm):
    model, tok = toy_llm
    from evomm.tasks.toy_skills import SKILLS, skill_split

    prompts = encode_prompts(tok, [p for skill in SKILLS for p, _ in skill_split(skill, "fitness")[:12]])
    config = generation_config(model, tok, max_new_tokens=10)
    calls = {}
    for refill in (True, False):
        calls[refill] = {}
        generate_ids(model, prompts, config, batch_size=6, fast=True, refill=refill, stats=calls[refill])
    assert calls[True]["forwards"] < calls[False]["forwards"]


def test_mistral_7b_shape_32_layers_fast_equals_plain():
    model = random_mistral(hidden_size=32, layers=32, seed=0)
    assert model.config.num_hidden_layers == 32 and model.config.vocab_size == 32000
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 32000, (int(n),), generator=gen).tolist()
               for n in torch.randint(5, 20, (8,), generator=gen)]
    no_eos = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=None)
    free = generate_ids(model, prompts, no_eos, batch_size=3, fast=True)
    # EOS ids taken from the free-running answers, so rows end at different lengths.
    eos = [free[0][2], free[1][6], free[2][9]]
    config = GenerationConfig(max_new_tokens=12, do_sample=False, pad_token_id=0, eos_token_id=eos)
    plain = [ended(r, set(eos)) for r in generate_ids(model, prompts, config, batch_size=3, fast=False)]
    assert len({len(r) for r in plain}) >= 3
    for refill in (True, False):
        fast = generate_ids(model, prompts, config, batch_size=3, fast=True, refill=refill)
        assert [ended(r, set(eos)) for r in fast] == plain, refill


def test_routed_dfs_model_fast_equals_plain(tokenizer, llama):
    torch.manual_seed(1)
    other = LlamaForCausalLM(llama.config).eval()
    route = Route(steps=[(0, 0), (1, 1), (0, 1), (0, 1), (1, 0)], scales=[1.0, 0.6, 1.4, 1.0, 0.8])
    routed = RoutedCausalLM([llama, other], route)
    config = generation_config(routed.lm, tokenizer, max_new_tokens=12)
    encoded = encode_prompts(tokenizer, PROMPTS)
    for model in (routed.lm, routed):
        plain, fast = both_paths(model, encoded, config, 3)
        assert fast == plain
    assert generate_texts(routed.lm, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3) == \
        generate_texts(routed.lm, tokenizer, PROMPTS, max_new_tokens=12, batch_size=3, fast=False)


def test_stop_strings_end_rows_early_and_cut_the_same_text(llama, tokenizer):
    full = generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=20, fast=False)
    # A stop string each answer reaches: a piece from the middle of the first long answer.
    sample = next(t for t in full if len(t) >= 12)
    stop = sample[5:8]
    assert any(stop in t for t in full)
    want = [cut_at_stop(t, [stop]) for t in full]
    plain = generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=20, stop_strings=[stop], fast=False)
    fast = generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=20, stop_strings=[stop])
    assert plain == fast == want

    # The fast path stopped generating where the stop string appeared, not at max_new_tokens.
    config = generation_config(llama, tokenizer, max_new_tokens=20)
    rows = generate_ids(llama, encode_prompts(tokenizer, PROMPTS), config, batch_size=32, fast=True,
                        stop=StopStrings(tokenizer, [stop]))
    for row, text in zip(rows, full):
        decoded = tokenizer.decode(row, skip_special_tokens=True)
        if stop in text:
            assert decoded.endswith(stop) and len(decoded) < len(text)


def test_stop_check_confirms_on_the_full_text(tokenizer):
    check = StopStrings(tokenizer, ["=="])  # the toy alphabet has no '#'
    ids = tokenizer("答えは 4 です。==", add_special_tokens=False)["input_ids"]
    assert check(ids)
    assert not check(ids[:-1])  # "=" alone is not the stop string
    assert not check(tokenizer("答えは 4", add_special_tokens=False)["input_ids"])
    assert cut_at_stop("a ### b ## c", ["##", "###"]) == "a "


def test_prompts_are_tokenised_once_per_tokenizer(tokenizer):
    calls = []
    original = type(tokenizer).__call__

    class Counting(type(tokenizer)):
        def __call__(self, *args, **kwargs):
            calls.append(args[0])
            return original(self, *args, **kwargs)

    tok = build_tokenizer()
    tok.__class__ = Counting
    first = encode_prompts(tok, PROMPTS)
    assert encode_prompts(tok, PROMPTS + PROMPTS[:2]) == first + first[:2]
    assert sorted(calls) == sorted(PROMPTS)
    assert first == [tokenizer(p)["input_ids"] for p in PROMPTS]


def test_fast_path_falls_back_for_what_it_does_not_do(llama, tokenizer):
    greedy = generation_config(llama, tokenizer, max_new_tokens=4)
    assert fast_path_reason(llama, greedy, tokenizer) is None
    for options in ({"num_beams": 2}, {"repetition_penalty": 1.3}, {"do_sample": True}):
        config = generation_config(llama, tokenizer, max_new_tokens=4, **options)
        assert fast_path_reason(llama, config, tokenizer) is not None, options
    llama.generation_config.no_repeat_ngram_size = 2  # the model's own setting adds a processor
    try:
        assert "NoRepeatNGram" in fast_path_reason(llama, greedy, tokenizer)
        assert generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=6) == \
            generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=6, fast=False)
    finally:
        llama.generation_config.no_repeat_ngram_size = None


def test_a_model_the_fast_loop_cannot_drive_falls_back_to_generate(llama, tokenizer, monkeypatch, caplog):
    import evomm.generation as generation

    expected = generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=5, fast=False)

    def refuse(*args, **kwargs):
        raise TypeError("forward() got an unexpected keyword argument 'cache'")

    monkeypatch.setattr(generation, "greedy_generate", refuse)
    with caplog.at_level("WARNING", logger="evomm.generation"):
        assert generate_texts(llama, tokenizer, PROMPTS, max_new_tokens=5) == expected
    assert "using model.generate" in caplog.text

    class OldStyle(LlamaForCausalLM):  # a forward without the 'cache' argument
        def forward(self, input_ids=None, attention_mask=None, past_key_values=None, **kwargs):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    old = OldStyle(llama.config)
    assert "cache" in fast_path_reason(old, generation_config(old, tokenizer, max_new_tokens=2))
