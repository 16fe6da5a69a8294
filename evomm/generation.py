"""Batched, deterministic text generation for any Hugging Face causal LM and its tokenizer.

Tasks score a model by what it writes, so generation must be reproducible: greedy by default,
a fixed seed when sampling, and results that do not depend on the batch size. Prompts are
tokenized one by one and left-padded here (not by the tokenizer) so that a tokenizer without a
pad token (Mistral, Llama) works unchanged and is never mutated.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig

from evomm.errors import ConfigError


def _pad_id(model, tokenizer) -> int:
    for candidate in (tokenizer.pad_token_id, model.generation_config.pad_token_id,
                      tokenizer.eos_token_id):
        if isinstance(candidate, int):
            return candidate
    raise ConfigError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


def _eos_ids(model, tokenizer) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return []
    return [eos] if isinstance(eos, int) else list(eos)


def generate_texts(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    num_beams: int = 1,
    repetition_penalty: float = 1.0,
    do_sample: bool = False,
    seed: int = 0,
) -> list[str]:
    """Continue each prompt and return only the new text (special tokens stripped), in order.

    Greedy unless ``do_sample``; sampling draws from a private RNG seeded with ``seed`` so the
    global torch RNG is left alone. Prompts are grouped by length before batching, which keeps
    padding (and so float noise between batch sizes) small.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if not prompts:
        return []

    device = next(model.parameters()).device
    pad_id = _pad_id(model, tokenizer)
    eos_ids = _eos_ids(model, tokenizer)
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=num_beams,
        repetition_penalty=repetition_penalty,
        pad_token_id=pad_id,
        eos_token_id=eos_ids or None,
    )

    encoded = [tokenizer(p)["input_ids"] for p in prompts]  # list of [len_i] id lists
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))  # stable
    outputs: list[str] = [""] * len(prompts)

    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                width = max(len(encoded[i]) for i in idx)
                # Left padding: [batch, width], real tokens flush right so generation appends.
                input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
                attention_mask = torch.zeros((len(idx), width), dtype=torch.long)
                for row, i in enumerate(idx):
                    ids = encoded[i]
                    input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
                    attention_mask[row, width - len(ids) :] = 1
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    generation_config=config,
                )
                new_tokens = out[:, width:]  # [batch, <= max_new_tokens]
                texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
                for i, text in zip(idx, texts):
                    outputs[i] = text
    finally:
        model.train(was_training)
    return outputs
