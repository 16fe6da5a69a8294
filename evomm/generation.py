"""Batched, deterministic text generation for any Hugging Face causal LM and its tokenizer.

Tasks score a model by what it writes, so generation must be reproducible: greedy by default,
a fixed seed when sampling, and results that do not depend on the batch size. Prompts are
tokenized one by one and left-padded here (not by the tokenizer) so that a tokenizer without a
pad token (Mistral, Llama) works unchanged and is never mutated.

Two paths give the same text. Plain greedy decoding takes the fast path (``evomm.greedy``: a
lean KV-cache loop that ends each row at its EOS or stop string); everything else, and any call
with ``fast=False``, goes through ``model.generate``, which is also the reference the fast path
is tested against.
"""

from __future__ import annotations

import inspect
import logging
from typing import Sequence

import torch
from transformers import GenerationConfig

from evomm.errors import ConfigError
from evomm.greedy import greedy_generate, left_pad
from evomm.stops import StopStrings, cut_at_stop, encode_prompts

_log = logging.getLogger(__name__)


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


def generation_config(model, tokenizer, *, max_new_tokens: int, num_beams: int = 1,
                      repetition_penalty: float = 1.0, do_sample: bool = False) -> GenerationConfig:
    eos_ids = _eos_ids(model, tokenizer)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=num_beams,
        repetition_penalty=repetition_penalty,
        pad_token_id=_pad_id(model, tokenizer),
        eos_token_id=eos_ids or None,
    )


def fast_path_reason(model, config: GenerationConfig, tokenizer=None) -> str | None:
    """Why ``config`` on ``model`` must take ``model.generate`` (None: the fast path gives the same).

    The fast loop does plain greedy decoding only. ``generate`` merges the model's own
    generation_config into ``config`` and may add logits processors (min length, bad words,
    repetition penalty ...); we ask it what it would build and refuse anything but none.
    """
    if getattr(model.config, "is_encoder_decoder", False):
        return "an encoder-decoder model"
    forward = inspect.signature(getattr(model, "lm", model).forward).parameters
    if "cache" not in forward:  # remote code or an older model class: generate knows its inputs
        return "the model's forward takes no 'cache' argument"
    try:
        merged, _ = model._prepare_generation_config(config)
        if merged.do_sample or merged.num_beams != 1:
            return "sampling or beam search"
        processors = model._get_logits_processor(generation_config=merged, input_ids_seq_length=1,
                                                  device="cpu")
    except Exception as err:  # a model whose generate we cannot read: take the safe path
        return f"generation config not readable ({type(err).__name__})"
    if len(processors):
        return "logits processors: " + ", ".join(type(p).__name__ for p in processors)
    if tokenizer is not None:
        # Plain generate decodes the pad ids after a row's EOS; skipped only when special.
        special = set(tokenizer.all_special_ids)
        if config.pad_token_id not in special:
            return "the pad id is not a special token of the tokenizer"
    return None


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
    stop_strings: Sequence[str] | None = None,
    fast: bool = True,
) -> list[str]:
    """Continue each prompt and return only the new text (special tokens stripped), in order.

    Greedy unless ``do_sample``; sampling draws from a private RNG seeded with ``seed`` so the
    global torch RNG is left alone. Prompts are grouped by length before batching, which keeps
    padding (and so float noise between batch sizes) small. Each text is cut before the first of
    ``stop_strings``; the fast path (``fast``, greedy only) also stops generating there.
    """
    if max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    stops = [s for s in (stop_strings or []) if s]
    if not prompts:
        return []

    config = generation_config(model, tokenizer, max_new_tokens=max_new_tokens, num_beams=num_beams,
                               repetition_penalty=repetition_penalty, do_sample=do_sample)
    encoded = encode_prompts(tokenizer, prompts)  # list of [len_i] id lists, cached per tokenizer
    use_fast = fast and fast_path_reason(model, config, tokenizer) is None
    stop = StopStrings(tokenizer, stops) if (use_fast and stops) else None
    try:
        new_ids = generate_ids(model, encoded, config, batch_size=batch_size, seed=seed, fast=use_fast,
                               stop=stop)
    except (TypeError, ValueError, NotImplementedError) as err:
        if not use_fast:
            raise
        # A model the fast loop does not know how to drive: plain generate gives the same text.
        _log.warning("fast generation failed (%s: %s); using model.generate", type(err).__name__, err)
        new_ids = generate_ids(model, encoded, config, batch_size=batch_size, seed=seed, fast=False)
    texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
    return [cut_at_stop(t, stops) for t in texts]


def generate_ids(model, encoded: list[list[int]], config: GenerationConfig, *, batch_size: int,
                 seed: int = 0, fast: bool, stop=None, refill: bool = True,
                 stats: dict | None = None) -> list[list[int]]:
    """New token ids per prompt (prompt order), by the fast loop or by ``model.generate``.

    ``fast`` must only be set when ``fast_path_reason`` allowed it; it decodes ``batch_size``
    rows at a time, refilling freed rows from the queue (``refill``). Plain rows keep the padding
    ``generate`` appends after their EOS; fast rows end at their EOS (or ``stop``).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # stable
    eos_ids = config.eos_token_id
    eos_ids = [] if eos_ids is None else [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.random.fork_rng(devices=[] if device.type == "cpu" else [device]):
            torch.manual_seed(seed)
            if fast:
                return greedy_generate(model, encoded, order, slots=batch_size,
                                       max_new_tokens=config.max_new_tokens, eos_ids=eos_ids,
                                       pad_id=config.pad_token_id, stop=stop, refill=refill, stats=stats)
            out: list[list[int]] = [[] for _ in encoded]
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                input_ids, mask = left_pad([encoded[i] for i in idx], config.pad_token_id)
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                           generation_config=config)
                for i, row in zip(idx, generated[:, input_ids.shape[1]:].tolist()):
                    out[i] = row  # [<= max_new_tokens]
            return out
    finally:
        model.train(was_training)
